//! End-to-end: `put -r` as one stream (`put_tree`) through the real
//! binary: many small files and a large one, per-file failures, corrupted
//! files never made visible, a client killed mid-tree, and a peer that
//! floods entries and never reads the answers.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::probe::{rss_kib, run_bounded, RawConn};
use common::{files_under, hash, make_file, ok, p, run, small_tree, stderr, TestServer};
use serde_json::json;

fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tree_upload_stores_every_file_with_its_metadata() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let top = work.path().join("top");
    small_tree(&top, 6, 120);
    make_file(&top.join("big.bin"), (3 << 20) + 5, 7);
    fs::write(top.join("empty"), b"").unwrap();
    fs::set_permissions(top.join("d01/f001"), fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::symlink("d00/f000", top.join("link")).unwrap();
    fs::create_dir(top.join("d00/emptydir")).unwrap();
    ok(&run(&server, &["put", "-r", server.url(), p(&top), "t"]));

    let dest = server.root.join("t");
    assert_eq!(files_under(&top), files_under(&dest));
    for f in files_under(&top) {
        let (a, b) = (top.join(&f), dest.join(&f));
        assert_eq!(hash(&a), hash(&b), "{f}");
        let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
        assert_eq!(ma.mode() & 0o777, mb.mode() & 0o777, "{f}");
        assert_eq!(ma.mtime(), mb.mtime(), "{f}");
    }
    assert_eq!(
        fs::read_link(dest.join("link")).unwrap(),
        Path::new("d00/f000")
    );
    assert!(dest.join("d00/emptydir").is_dir());
    assert_eq!(
        fs::metadata(dest.join("d02")).unwrap().mtime(),
        fs::metadata(top.join("d02")).unwrap().mtime()
    );
    assert!(
        server.staged_files().is_empty(),
        "{:?}",
        server.staged_files()
    );
}

#[test]
fn tree_upload_reports_each_failure_and_stores_the_rest() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let top = work.path().join("top");
    small_tree(&top, 2, 50);
    // t3 exists, so the tree goes into t3/top (scp style), where one file
    // is taken and a directory sits where another file would go.
    fs::create_dir_all(server.root.join("t3/top/d00")).unwrap();
    fs::write(server.root.join("t3/top/d00/f007"), b"theirs").unwrap();
    fs::create_dir_all(server.root.join("t3/top/d01/f003")).unwrap();
    let o = run(&server, &["put", "-r", server.url(), p(&top), "t3"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("t3/top/d00/f007") && err.contains("[exists]"),
        "{err}"
    );
    assert!(err.contains("t3/top/d01/f003"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("skiff: put")).count(),
        2,
        "{err}"
    );
    assert_eq!(
        fs::read(server.root.join("t3/top/d00/f007")).unwrap(),
        b"theirs"
    );
    assert_eq!(files_under(&server.root.join("t3/top")).len(), 99);
    // With --force the file is replaced; the directory never is.
    let o = run(&server, &["put", "-r", "-f", server.url(), p(&top), "t3"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        hash(&server.root.join("t3/top/d00/f007")),
        hash(&top.join("d00/f007"))
    );
    assert!(server.root.join("t3/top/d01/f003").is_dir());
    assert!(server.staged_files().is_empty());
}

#[test]
fn corrupted_tree_files_never_become_visible() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let top = work.path().join("top");
    small_tree(&top, 2, 20);
    make_file(&top.join("big.bin"), 3 << 20, 9);
    // Chunk 0 of every file is corrupted after it was hashed.
    let o = server
        .client()
        .args(["put", "-r", server.url(), p(&top), "t"])
        .env("SKIFF_TEST_CORRUPT_CHUNK", "0")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    // Empty files have no byte to flip; every other file is refused.
    let nonempty = files_under(&top)
        .into_iter()
        .filter(|f| fs::metadata(top.join(f)).unwrap().len() > 0)
        .count();
    assert_eq!(err.matches("checksum_mismatch").count(), nonempty, "{err}");
    for f in files_under(&server.root.join("t")) {
        assert_eq!(
            fs::metadata(top.join(&f)).unwrap().len(),
            0,
            "{f} is visible"
        );
    }
    assert!(server.staged_files().is_empty());
}

#[test]
fn client_killed_mid_tree_leaves_only_complete_files() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let top = work.path().join("top");
    small_tree(&top, 30, 10);
    let mut child = server
        .client()
        .args(["put", "-r", server.url(), p(&top), "t"])
        .env("SKIFF_TEST_CHUNK_DELAY_MS", "40")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dest = server.root.join("t");
    wait_until(Duration::from_secs(20), "the first files", || {
        files_under(&dest).len() >= 10
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let landed = files_under(&dest);
    assert!(landed.len() < 300, "the tree finished before the kill");
    for f in &landed {
        assert_eq!(hash(&top.join(f)), hash(&dest.join(f)), "{f}");
    }
    // What was staged and not answered is removed, and the server serves on.
    wait_until(Duration::from_secs(10), "staged files removed", || {
        server.staged_files().is_empty()
    });
    for f in files_under(&dest) {
        assert_eq!(hash(&top.join(&f)), hash(&dest.join(&f)), "{f}");
    }
    let o = run(&server, &["put", "-r", server.url(), p(&top), "again"]);
    ok(&o);
    assert_eq!(files_under(&server.root.join("again")).len(), 300);
}

/// Two versions of one tree: the same names, different bytes.
fn two_versions(work: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (work.join("a/top"), work.join("b/top"));
    small_tree(&a, 4, 60);
    for f in files_under(&a) {
        let to = b.join(&f);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        make_file(&to, 1000 + (f.len() as u64 * 13), 99 + f.len() as u64);
    }
    (a, b)
}

#[test]
fn two_clients_uploading_one_tree_at_once_leave_each_file_whole_from_one() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let (a, b) = two_versions(work.path());
    for force in [false, true] {
        let dest_name = if force { "forced" } else { "plain" };
        fs::create_dir_all(server.root.join(dest_name)).unwrap();
        let spawn = |top: &Path| {
            let mut cmd = server.client();
            cmd.arg("put").arg("-r");
            if force {
                cmd.arg("-f");
            }
            cmd.args([server.url(), p(top), dest_name])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (ca, cb) = (spawn(&a), spawn(&b));
        let (oa, ob) = (
            ca.wait_with_output().unwrap(),
            cb.wait_with_output().unwrap(),
        );
        let dest = server.root.join(dest_name).join("top");
        let landed = files_under(&dest);
        assert_eq!(landed, files_under(&a), "force {force}");
        for f in &landed {
            let h = hash(&dest.join(f));
            assert!(
                h == hash(&a.join(f)) || h == hash(&b.join(f)),
                "{f} is neither version (force {force})"
            );
        }
        if !force {
            // Each file went to one client; the other was told `exists`.
            let told = |o: &std::process::Output| {
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .filter(|l| l.contains("[exists]"))
                    .count()
            };
            assert_eq!(told(&oa) + told(&ob), landed.len(), "{}", stderr(&oa));
        }
    }
    assert!(server.staged_files().is_empty());
}

#[test]
fn a_peer_that_floods_entries_and_never_reads_is_held_back() {
    let server =
        TestServer::start_listening(&["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"], &[]);
    let plain = server.urls[1].clone();
    let mut conn = RawConn::login(&plain, &server.key_file);
    conn.send(&json!({"op":"put_tree"})).unwrap();
    let ready = conn.recv().unwrap();
    assert_eq!(ready["op"], "tree_ready", "{ready}");
    // Empty files into a directory that does not exist: each is answered
    // with a failure, cheaply, so the answers pile up fast.
    let empty = blake3::hash(b"").to_hex().to_string();
    conn.sock
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let started = Instant::now();
    let mut id = 0u64;
    let mut blocked = false;
    for _frame in 0..20_000 {
        let files: Vec<_> = (0..200)
            .map(|_| {
                id += 1;
                json!({"id": id, "path": format!("nodir/f{id}"), "size": 0, "digest": empty})
            })
            .collect();
        let header = json!({"op":"tree_files","files":files,"len":0}).to_string();
        if conn.send_raw(header.as_bytes(), b"").is_err() {
            blocked = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    assert!(
        blocked,
        "the server kept reading from a peer that never reads"
    );
    let rss = rss_kib(server.pid());
    assert!(rss < 200 * 1024, "server RSS {rss} KiB");
    // Everybody else is served meanwhile.
    let work = tempfile::tempdir().unwrap();
    let top = work.path().join("top");
    small_tree(&top, 2, 10);
    let mut cmd = server.client();
    cmd.args(["put", "-r", server.url(), p(&top), "other"]);
    let o = run_bounded(cmd, Duration::from_secs(30));
    ok(&o);
    assert_eq!(files_under(&server.root.join("other")).len(), 20);
    drop(conn);
    assert!(!server.root.join("nodir").exists());
}

/// Files under `top` that are not partial files, and the partial files.
fn visible_and_partial(top: &Path) -> (Vec<String>, Vec<String>) {
    files_under(top)
        .into_iter()
        .partition(|f| !f.ends_with(".skiff-part"))
}

#[test]
fn tree_download_stores_every_file_with_its_metadata() {
    let server = TestServer::start(&[]);
    let src = server.root.join("t");
    small_tree(&src, 6, 120);
    make_file(&src.join("big.bin"), (3 << 20) + 5, 7);
    fs::write(src.join("empty"), b"").unwrap();
    fs::set_permissions(src.join("d01/f001"), fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::symlink("d00/f000", src.join("link")).unwrap();
    fs::create_dir(src.join("d00/emptydir")).unwrap();
    fs::set_permissions(src.join("d03"), fs::Permissions::from_mode(0o711)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("copy");
    let o = run(
        &server,
        &["get", "-r", "--json", server.url(), "t", p(&dest)],
    );
    ok(&o);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["files"], 6 * 120 + 2, "{report}");
    let (visible, partial) = visible_and_partial(&dest);
    assert!(partial.is_empty(), "{partial:?}");
    assert_eq!(files_under(&src), visible);
    for f in &visible {
        let (a, b) = (src.join(f), dest.join(f));
        assert_eq!(hash(&a), hash(&b), "{f}");
        let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
        assert_eq!(ma.mode() & 0o777, mb.mode() & 0o777, "{f}");
        assert_eq!(ma.mtime(), mb.mtime(), "{f}");
    }
    assert_eq!(
        fs::read_link(dest.join("link")).unwrap(),
        Path::new("d00/f000")
    );
    assert!(dest.join("d00/emptydir").is_dir());
    for d in ["d02", "d03"] {
        let (ma, mb) = (
            fs::metadata(src.join(d)).unwrap(),
            fs::metadata(dest.join(d)).unwrap(),
        );
        assert_eq!(ma.mtime(), mb.mtime(), "{d}");
        assert_eq!(ma.mode() & 0o777, mb.mode() & 0o777, "{d}");
    }
    // LOCAL now exists, so the tree goes into LOCAL/t (cp semantics); a
    // copy over that reports the files that exist and changes nothing,
    // and with --force replaces them.
    ok(&run(&server, &["get", "-r", server.url(), "t", p(&dest)]));
    let inner = dest.join("t");
    assert_eq!(files_under(&src), visible_and_partial(&inner).0);
    fs::write(inner.join("d00/f001"), b"mine").unwrap();
    let o = run(&server, &["get", "-r", server.url(), "t", p(&dest)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("[exists]"), "{}", stderr(&o));
    assert_eq!(fs::read(inner.join("d00/f001")).unwrap(), b"mine");
    ok(&run(
        &server,
        &["get", "-r", "-f", server.url(), "t", p(&dest)],
    ));
    assert_eq!(hash(&inner.join("d00/f001")), hash(&src.join("d00/f001")));
    assert!(visible_and_partial(&inner).1.is_empty());
}

#[test]
fn corrupted_server_files_never_become_visible_on_get() {
    // The server flips a byte of every file after hashing it.
    let server = TestServer::start_with_env(
        &["tcp://127.0.0.1:0"],
        &[],
        &[("SKIFF_TEST_CORRUPT_CHUNK", "0")],
    );
    let src = server.root.join("t");
    small_tree(&src, 2, 20);
    make_file(&src.join("big.bin"), 3 << 20, 9);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("copy");
    let o = run(&server, &["get", "-r", server.url(), "t", p(&dest)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let nonempty = files_under(&src)
        .into_iter()
        .filter(|f| fs::metadata(src.join(f)).unwrap().len() > 0)
        .count();
    assert_eq!(err.matches("checksum_mismatch").count(), nonempty, "{err}");
    let (visible, partial) = visible_and_partial(&dest);
    assert!(partial.is_empty(), "{partial:?}");
    for f in visible {
        assert_eq!(
            fs::metadata(src.join(&f)).unwrap().len(),
            0,
            "{f} is visible"
        );
    }
}

#[test]
fn client_killed_mid_get_leaves_only_complete_files() {
    // The server pauses 100 ms per frame (about ten files), so the 400-file
    // tree takes four seconds: several batches are committed before the end
    // even when a loaded disk makes each commit slow.
    let server = TestServer::start_with_env(
        &["tcp://127.0.0.1:0"],
        &[],
        &[("SKIFF_TEST_CHUNK_DELAY_MS", "100")],
    );
    let src = server.root.join("t");
    for d in 0..20 {
        for i in 0..20u64 {
            let dir = src.join(format!("d{d:02}"));
            fs::create_dir_all(&dir).unwrap();
            make_file(&dir.join(format!("f{i}")), 100_000 + i, d * 100 + i);
        }
    }
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("copy");
    let mut child = server
        .client()
        .args(["get", "-r", server.url(), "t", p(&dest)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "the first files", || {
        visible_and_partial(&dest).0.len() >= 10
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (visible, partial) = visible_and_partial(&dest);
    assert!(visible.len() < 400, "the tree finished before the kill");
    for f in &visible {
        assert_eq!(hash(&src.join(f)), hash(&dest.join(f)), "{f}");
    }
    // What was in flight is at most a hidden partial file.
    for f in &partial {
        let name = Path::new(f).file_name().unwrap().to_string_lossy();
        assert!(name.starts_with('.'), "{f}");
    }
    // The server serves on: a second copy completes.
    let again = work.path().join("again");
    ok(&run(&server, &["get", "-r", server.url(), "t", p(&again)]));
    assert_eq!(visible_and_partial(&again).0.len(), 400);
}

#[test]
fn a_client_that_never_acks_or_reads_holds_the_server_back() {
    let server =
        TestServer::start_listening(&["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"], &[]);
    let src = server.root.join("t");
    small_tree(&src, 4, 100);
    for i in 0..24 {
        make_file(&src.join(format!("big{i:02}")), 1 << 20, i);
    }
    let mut conn = RawConn::login(&server.urls[1], &server.key_file);
    // The smallest window a server uses is 4 MiB; ask for less.
    conn.send(&json!({"op":"get_tree","path":"t","window":1024}))
        .unwrap();
    let ready = conn.recv().unwrap();
    assert_eq!(ready["op"], "tree_ready", "{ready}");
    let window = ready["window"].as_u64().unwrap();
    assert_eq!(window, 4 << 20);
    // Read without answering: the server stops at the window.
    conn.sock
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut data = 0u64;
    while let Some(h) = conn.recv() {
        assert_ne!(h["op"], "tree_end", "the whole tree was sent unanswered");
        data += h["len"].as_u64().unwrap_or(0);
    }
    assert!(data > 0, "nothing was sent");
    assert!(
        data <= window + (2 << 20),
        "{data} bytes sent against a window of {window}"
    );
    // Now stop reading altogether: the server's memory stays bounded and
    // everybody else is served.
    let rss = rss_kib(server.pid());
    assert!(rss < 200 * 1024, "server RSS {rss} KiB");
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("copy");
    let mut cmd = server.client();
    cmd.args(["get", "-r", server.url(), "t", p(&dest)]);
    ok(&run_bounded(cmd, Duration::from_secs(30)));
    assert_eq!(files_under(&dest), files_under(&src));
    drop(conn);
}
