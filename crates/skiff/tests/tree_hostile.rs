//! The tree receiver's durability passes under hostile endings: clients
//! killed mid-tree again and again (mid small files and mid a large
//! file), and a server shut down mid-tree. Whatever landed is whole, no
//! staged file stays, the receiver's disk and pass threads end and its
//! descriptors are released, and the server goes on serving (or, shut
//! down, finishes the running tree within its grace period and exits).

mod common;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::probe::open_fds;
use common::*;

/// Longest any client run here may take.
const LIMIT: Duration = Duration::from_secs(60);

/// Waits (`limit` at most) until `cond` holds.
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Threads of `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|t| {
            fs::read_to_string(t.path().join("comm"))
                .unwrap_or_default()
                .trim()
                == name
        })
        .count()
}

/// Every file under `dest` is whole (as in `src`) and not hidden.
fn all_whole(src: &Path, dest: &Path) -> usize {
    let landed = files_under(dest);
    for f in &landed {
        let name = f.rsplit('/').next().unwrap_or(f);
        assert!(!name.starts_with('.'), "a hidden file is visible: {f}");
        assert_eq!(hash(&src.join(f)), hash(&dest.join(f)), "{f}");
    }
    landed.len()
}

/// `put -r` of `src` into `dest` with every piece of data delayed by
/// `delay_ms`, in the background.
fn spawn_put(server: &TestServer, src: &Path, dest: &str, delay_ms: u32) -> std::process::Child {
    server
        .client()
        .args(["put", "-r", server.url(), p(src), dest])
        .env("SKIFF_TEST_CHUNK_DELAY_MS", delay_ms.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Clients killed mid-tree, three times among small files and twice in
/// the middle of a large one: after each, every file that landed is
/// whole, nothing staged stays, the tree receiver's pass thread ends and
/// the server's descriptors come back to where they were; then a tree
/// uploads whole.
#[test]
fn clients_killed_mid_tree_again_and_again_leak_no_thread_or_descriptor() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let small = work.path().join("small");
    small_tree(&small, 20, 15);
    let big = work.path().join("big");
    fs::create_dir_all(&big).unwrap();
    make_file(&big.join("a-large"), 48 << 20, 3);
    fs::write(big.join("b-small"), b"after the large one").unwrap();
    // Warm up: the first connection opens what the server keeps open.
    ok(&run(
        &server,
        &["put", "-r", server.url(), p(&small.join("d00")), "warm"],
    ));
    let fds = open_fds(server.pid());
    for round in 0..5 {
        let (src, delay, at_least) = if round < 3 {
            (&small, 30, 5)
        } else {
            (&big, 20, 0)
        };
        let name = format!("t{round}");
        let dest = server.root.join(&name);
        let mut child = spawn_put(&server, src, &name, delay);
        let started = Instant::now();
        eventually(Duration::from_secs(20), "the first files land", || {
            files_under(&dest).len() >= at_least && started.elapsed() > Duration::from_millis(300)
        });
        child.kill().unwrap();
        child.wait().unwrap();
        let landed = all_whole(src, &dest);
        assert!(
            landed < files_under(src).len(),
            "round {round}: finished before the kill"
        );
        eventually(Duration::from_secs(10), "the pass thread ends", || {
            threads_named(server.pid(), "tree-sync") == 0
        });
        eventually(Duration::from_secs(10), "staged files removed", || {
            server.staged_files().is_empty()
        });
        eventually(Duration::from_secs(10), "descriptors released", || {
            open_fds(server.pid()) <= fds + 2
        });
        assert_eq!(
            all_whole(src, &dest),
            landed,
            "round {round}: nothing lands after"
        );
    }
    let mut cmd = server.client();
    cmd.args(["put", "-r", server.url(), p(&small), "again"]);
    ok(&run_bounded(cmd, LIMIT));
    assert_eq!(all_whole(&small, &server.root.join("again")), 300);
}

/// A server shut down (SIGTERM) while a tree is being uploaded lets the
/// tree finish within its grace period: the client succeeds, every file
/// is whole, and the server then exits.
#[test]
fn a_server_shut_down_mid_tree_lets_it_finish_and_exits() {
    let mut server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    small_tree(&src, 10, 20);
    let dest = server.root.join("t");
    let child = spawn_put(&server, &src, "t", 10);
    eventually(Duration::from_secs(20), "the first files land", || {
        files_under(&dest).len() >= 10
    });
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let started = Instant::now();
    let out = {
        let mut child = child;
        loop {
            if child.try_wait().unwrap().is_some() {
                break child.wait_with_output().unwrap();
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("the client hung after the server's shutdown");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(all_whole(&src, &dest), 200);
    loop {
        if server.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server did not exit after its grace period"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.staged_files().is_empty());
}

/// A `tree_files` frame whose sizes wrap around when added up (one of
/// `u64::MAX` bytes, the next making the sum come out at the body's
/// length) is a protocol violation, answered `bad_frame` before any of
/// it is written, not a crash of the receiver; nothing of the tree is
/// left and the server goes on serving.
#[test]
fn a_tree_batch_whose_sizes_wrap_around_is_refused() {
    use common::probe::RawConn;
    use serde_json::json;
    let server =
        TestServer::start_listening(&["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"], &[]);
    let mut conn = RawConn::login(&server.urls[1], &server.key_file);
    conn.send(&json!({"op":"put_tree"})).unwrap();
    assert_eq!(conn.recv().unwrap()["op"], "tree_ready");
    let digest = blake3::hash(b"abcde").to_hex().to_string();
    let body = b"abcde";
    let files = json!([
        {"id": 1, "path": "ok", "size": 0, "digest": blake3::hash(b"").to_hex().to_string()},
        {"id": 2, "path": "huge", "size": u64::MAX, "digest": digest},
        {"id": 3, "path": "wrap", "size": body.len() as u64 + 1, "digest": digest},
    ]);
    let header = json!({"op":"tree_files","files":files,"len":body.len()}).to_string();
    conn.send_raw(header.as_bytes(), body).unwrap();
    let _ = conn.send(&json!({"op":"tree_end"}));
    let mut answers = Vec::new();
    while let Some(v) = conn.recv() {
        let last = v["op"] == "error" || v["op"] == "tree_done";
        answers.push(v);
        if last {
            break;
        }
    }
    let last = answers.last().cloned().unwrap_or_default();
    assert_eq!(last["op"], "error", "{answers:?}");
    assert_eq!(last["code"], "bad_frame", "{answers:?}");
    assert!(names(&server.root).is_empty(), "{:?}", names(&server.root));
    eventually(Duration::from_secs(10), "staged files removed", || {
        server.staged_files().is_empty()
    });
    let work = tempfile::tempdir().unwrap();
    small_tree(&work.path().join("t"), 1, 5);
    let mut cmd = server.client();
    cmd.args([
        "put",
        "-r",
        server.url(),
        p(&work.path().join("t")),
        "after",
    ]);
    ok(&run_bounded(cmd, LIMIT));
}
