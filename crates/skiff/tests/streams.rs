//! `put --streams N`: one file over several authenticated connections,
//! end to end with the real binary, and the server's side of it attacked
//! by hand (frames written by the test): foreign and unknown ids,
//! overlapping and out-of-bounds ranges, a stream cut in the middle, a
//! wrong byte, two uploads of one path at once.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::probe::RawConn;
use common::{
    hash, make_file, ok, p, random_bytes, run_bounded, stderr, write_private, TestServer,
};
use serde_json::{json, Value};

const MIB: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(60);

/// A key line `NAME BASE64KEY` made by `skiff keygen`.
fn keygen(user: &str) -> String {
    let out = Command::new(common::skiff_bin())
        .args(["keygen", "--user", user])
        .output()
        .expect("keygen");
    assert!(out.status.success());
    common::text(&out.stdout).trim().to_string()
}

/// A server with two users, alice and bob, on a plain TCP listener (for
/// the hand-made frames) and a TLS one; their key files.
struct Two {
    server: TestServer,
    _keys: tempfile::TempDir,
    alice: PathBuf,
    bob: PathBuf,
}

impl Two {
    fn start(extra: &[&str]) -> Two {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().to_path_buf();
        let (a, b) = (keygen("alice"), keygen("bob"));
        let users = keys.join("users");
        write_private(&users, &format!("{a}\n{b}\n"));
        let alice = keys.join("alice");
        write_private(&alice, &format!("{a}\n"));
        let bob = keys.join("bob");
        write_private(&bob, &format!("{b}\n"));
        let mut args = vec!["--users", p(&users)];
        args.extend_from_slice(extra);
        let server =
            TestServer::start_listening(&["tcp+plain://127.0.0.1:0", "tcp://127.0.0.1:0"], &args);
        Two {
            server,
            _keys: dir,
            alice,
            bob,
        }
    }

    fn plain(&self) -> &str {
        &self.server.urls[0]
    }

    fn tls(&self) -> &str {
        &self.server.urls[1]
    }

    fn login(&self, key: &Path) -> RawConn {
        RawConn::login(self.plain(), key)
    }

    /// `skiff put --key alice ARGS...` against `url`.
    fn put(&self, url: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = self.server.client();
        cmd.args(["put", "--key", p(&self.alice), url]).args(args);
        run_bounded(cmd, LIMIT)
    }

    /// Waits (10 s at most) until no staged upload file is left.
    fn assert_nothing_staged(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        while !self.server.staged_files().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(self.server.staged_files(), vec![], "staged files left");
    }
}

fn digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Sends `bytes` as `data` frames of at most 1 MiB; `false` once the
/// server closed.
fn send_data(conn: &mut RawConn, bytes: &[u8]) -> bool {
    bytes.chunks(MIB).all(|c| {
        let h = format!(r#"{{"op":"data","len":{}}}"#, c.len());
        conn.send_raw(h.as_bytes(), c).is_ok()
    })
}

fn put_open(conn: &mut RawConn, path: &str, size: usize, length: usize, streams: u32) -> Value {
    conn.send(&json!({"op":"put_open","path":path,"size":size,"length":length,"streams":streams}))
        .expect("send put_open");
    conn.recv().expect("an answer to put_open")
}

fn opened_id(v: &Value) -> String {
    assert_eq!(v["op"], "opened", "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 32, "128 bits in hex: {id}");
    id
}

fn put_join(conn: &mut RawConn, id: &str, offset: u64, length: u64) -> Value {
    conn.send(&json!({"op":"put_join","id":id,"offset":offset,"length":length}))
        .expect("send put_join");
    conn.recv().expect("an answer to put_join")
}

fn end(conn: &mut RawConn, size: usize, digest: &str) -> Value {
    conn.send(&json!({"op":"end","size":size,"digest":digest}))
        .expect("send end");
    conn.recv().expect("an answer to end")
}

fn error_code(v: &Value) -> &str {
    assert_eq!(v["op"], "error", "{v}");
    v["code"].as_str().unwrap_or("")
}

#[test]
fn a_large_file_goes_over_several_streams_and_arrives_whole() {
    let two = Two::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("big");
    // Uneven: the last range is shorter than the others.
    make_file(&src, 40 * MIB as u64 + 12345, 7);
    for (url, n) in [(two.tls(), "4"), (two.plain(), "3")] {
        let out = two.put(url, &["--streams", n, "-v", p(&src), "big"]);
        ok(&out);
        assert_eq!(hash(&two.server.root.join("big")), hash(&src), "{url}");
        std::fs::remove_file(two.server.root.join("big")).expect("rm");
    }
    // A refused upload (the path exists, no --force) is reported, and
    // nothing is left behind.
    ok(&two.put(two.tls(), &["--streams", "4", p(&src), "big"]));
    let out = two.put(two.tls(), &["--streams", "4", p(&src), "big"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    two.assert_nothing_staged();
    std::fs::remove_file(two.server.root.join("big")).expect("rm");
    // A file too small to split goes the ordinary way.
    let small = dir.path().join("small");
    make_file(&small, 100_000, 3);
    ok(&two.put(two.tls(), &["--streams", "8", p(&small), "small"]));
    assert_eq!(hash(&two.server.root.join("small")), hash(&small));
    two.assert_nothing_staged();
    let out = two.put(two.tls(), &["--streams", "17", p(&small), "x"]);
    assert!(!out.status.success(), "17 streams are refused by the CLI");
}

#[test]
fn a_join_with_an_unknown_or_another_users_id_is_refused_alike() {
    let two = Two::start(&[]);
    let data = random_bytes(4 * MIB, 11);
    let half = data.len() / 2;
    let mut a = two.login(&two.alice);
    let id = opened_id(&put_open(&mut a, "f", data.len(), half, 2));
    assert!(send_data(&mut a, &data[..half]));

    let mut bob = two.login(&two.bob);
    let foreign = put_join(&mut bob, &id, half as u64, half as u64);
    let mut other = two.login(&two.alice);
    let unknown = put_join(&mut other, &"0".repeat(32), half as u64, half as u64);
    assert_eq!(error_code(&foreign), "not_found");
    assert_eq!(
        foreign, unknown,
        "another user's id reads as an unknown one"
    );
    assert!(!foreign.to_string().contains("alice"), "{foreign}");

    // Bob's attempt did not take the range: alice's own join does.
    let mut b = two.login(&two.alice);
    assert_eq!(
        put_join(&mut b, &id, half as u64, half as u64)["op"],
        "ready"
    );
    assert!(send_data(&mut b, &data[half..]));
    assert_eq!(end(&mut b, half, "")["op"], "ok");
    let done = end(&mut a, data.len(), &digest(&data));
    assert_eq!(done["op"], "done", "{done}");
    assert_eq!(
        std::fs::read(two.server.root.join("f")).expect("read"),
        data
    );
    two.assert_nothing_staged();
}

#[test]
fn overlapping_and_out_of_bounds_ranges_are_refused() {
    let two = Two::start(&[]);
    let data = random_bytes(3 * MIB, 12);
    let (size, third) = (data.len() as u64, (data.len() / 3) as u64);
    let mut a = two.login(&two.alice);
    let id = opened_id(&put_open(&mut a, "f", data.len(), third as usize, 3));
    assert!(send_data(&mut a, &data[..third as usize]));
    for (offset, length) in [
        (third - 1, 2),    // overlaps the opener's range
        (size - 1, 2),     // past the end
        (size, 0),         // empty
        (u64::MAX - 1, 4), // wraps around
        (0, size),         // everything
    ] {
        let mut j = two.login(&two.alice);
        let v = put_join(&mut j, &id, offset, length);
        assert_eq!(error_code(&v), "invalid", "{offset}+{length}: {v}");
    }
    // Two legitimate joins; a third overlapping one while they run.
    let mut b = two.login(&two.alice);
    assert_eq!(put_join(&mut b, &id, third, third)["op"], "ready");
    let mut x = two.login(&two.alice);
    assert_eq!(error_code(&put_join(&mut x, &id, third + 5, 10)), "invalid");
    let mut c = two.login(&two.alice);
    assert_eq!(
        put_join(&mut c, &id, 2 * third, size - 2 * third)["op"],
        "ready"
    );
    assert!(send_data(&mut c, &data[2 * third as usize..]));
    assert!(send_data(&mut b, &data[third as usize..2 * third as usize]));
    assert_eq!(end(&mut b, third as usize, "")["op"], "ok");
    assert_eq!(end(&mut c, (size - 2 * third) as usize, "")["op"], "ok");
    assert_eq!(end(&mut a, data.len(), &digest(&data))["op"], "done");
    assert_eq!(
        std::fs::read(two.server.root.join("f")).expect("read"),
        data
    );
    two.assert_nothing_staged();
}

#[test]
fn a_stream_cut_mid_range_commits_nothing_and_the_server_goes_on() {
    let two = Two::start(&[]);
    let data = random_bytes(4 * MIB, 13);
    let half = data.len() / 2;
    let mut a = two.login(&two.alice);
    let id = opened_id(&put_open(&mut a, "f", data.len(), half, 2));
    assert!(send_data(&mut a, &data[..half]));
    let mut b = two.login(&two.alice);
    assert_eq!(
        put_join(&mut b, &id, half as u64, half as u64)["op"],
        "ready"
    );
    assert!(send_data(&mut b, &data[half..half + MIB]));
    drop(b);
    // The opener closes properly, but a range is missing.
    std::thread::sleep(Duration::from_millis(200));
    let v = end(&mut a, data.len(), &digest(&data));
    assert_eq!(error_code(&v), "checksum_mismatch", "{v}");
    assert!(!two.server.root.join("f").exists());
    two.assert_nothing_staged();

    // The opener itself dies: the joined stream is told, nothing stays.
    let mut a = two.login(&two.alice);
    let id = opened_id(&put_open(&mut a, "g", data.len(), half, 2));
    let mut b = two.login(&two.alice);
    assert_eq!(
        put_join(&mut b, &id, half as u64, half as u64)["op"],
        "ready"
    );
    assert!(send_data(&mut a, &data[..MIB]));
    if let common::probe::RawSock::Tcp(s) = &a.sock {
        let _ = s.shutdown(Shutdown::Both);
    }
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    assert!(send_data(&mut b, &data[half..]));
    let v = end(&mut b, half, "");
    assert_eq!(v["op"], "error", "{v}");
    assert!(!two.server.root.join("g").exists());
    two.assert_nothing_staged();

    // Everybody else is still served.
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("after");
    make_file(&src, 20 * MIB as u64, 5);
    ok(&two.put(two.tls(), &["--streams", "2", p(&src), "after"]));
    assert_eq!(hash(&two.server.root.join("after")), hash(&src));
}

#[test]
fn an_opener_that_goes_quiet_is_timed_out_and_its_file_removed() {
    let two = Two::start(&["--idle-timeout", "1"]);
    let data = random_bytes(2 * MIB, 14);
    let mut a = two.login(&two.alice);
    opened_id(&put_open(&mut a, "f", data.len(), MIB, 2));
    assert!(send_data(&mut a, &data[..MIB / 2]));
    assert!(!two.server.staged_files().is_empty(), "staged while open");
    // Nothing more: the server's idle timeout ends the upload.
    two.assert_nothing_staged();
    assert!(!two.server.root.join("f").exists());
}

#[test]
fn a_wrong_byte_in_one_range_fails_the_whole_file() {
    let two = Two::start(&[]);
    let data = random_bytes(4 * MIB, 15);
    let half = data.len() / 2;
    let mut bad = data[half..].to_vec();
    bad[12345] ^= 1;
    let mut a = two.login(&two.alice);
    let id = opened_id(&put_open(&mut a, "f", data.len(), half, 2));
    assert!(send_data(&mut a, &data[..half]));
    let mut b = two.login(&two.alice);
    assert_eq!(
        put_join(&mut b, &id, half as u64, half as u64)["op"],
        "ready"
    );
    assert!(send_data(&mut b, &bad));
    assert_eq!(
        end(&mut b, half, "")["op"],
        "ok",
        "a range alone is not verified"
    );
    let v = end(&mut a, data.len(), &digest(&data));
    assert_eq!(error_code(&v), "checksum_mismatch", "{v}");
    assert!(!two.server.root.join("f").exists());
    two.assert_nothing_staged();
}

/// Forwards connections to `to`; the `cut`-th (from 0) is cut after
/// `after` bytes from the client. Runs until the test ends.
fn cutting_relay(to: String, cut: usize, after: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for (i, c) in l.incoming().enumerate() {
            let Ok(client) = c else { return };
            let Ok(server) = TcpStream::connect(&to) else {
                return;
            };
            let limit = if i == cut { after } else { usize::MAX };
            let (c2, s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            std::thread::spawn(move || pump(c2, s2, limit));
            std::thread::spawn(move || pump(server, client, usize::MAX));
        }
    });
    format!("tcp+plain://{addr}")
}

fn pump(mut from: TcpStream, mut to: TcpStream, limit: usize) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || total + n > limit || to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn the_client_reports_a_stream_cut_on_the_way() {
    let two = Two::start(&[]);
    let relay = cutting_relay(common::probe::host_port(two.plain()), 1, 3 * MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("big");
    make_file(&src, 32 * MIB as u64, 9);
    let out = two.put(&relay, &["--streams", "2", p(&src), "big"]);
    assert!(!out.status.success(), "a cut stream fails the upload");
    let err = stderr(&out);
    assert!(err.contains("big"), "{err}");
    assert!(!two.server.root.join("big").exists());
    two.assert_nothing_staged();
}

#[test]
fn two_streamed_uploads_of_one_path_never_mix() {
    let two = Two::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (x, y) = (dir.path().join("x"), dir.path().join("y"));
    make_file(&x, 24 * MIB as u64, 21);
    make_file(&y, 24 * MIB as u64, 22);
    let spawn = |src: &Path| {
        let mut cmd = two.server.client();
        cmd.args([
            "put",
            "--key",
            p(&two.alice),
            two.tls(),
            "--streams",
            "3",
            "--force",
        ])
        .arg(src)
        .arg("same");
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn put")
    };
    let (cx, cy) = (spawn(&x), spawn(&y));
    let (ox, oy) = (
        cx.wait_with_output().expect("wait"),
        cy.wait_with_output().expect("wait"),
    );
    assert!(
        ox.status.success() || oy.status.success(),
        "{} / {}",
        stderr(&ox),
        stderr(&oy)
    );
    let got = hash(&two.server.root.join("same"));
    assert!(got == hash(&x) || got == hash(&y), "a mix of both uploads");
    // A loser is told why (a conflict), never silently overwritten.
    for o in [&ox, &oy] {
        if !o.status.success() {
            assert!(
                stderr(o).contains("conflict") || stderr(o).contains("changed"),
                "{}",
                stderr(o)
            );
        }
    }
    two.assert_nothing_staged();
}
