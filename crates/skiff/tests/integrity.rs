//! End-to-end: what `done` promises. Concurrent uploads of one path never
//! mix and never report bytes that are not there; partial uploads live out
//! of the root and expire; links uploaded into the root never lead out of it.

mod common;

use std::fs;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::probe::RawConn;
use common::{fails_with, hash, leftovers, make_file, ok, p, run, stderr, TestServer};

/// A slowed-down client (`SKIFF_TEST_CHUNK_DELAY_MS`), output captured.
fn spawn_slow(server: &TestServer, args: &[&str], delay_ms: u32) -> Child {
    server
        .client()
        .args(args)
        .env("SKIFF_TEST_CHUNK_DELAY_MS", delay_ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the staging area holds `n` files with at least `min` bytes
/// each (so every upload has really started).
fn wait_staged(server: &TestServer, n: usize, min: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let staged = server.staged_files();
        if staged.iter().filter(|f| f.1 >= min).count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "uploads never started: {staged:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Exit code and stderr of a finished client.
fn finish(c: Child) -> (Option<i32>, String) {
    let out = c.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two uploads of one path at once, both complete: exactly one wins, its
/// bytes are the file, the other is told it lost (`exists` without
/// `--force`, `conflict` with it, whether or not the path existed before)
/// and nothing else is left behind.
#[test]
fn concurrent_uploads_of_one_path_one_wins_the_other_is_told() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    make_file(&a, 16 << 20, 1);
    make_file(&b, 16 << 20, 2);
    let url = server.url().to_string();
    for (force, existed) in [(false, false), (true, true), (true, false)] {
        let dest = server.root.join("f");
        if existed {
            fs::write(&dest, b"old").unwrap();
        }
        let mut args = vec!["put"];
        if force {
            args.push("--force");
        }
        let (pa, pb) = (p(&a), p(&b));
        let mut args_a = args.clone();
        args_a.extend([url.as_str(), pa, "f"]);
        let mut args_b = args.clone();
        args_b.extend([url.as_str(), pb, "f"]);
        let ca = spawn_slow(&server, &args_a, 50);
        let cb = spawn_slow(&server, &args_b, 50);
        wait_staged(&server, 2, 1 << 20);
        let (ra, ea) = finish(ca);
        let (rb, eb) = finish(cb);
        let lost_code = if force { "conflict" } else { "exists" };
        let (winner, loser_err) = match (ra, rb) {
            (Some(0), Some(1)) => (&a, eb),
            (Some(1), Some(0)) => (&b, ea),
            other => panic!("exactly one upload must win: {other:?}\n{ea}\n{eb}"),
        };
        assert!(
            loser_err.contains(lost_code),
            "force={force} existed={existed}: {loser_err}"
        );
        assert_eq!(hash(&dest), hash(winner), "force={force}");
        assert_eq!(fs::metadata(&dest).unwrap().len(), 16 << 20);
        assert!(
            server.staged_files().is_empty(),
            "{:?}",
            server.staged_files()
        );
        assert_eq!(fs::read_dir(&server.root).unwrap().count(), 1);
        fs::remove_file(&dest).unwrap();
    }
}

/// One upload killed halfway while another of the same path completes:
/// the path holds the complete one; the killed one's bytes are nowhere in
/// the root, only in the staging area, and a resume of it is refused.
#[test]
fn killed_upload_never_reaches_the_path() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    make_file(&a, 24 << 20, 3);
    make_file(&b, 8 << 20, 4);
    let url = server.url().to_string();
    let mut ca = spawn_slow(&server, &["put", "--force", &url, p(&a), "f"], 100);
    wait_staged(&server, 1, 4 << 20);
    ok(&run(&server, &["put", "--force", &url, p(&b), "f"]));
    ca.kill().unwrap();
    ca.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let dest = server.root.join("f");
    assert_eq!(hash(&dest), hash(&b));
    assert_eq!(fs::read_dir(&server.root).unwrap().count(), 1);
    assert!(leftovers(&server.root).is_empty());
    let staged = server.staged_files();
    assert_eq!(staged.len(), 1, "{staged:?}");
    // Listing the root shows only the file.
    let out = run(&server, &["ls", &url, "/"]);
    ok(&out);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("part"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Resuming the killed upload without --force: the path now holds
    // another file, so it is refused, and `f` is untouched.
    let out = run(&server, &["put", "--resume", &url, p(&a), "f"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    assert_eq!(hash(&dest), hash(&b));
}

/// A client uploading to the name the old code used for partial files
/// (`.NAME.skiff-part`) gets an ordinary file of that name and touches no
/// other upload.
#[test]
fn upload_to_the_old_partial_name_is_just_a_file() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    make_file(&a, 16 << 20, 5);
    make_file(&b, 2 << 20, 6);
    let url = server.url().to_string();
    let ca = spawn_slow(&server, &["put", &url, p(&a), "v2.bin"], 20);
    wait_staged(&server, 1, 2 << 20);
    ok(&run(&server, &["put", &url, p(&b), ".v2.bin.skiff-part"]));
    let (code, err) = finish(ca);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(hash(&server.root.join("v2.bin")), hash(&a));
    assert_eq!(hash(&server.root.join(".v2.bin.skiff-part")), hash(&b));
}

/// Interrupted uploads stay in the staging area (reported at start) until
/// they are older than the limit; with the clock moved eight days ahead the
/// next start removes them.
#[test]
fn stale_partial_uploads_are_reported_and_expire() {
    let mut server = TestServer::start(&[]);
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.starts_with("partial uploads in ") && l.contains("0 kept")),
        "{:?}",
        server.banner
    );
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_file(&src, 16 << 20, 7);
    let url = server.url().to_string();
    for name in ["x", "y"] {
        let mut c = spawn_slow(&server, &["put", &url, p(&src), name], 20);
        let before = server.staged_files().len();
        wait_staged(&server, before + 1, 1 << 20);
        c.kill().unwrap();
        c.wait().unwrap();
    }
    assert_eq!(server.staged_files().len(), 2);
    assert_eq!(fs::read_dir(&server.root).unwrap().count(), 0);
    server.restart();
    assert!(
        server.banner.iter().any(|l| l.contains("2 kept")),
        "{:?}",
        server.banner
    );
    // Six days later: still kept.
    server.restart_with_env(&[("SKIFF_TEST_CLOCK_OFFSET_SECS", "518400")]);
    assert!(
        server.banner.iter().any(|l| l.contains("2 kept")),
        "{:?}",
        server.banner
    );
    // Eight days later: gone.
    server.restart_with_env(&[("SKIFF_TEST_CLOCK_OFFSET_SECS", "691200")]);
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("0 kept") && l.contains("2 expired and removed")),
        "{:?}",
        server.banner
    );
    assert!(server.staged_files().is_empty());
    // A resume after expiry starts over and still ends complete.
    let url = server.url().to_string();
    ok(&run(&server, &["put", "--resume", &url, p(&src), "x"]));
    assert_eq!(hash(&server.root.join("x")), hash(&src));
}

/// `sub/up -> ..` then `esc -> sub/up/..` (or the other way round) looks
/// harmless to a count of `..`, yet `esc` would resolve to the root's
/// parent. Uploaded in either order, in one tree or in two, `esc` is
/// refused with `path_escape` and never created.
#[test]
fn symlink_chains_cannot_walk_out_of_the_root() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let both = work.path().join("both");
    fs::create_dir_all(both.join("sub")).unwrap();
    std::os::unix::fs::symlink("..", both.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("sub/up/..", both.join("esc")).unwrap();
    fails_with(
        &run(&server, &["put", "-r", server.url(), p(&both), "/"]),
        "path_escape",
    );
    assert!(fs::symlink_metadata(server.root.join("both/esc")).is_err());

    // The link that climbs first, the one that uses it in a later upload.
    let first = work.path().join("first");
    fs::create_dir_all(first.join("sub")).unwrap();
    std::os::unix::fs::symlink("..", first.join("sub/up")).unwrap();
    ok(&run(&server, &["put", "-r", server.url(), p(&first), "t"]));
    let second = work.path().join("second");
    fs::create_dir_all(&second).unwrap();
    std::os::unix::fs::symlink("sub/up/../..", second.join("esc")).unwrap();
    fails_with(
        &run(&server, &["put", "-r", server.url(), p(&second), "t/"]),
        "path_escape",
    );
    assert!(fs::symlink_metadata(server.root.join("t/second/esc")).is_err());
    assert!(fs::symlink_metadata(server.root.join("t/esc")).is_err());
}

/// A target that names no `..` at all can still lead out through a link
/// already in the root (put there by another program): the kernel's
/// resolution decides, so it is refused.
#[test]
fn symlink_through_an_existing_link_out_is_refused() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, server.root.join("out")).unwrap();
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    std::os::unix::fs::symlink("../out/secret", tree.join("peek")).unwrap();
    std::os::unix::fs::symlink("../inside", tree.join("fine")).unwrap();
    fails_with(
        &run(&server, &["put", "-r", server.url(), p(&tree), "/"]),
        "path_escape",
    );
    assert!(fs::symlink_metadata(server.root.join("tree/peek")).is_err());
    // A link that stays inside (dangling for now) is still created.
    assert_eq!(
        fs::read_link(server.root.join("tree/fine")).unwrap(),
        std::path::Path::new("../inside")
    );
}

/// A certificate with less than a year left is reported at start, with
/// what to do about it; the server still starts and serves.
#[test]
fn a_certificate_near_its_end_is_reported_at_start() {
    let mut server = TestServer::start(&[]);
    let state = server.home.path().join(".local/state/skiff");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(300);
    params.not_after = now + time::Duration::days(30);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    for (name, pem) in [("cert.pem", cert.pem()), ("key.pem", key.serialize_pem())] {
        std::fs::write(state.join(name), pem).expect("write");
    }
    server.restart();
    let warning = server
        .banner
        .iter()
        .find(|l| l.starts_with("warning: the server certificate expires in"))
        .unwrap_or_else(|| panic!("no warning in {:?}", server.banner));
    assert!(warning.contains("cert.pem"), "{warning}");
    ok(&run(&server, &["ping", "-c", "1", "-i", "0", server.url()]));
}

/// Every malformed files request is answered with an error frame naming
/// what was wrong, and the session goes on: a `ping` on the same
/// connection still gets its `pong`. Data sent after a refused upload is
/// discarded, never taken for a request.
#[test]
fn malformed_files_requests_are_answered_and_the_session_goes_on() {
    let server = TestServer::start_listening(&["tcp+plain://127.0.0.1:0"], &[]);
    fs::create_dir(server.root.join("d")).expect("mkdir");
    let mut c = RawConn::login(&server.urls[0], &server.key_file);
    let expect = |c: &mut RawConn, header: &[u8], body: &[u8], code: &str| {
        c.send_raw(header, body).expect("send");
        let answer = c.recv().expect("an answer, not a closed session");
        assert_eq!(
            answer["op"],
            "error",
            "{}: {answer}",
            String::from_utf8_lossy(header)
        );
        assert_eq!(
            answer["code"],
            code,
            "{}: {answer}",
            String::from_utf8_lossy(header)
        );
        c.send_raw(br#"{"op":"ping","len":2}"#, b"hi")
            .expect("ping");
        let pong = c.recv().expect("pong");
        assert_eq!(
            pong["op"],
            "pong",
            "after {}: {pong}",
            String::from_utf8_lossy(header)
        );
    };
    expect(&mut c, br#"{"op":"stat"}"#, b"", "bad_frame");
    expect(
        &mut c,
        br#"{"op":"get","path":"x","offset":-1}"#,
        b"",
        "bad_frame",
    );
    expect(
        &mut c,
        br#"{"op":"put","path":"x","size":3,"mode":"rwx"}"#,
        b"",
        "bad_frame",
    );
    expect(
        &mut c,
        br#"{"op":"stat","path":"\ud800"}"#,
        b"",
        "bad_frame",
    );
    expect(
        &mut c,
        br#"{"op":"put","path":"link","kind":"symlink"}"#,
        b"",
        "bad_frame",
    );
    // An upload without a size, followed by its data and end: refused,
    // the data discarded, and nothing left at the path or in staging.
    c.send_raw(br#"{"op":"put","path":"nosize"}"#, b"")
        .expect("put");
    c.send_raw(br#"{"op":"data","len":3}"#, b"abc")
        .expect("data");
    // The one error answers the `put`; `data` and `end` are discarded.
    expect(
        &mut c,
        br#"{"op":"end","size":3,"digest":"00"}"#,
        b"",
        "bad_frame",
    );
    let name = "n".repeat(256);
    let long = format!(r#"{{"op":"mkdir","path":"{name}"}}"#);
    expect(&mut c, long.as_bytes(), b"", "name_too_long");
    expect(
        &mut c,
        br#"{"op":"mv","from":"d","to":"d/inside"}"#,
        b"",
        "invalid",
    );
    assert!(!server.root.join("nosize").exists());
    assert!(server.root.join("d").is_dir());
    assert!(
        server.staged_files().is_empty(),
        "{:?}",
        server.staged_files()
    );
}

/// A link's climb is resolved from where it lies, so `mv` nearer the top
/// could carry `sub/up -> ../../x` (inside where it was uploaded) above
/// the root: a move of the link, or of a directory holding it, is checked
/// from the new place and refused; moves that keep every link inside go
/// through.
#[test]
fn mv_cannot_carry_a_link_above_the_root() {
    let server = TestServer::start(&[]);
    let url = server.url();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("deep");
    fs::create_dir_all(tree.join("sub")).unwrap();
    std::os::unix::fs::symlink("../../x", tree.join("sub/up")).unwrap();
    fs::create_dir(server.root.join("t")).unwrap();
    ok(&run(&server, &["put", "-r", url, p(&tree), "t/deep"]));
    assert!(fs::symlink_metadata(server.root.join("t/deep/sub/up")).is_ok());
    fails_with(
        &run(&server, &["mv", url, "t/deep/sub", "sub2"]),
        "outside the served root",
    );
    fails_with(
        &run(&server, &["mv", url, "t/deep/sub/up", "up"]),
        "outside the served root",
    );
    assert!(fs::symlink_metadata(server.root.join("t/deep/sub/up")).is_ok());
    assert!(!server.root.join("sub2").exists());
    assert!(fs::symlink_metadata(server.root.join("up")).is_err());
    // Beside where it was, or deeper: every link stays inside.
    ok(&run(&server, &["mv", url, "t/deep/sub", "t/deep/sub3"]));
    ok(&run(&server, &["mkdir", url, "t/deep/a"]));
    ok(&run(&server, &["mv", url, "t/deep/sub3", "t/deep/a/"]));
    assert!(fs::symlink_metadata(server.root.join("t/deep/a/sub3/up")).is_ok());
}
