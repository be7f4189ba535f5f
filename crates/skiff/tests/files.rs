//! End-to-end: file transfer and management through the real binary.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fails_with, hash, leftovers, make_file, ok, p, run, stderr, TestServer};

#[test]
fn round_trips_small_and_odd_sizes() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    for (i, size) in [0u64, 1, 4095, 1 << 20, 3 * (1 << 20) + 7]
        .into_iter()
        .enumerate()
    {
        let src = work.path().join(format!("src{i}"));
        make_file(&src, size, i as u64);
        let name = format!("f{i}.bin");
        ok(&run(&server, &["put", server.url(), p(&src), &name]));
        assert_eq!(
            hash(&server.root.join(&name)),
            hash(&src),
            "put size {size}"
        );
        let back = work.path().join(format!("back{i}"));
        ok(&run(
            &server,
            &["get", "--hash", "sha256", server.url(), &name, p(&back)],
        ));
        assert_eq!(hash(&back), hash(&src), "get size {size}");
    }
    // Into a directory (scp style), and mode/mtime kept.
    fs::create_dir(server.root.join("dir")).unwrap();
    let src = work.path().join("exe");
    make_file(&src, 10, 9);
    fs::set_permissions(&src, fs::Permissions::from_mode(0o750)).unwrap();
    ok(&run(&server, &["put", server.url(), p(&src), "/dir/"]));
    let md = fs::metadata(server.root.join("dir/exe")).unwrap();
    assert_eq!(md.mode() & 0o777, 0o750);
    assert_eq!(md.mtime(), fs::metadata(&src).unwrap().mtime());
    // Exists without --force; replaced with it.
    fails_with(
        &run(&server, &["put", server.url(), p(&src), "dir/exe"]),
        "--force",
    );
    ok(&run(
        &server,
        &["put", "--force", server.url(), p(&src), "dir/exe"],
    ));
    fails_with(
        &run(
            &server,
            &["get", server.url(), "nope", p(&work.path().join("x"))],
        ),
        "not found",
    );
    assert!(leftovers(&server.root).is_empty());
    assert!(leftovers(work.path()).is_empty());
}

#[test]
fn one_gib_round_trip() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("big");
    make_file(&src, 1 << 30, 42);
    let want = hash(&src);
    ok(&run(&server, &["put", server.url(), p(&src), "big"]));
    assert_eq!(hash(&server.root.join("big")), want);
    fs::remove_file(&src).unwrap();
    ok(&run(&server, &["get", server.url(), "big", p(&src)]));
    assert_eq!(hash(&src), want);
}

#[test]
fn trees_keep_structure_modes_times_and_links() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let top = work.path().join("tree");
    fs::create_dir_all(top.join("sub dir/ünïcode")).unwrap();
    fs::create_dir(top.join("empty")).unwrap();
    fs::write(top.join("empty file"), b"").unwrap();
    make_file(&top.join("sub dir/data.bin"), 2 * (1 << 20) + 3, 1);
    for i in 0..50 {
        fs::write(
            top.join(format!("sub dir/ünïcode/small {i}")),
            format!("{i}"),
        )
        .unwrap();
    }
    fs::set_permissions(
        top.join("sub dir/data.bin"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub dir/data.bin", top.join("link")).unwrap();
    // A link out of the tree is refused by the server, not followed.
    std::os::unix::fs::symlink("/etc/passwd", top.join("outside")).unwrap();
    fs::set_permissions(top.join("empty"), fs::Permissions::from_mode(0o700)).unwrap();
    let past = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::open(top.join("sub dir/ünïcode/small 7"))
        .unwrap()
        .set_modified(past)
        .unwrap();
    fs::File::open(top.join("empty"))
        .unwrap()
        .set_modified(past)
        .unwrap();

    let out = run(&server, &["put", "-r", server.url(), p(&top), "/"]);
    fails_with(&out, "path_escape");
    let r = server.root.join("tree");
    assert!(!r.join("outside").exists() && fs::symlink_metadata(r.join("outside")).is_err());
    assert_eq!(
        fs::read_link(r.join("link")).unwrap(),
        Path::new("sub dir/data.bin")
    );
    assert_eq!(
        hash(&r.join("sub dir/data.bin")),
        hash(&top.join("sub dir/data.bin"))
    );
    assert_eq!(
        fs::metadata(r.join("sub dir/data.bin")).unwrap().mode() & 0o777,
        0o600
    );
    assert_eq!(fs::read(r.join("sub dir/ünïcode/small 49")).unwrap(), b"49");
    assert_eq!(
        fs::metadata(r.join("sub dir/ünïcode/small 7"))
            .unwrap()
            .mtime(),
        1_000_000_000
    );
    assert_eq!(
        fs::metadata(r.join("empty")).unwrap().mtime(),
        1_000_000_000
    );
    assert_eq!(fs::metadata(r.join("empty")).unwrap().mode() & 0o777, 0o700);
    assert_eq!(fs::metadata(r.join("empty file")).unwrap().len(), 0);

    let back = work.path().join("back");
    ok(&run(
        &server,
        &["get", "-r", server.url(), "tree", p(&back)],
    ));
    assert_eq!(
        fs::read_link(back.join("link")).unwrap(),
        Path::new("sub dir/data.bin")
    );
    assert_eq!(
        hash(&back.join("sub dir/data.bin")),
        hash(&top.join("sub dir/data.bin"))
    );
    assert_eq!(
        fs::read_dir(back.join("sub dir/ünïcode")).unwrap().count(),
        50
    );
    assert_eq!(
        fs::metadata(back.join("sub dir/ünïcode/small 7"))
            .unwrap()
            .mtime(),
        1_000_000_000
    );
    assert_eq!(
        fs::metadata(back.join("empty")).unwrap().mtime(),
        1_000_000_000
    );
    assert!(back.join("empty").is_dir() && back.join("empty file").is_file());
    assert!(leftovers(&server.root).is_empty() && leftovers(&back).is_empty());

    // ls, stat, mv, mkdir, rm.
    let out = run(&server, &["ls", server.url(), "tree"]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sub dir/") && text.contains("link -> sub dir/data.bin"),
        "{text}"
    );
    let out = run(&server, &["stat", server.url(), "tree/sub dir/data.bin"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("size: {}", 2 * (1 << 20) + 3)));
    ok(&run(&server, &["mkdir", "-p", server.url(), "a/b/c"]));
    fails_with(&run(&server, &["mkdir", server.url(), "a/b/c"]), "exists");
    ok(&run(
        &server,
        &["mv", server.url(), "tree/empty file", "a/b"],
    ));
    assert!(server.root.join("a/b/empty file").is_file());
    fails_with(&run(&server, &["rm", server.url(), "a"]), "rm -r");
    ok(&run(&server, &["rm", "-r", server.url(), "a"]));
    assert!(!server.root.join("a").exists());
    fails_with(&run(&server, &["rm", server.url(), "a"]), "not found");
    // 255 when the server cannot be reached.
    let out = run(&server, &["ls", "tcp://127.0.0.1:1", "/"]);
    assert_eq!(out.status.code(), Some(255));
}

#[test]
fn server_refuses_every_escape() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, server.root.join("out")).unwrap();
    std::os::unix::fs::symlink("../../..", server.root.join("up")).unwrap();
    let src = work.path().join("f");
    fs::write(&src, b"x").unwrap();
    let dst = work.path().join("got");
    let url = server.url();
    for path in [
        "../x",
        "/../../etc/passwd",
        "a/../../x",
        "out/secret",
        "up/etc/passwd",
        "out/new",
    ] {
        fails_with(&run(&server, &["get", url, path, p(&dst)]), "outside");
        fails_with(&run(&server, &["put", url, p(&src), path]), "outside");
        fails_with(&run(&server, &["stat", url, path]), "outside");
        fails_with(&run(&server, &["rm", url, path]), "outside");
        fails_with(&run(&server, &["mkdir", url, path]), "outside");
        fails_with(&run(&server, &["mv", url, path, "moved"]), "outside");
        fails_with(&run(&server, &["mv", url, "f-none", path]), "");
    }
    fails_with(&run(&server, &["ls", url, "out/"]), "outside");
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"secret");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert!(!dst.exists());
}

/// A NUL byte and a directory swapped for a symlink halfway through an
/// upload, driven through the library so the race is deterministic.
#[test]
fn nul_and_symlink_swapped_during_upload() {
    use skiff::client::{connect, ConnectOptions};
    use skiff_wire::message::files::{Data, Done, End, Put, Ready, Stat};
    use skiff_wire::ErrorMsg;

    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::create_dir(server.root.join("sub")).unwrap();
    let key = skiff::keys::load_key(&server.key_file).unwrap();
    let target: skiff::target::Target = server.url().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let opts = ConnectOptions {
            known_servers: None,
            ..Default::default()
        };
        let mut c = connect(&target, &key, &opts).await.unwrap();
        let s = &mut c.session;
        s.send(
            &Stat {
                path: "a\0b".into(),
            },
            &[],
        )
        .await
        .unwrap();
        let f = s.recv_required().await.unwrap();
        assert_eq!(f.parse::<ErrorMsg>().unwrap().code.as_str(), "path_escape");

        let chunk = vec![7u8; 1 << 20];
        let mut h = blake3::Hasher::new();
        for _ in 0..3 {
            h.update(&chunk);
        }
        let put = Put {
            path: "sub/big".into(),
            size: 3 << 20,
            ..Default::default()
        };
        s.send(&put, &[]).await.unwrap();
        s.expect::<Ready>().await.unwrap();
        // The server opened `sub` (before `ready`) and holds the first chunk.
        s.send(&Data {}, &chunk).await.unwrap();
        fs::rename(server.root.join("sub"), server.root.join("sub.moved")).unwrap();
        std::os::unix::fs::symlink(&outside, server.root.join("sub")).unwrap();
        s.send(&Data {}, &chunk).await.unwrap();
        s.send(&Data {}, &chunk).await.unwrap();
        let end = End {
            size: 3 << 20,
            digest: h.finalize().to_hex().to_string(),
            abort: false,
        };
        s.send(&end, &[]).await.unwrap();
        let (done, _) = s.expect::<Done>().await.unwrap();
        assert_eq!(done.size, 3 << 20);
    });
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing may land outside"
    );
    assert_eq!(
        fs::metadata(server.root.join("sub.moved/big"))
            .unwrap()
            .len(),
        3 << 20
    );
}

/// A malicious server answering `get -r` with names that try to escape.
#[test]
fn client_refuses_malicious_server_names() {
    malicious_server_names(false);
}

#[test]
fn client_refuses_malicious_server_names_in_a_tree_stream() {
    malicious_server_names(true);
}

/// A fake server (skiff's own session and handshake code) that answers
/// `get -r` with names and links built to escape LOCAL: one `get` per
/// file (it does not know `get_tree`), or with `stream` as a `get_tree`.
fn malicious_server_names(tree_stream: bool) {
    use skiff::session::Session;
    use skiff_wire::message::files::{
        Data, End, Entries, Entry, EntryKind, FileHead, Get, StatReply,
    };

    let work = tempfile::tempdir().unwrap();
    let fake = FakeServer::start(work.path(), move |mut s: Session<'static>| async move {
        {
            let entry = |path: &str, kind, target: Option<&str>| Entry {
                path: path.into(),
                kind,
                size: 4,
                mode: 0o644,
                target: target.map(String::from),
                ..Default::default()
            };
            let list = vec![
                entry("../escaped", EntryKind::File, None),
                entry("/tmp/absolute", EntryKind::File, None),
                entry("d", EntryKind::Dir, None),
                entry("d/../../escaped2", EntryKind::File, None),
                entry("d/up", EntryKind::Symlink, Some("../../outside")),
                entry("d/abs", EntryKind::Symlink, Some("/etc")),
                entry("d/up/x", EntryKind::File, None),
                entry("d/./y", EntryKind::File, None),
                entry("good", EntryKind::File, None),
                // A chain: each link alone stays inside by counting, but
                // `esc` resolves through `sub/up` to LOCAL's parent.
                entry("sub", EntryKind::Dir, None),
                entry("sub/up", EntryKind::Symlink, Some("..")),
                entry("esc", EntryKind::Symlink, Some("sub/up/..")),
                entry("esc/stolen", EntryKind::File, None),
                entry("sub/up2", EntryKind::Symlink, Some("up/../..")),
            ];
            while let Ok(Some(f)) = s.recv().await {
                match f.op() {
                    "stat" => s
                        .send(
                            &StatReply {
                                entry: entry("t", EntryKind::Dir, None),
                            },
                            &[],
                        )
                        .await
                        .unwrap(),
                    "ls" => s
                        .send(
                            &Entries { more: false },
                            &serde_json::to_vec(&list).unwrap(),
                        )
                        .await
                        .unwrap(),
                    "get_tree" if !tree_stream => s
                        .send(
                            &skiff_wire::ErrorMsg::new(skiff_wire::ErrorCode::Unsupported, "no"),
                            &[],
                        )
                        .await
                        .unwrap(),
                    "get_tree" => send_evil_tree(&mut s, &list).await,
                    "get" => {
                        let _g: Get = f.parse().unwrap();
                        s.queue(
                            &FileHead {
                                size: 4,
                                mode: 0o644,
                                mtime_ns: 0,
                                offset: 0,
                            },
                            &[],
                        )
                        .unwrap();
                        s.queue(&Data {}, b"evil").unwrap();
                        let digest = blake3::hash(b"evil").to_hex().to_string();
                        s.send(
                            &End {
                                size: 4,
                                digest,
                                abort: false,
                            },
                            &[],
                        )
                        .await
                        .unwrap();
                    }
                    _ => {}
                }
            }
        }
    });
    let base = work.path().join("base");
    fs::create_dir(&base).unwrap();
    let local = base.join("local");
    let out = fake.run(&["get", "-r"], &["t", p(&local)]);
    fails_with(&out, "path_escape");
    assert_eq!(fs::read(local.join("good")).unwrap(), b"evil");
    let mut names: Vec<_> = fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["local"], "nothing beside LOCAL");
    let mut inside: Vec<_> = fs::read_dir(local.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    inside.sort();
    assert!(
        inside.is_empty(),
        "no links out, no files through them: {inside:?}"
    );
    assert!(!Path::new("/tmp/absolute").exists());
    // The in-tree link is kept; the chain out is never created, so
    // nothing outside LOCAL is reachable (or written) through it.
    assert_eq!(
        fs::read_link(local.join("sub/up")).unwrap(),
        Path::new("..")
    );
    assert!(fs::symlink_metadata(local.join("esc")).is_err());
    assert!(fs::symlink_metadata(local.join("sub/up2")).is_err());
    assert!(!base.join("stolen").exists());
    assert!(!base.join("big").exists());
    assert!(stderr(&out).contains("climbs"), "{}", stderr(&out));
}

/// A fake server on a Unix socket: skiff's own handshake code logs the
/// client in, then `serve` answers the session as it likes.
struct FakeServer {
    sock: std::path::PathBuf,
    key_file: std::path::PathBuf,
    home: tempfile::TempDir,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start<F, Fut>(work: &Path, serve: F) -> FakeServer
    where
        F: FnOnce(skiff::session::Session<'static>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        use skiff::keys::UserKey;
        use skiff::session::accept::{AuthPolicy, Authenticator};
        use skiff::session::Session;
        use skiff::users::{live::LiveUsers, Users};
        use skiff_wire::message::handshake::Welcome;

        let sock = work.join("evil.sock");
        let key = UserKey::generate("u");
        let key_file = work.join("key");
        skiff::keys::write_private_new(&key_file, &format!("{}\n", key.to_line())).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let users = LiveUsers::fixed(Users::from_keys([key]));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                let (stream, _) = listener.accept().await.unwrap();
                let auth = Authenticator::new(users, AuthPolicy::default(), Welcome::default());
                let mut s = Session::new(Box::new(stream));
                auth.handshake(&mut s, &[0u8; 32], None).await.unwrap();
                serve(s).await;
            });
        });
        FakeServer {
            sock,
            key_file,
            home: tempfile::tempdir().unwrap(),
            thread: Some(thread),
        }
    }

    /// Runs `skiff CMD... unix://SOCK ARGS...` against it (bounded), then
    /// waits for the fake to finish.
    fn run(mut self, cmd: &[&str], args: &[&str]) -> std::process::Output {
        let mut c = common::env_for(Command::new(common::skiff_bin()), self.home.path());
        c.args(cmd)
            .args(["--key", p(&self.key_file)])
            .arg(format!("unix://{}", self.sock.display()))
            .args(args);
        let out = common::run_bounded(c, Duration::from_secs(60));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        out
    }
}

/// A server that announces a small file on `get`, then keeps sending data
/// past that size: the client stops at the size it was told, removes its
/// partial file, and fails with `too_large` instead of filling the disk.
#[test]
fn client_refuses_a_get_longer_than_announced() {
    use skiff::session::Session;
    use skiff_wire::message::files::{Data, Entry, EntryKind, FileHead, StatReply};

    let work = tempfile::tempdir().unwrap();
    let fake = FakeServer::start(work.path(), move |mut s: Session<'static>| async move {
        // The client may describe the file first.
        loop {
            let Ok(Some(f)) = s.recv().await else { return };
            match f.op() {
                "get" => break,
                "stat" => {
                    let entry = Entry {
                        path: "f.bin".into(),
                        kind: EntryKind::File,
                        size: 4096,
                        mode: 0o644,
                        ..Default::default()
                    };
                    s.send(&StatReply { entry }, &[]).await.unwrap();
                }
                other => panic!("unexpected {other}"),
            }
        }
        let head = FileHead {
            size: 4096,
            mode: 0o644,
            mtime_ns: 0,
            offset: 0,
        };
        s.queue(&head, &[]).unwrap();
        // 1 GiB, unless the client hangs up first (it must, at 4 KiB).
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..1024 {
            if s.send(&Data {}, &chunk).await.is_err() {
                return;
            }
        }
        panic!("the client took 1 GiB for a 4 KiB file");
    });
    let local = work.path().join("local");
    fs::create_dir(&local).unwrap();
    let out = fake.run(&["get"], &["f.bin", p(&local)]);
    fails_with(&out, "too_large");
    assert!(stderr(&out).contains("announced"), "{}", stderr(&out));
    let left: Vec<_> = fs::read_dir(&local).unwrap().flatten().collect();
    assert!(left.is_empty(), "nothing kept: {left:?}");
}

/// Streams `list` as a `get_tree` would (each file holding "evil", one
/// large file with a bad name among them), then reads the client's
/// answers up to its `tree_done`.
async fn send_evil_tree(
    s: &mut skiff::session::Session<'_>,
    list: &[skiff_wire::message::files::Entry],
) {
    use skiff_wire::message::files::{Data, End, EntryKind};
    use skiff_wire::message::tree::{TreeDir, TreeEnd, TreeFile, TreeFiles, TreeLink, TreeReady};
    s.queue(&TreeReady { window: 1 << 26 }, &[]).unwrap();
    let digest = blake3::hash(b"evil").to_hex().to_string();
    let mut files = Vec::new();
    let mut body = Vec::new();
    for (id, e) in (1u64..).zip(list) {
        match e.kind {
            EntryKind::Dir => s
                .queue(
                    &TreeDir {
                        id,
                        path: e.path.clone(),
                        ..Default::default()
                    },
                    &[],
                )
                .unwrap(),
            EntryKind::Symlink => s
                .queue(
                    &TreeLink {
                        id,
                        path: e.path.clone(),
                        target: e.target.clone().unwrap_or_default(),
                    },
                    &[],
                )
                .unwrap(),
            _ => {
                files.push(TreeFile {
                    id,
                    path: e.path.clone(),
                    size: 4,
                    mode: Some(0o644),
                    digest: digest.clone(),
                    ..Default::default()
                });
                body.extend_from_slice(b"evil");
            }
        }
    }
    s.queue(&TreeFiles { files }, &body).unwrap();
    let big = vec![7u8; 300 * 1024];
    s.queue(
        &TreeFile {
            id: 1000,
            path: "../big".into(),
            size: big.len() as u64,
            ..Default::default()
        },
        &[],
    )
    .unwrap();
    s.queue(&Data {}, &big).unwrap();
    s.queue(
        &End {
            size: big.len() as u64,
            digest: blake3::hash(&big).to_hex().to_string(),
            abort: false,
        },
        &[],
    )
    .unwrap();
    s.send(&TreeEnd {}, &[]).await.unwrap();
    while let Ok(Some(f)) = s.recv().await {
        if f.op() == "tree_done" {
            break;
        }
    }
}

/// How far a transfer got, for [`start_slow`].
enum Part<'a> {
    /// A client-side partial file.
    Local(&'a Path),
    /// The largest upload in the server's staging area.
    Staged,
}

impl Part<'_> {
    fn len(&self, server: &TestServer) -> u64 {
        match self {
            Part::Local(p) => fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            Part::Staged => server.staged_files().iter().map(|f| f.1).max().unwrap_or(0),
        }
    }
}

/// Starts a slowed-down transfer and returns once its partial file holds
/// at least `min` bytes.
fn start_slow(server: &TestServer, args: &[&str], part: Part<'_>, min: u64) -> std::process::Child {
    let child = server
        .client()
        .args(args)
        .env("SKIFF_TEST_CHUNK_DELAY_MS", "25")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while part.len(server) < min {
        assert!(
            Instant::now() < deadline,
            "transfer never reached {min} bytes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn resume(server: &TestServer, args: &[&str]) {
    let out = server
        .client()
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    ok(&out);
    assert!(
        stderr(&out).contains("resuming"),
        "did not resume: {}",
        stderr(&out)
    );
}

#[test]
fn resume_after_client_killed_mid_put_and_mid_get() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_file(&src, 48 << 20, 5);
    let url = server.url().to_string();
    let mut c = start_slow(&server, &["put", &url, p(&src), "f"], Part::Staged, 8 << 20);
    c.kill().unwrap();
    c.wait().unwrap();
    server.wait_staged_released();
    assert!(
        !server.root.join("f").exists(),
        "no partial file under the real name"
    );
    assert!(
        leftovers(&server.root).is_empty(),
        "nothing partial in the root"
    );
    assert_eq!(fs::read_dir(&server.root).unwrap().count(), 0);
    resume(&server, &["put", "--resume", &url, p(&src), "f"]);
    assert_eq!(hash(&server.root.join("f")), hash(&src));
    assert!(leftovers(&server.root).is_empty());
    assert!(
        server.staged_files().is_empty(),
        "{:?}",
        server.staged_files()
    );

    let dst = work.path().join("dst");
    let part = work.path().join(".dst.skiff-part");
    let mut c = start_slow(
        &server,
        &["get", &url, "f", p(&dst)],
        Part::Local(&part),
        8 << 20,
    );
    c.kill().unwrap();
    c.wait().unwrap();
    assert!(!dst.exists());
    resume(&server, &["get", "--resume", &url, "f", p(&dst)]);
    assert_eq!(hash(&dst), hash(&src));
    assert!(leftovers(work.path()).is_empty());
}

#[test]
fn resume_after_server_killed_mid_put() {
    let mut server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_file(&src, 40 << 20, 6);
    let url = server.url().to_string();
    let mut c = start_slow(&server, &["put", &url, p(&src), "f"], Part::Staged, 8 << 20);
    server.restart();
    let status = c.wait().unwrap();
    assert_eq!(status.code(), Some(255), "connection lost is exit 255");
    assert!(!server.root.join("f").exists());
    let url = server.url().to_string();
    resume(&server, &["put", "--resume", &url, p(&src), "f"]);
    assert_eq!(hash(&server.root.join("f")), hash(&src));
    assert!(leftovers(&server.root).is_empty());
    assert!(server.staged_files().is_empty());
}

#[test]
fn readers_never_see_a_partial_file() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let old = work.path().join("old");
    let new = work.path().join("new");
    make_file(&old, 1 << 20, 1);
    make_file(&new, 24 << 20, 2);
    let url = server.url().to_string();
    ok(&run(&server, &["put", &url, p(&old), "f"]));
    let dest = server.root.join("f");
    let mut c = start_slow(
        &server,
        &["put", "--force", &url, p(&new), "f"],
        Part::Staged,
        1,
    );
    let mut seen_new = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen_new {
        assert!(Instant::now() < deadline);
        let len = fs::metadata(&dest).unwrap().len();
        assert!(
            len == 1 << 20 || len == 24 << 20,
            "a reader saw {len} bytes"
        );
        seen_new = len == 24 << 20;
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(c.wait().unwrap().success());
    assert_eq!(hash(&dest), hash(&new));
}

#[test]
fn corrupted_chunk_is_detected_both_ways() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_file(&src, 3 << 20, 3);
    let url = server.url().to_string();
    let corrupt = |args: &[&str]| {
        server
            .client()
            .args(args)
            .env("SKIFF_TEST_CORRUPT_CHUNK", "1")
            .output()
            .unwrap()
    };
    fails_with(&corrupt(&["put", &url, p(&src), "f"]), "checksum_mismatch");
    assert!(!server.root.join("f").exists());
    assert!(leftovers(&server.root).is_empty());
    ok(&run(&server, &["put", &url, p(&src), "f"]));
    let dst = work.path().join("dst");
    fails_with(&corrupt(&["get", &url, "f", p(&dst)]), "checksum_mismatch");
    assert!(!dst.exists());
    assert!(leftovers(work.path()).is_empty());
}

#[test]
fn full_disk_is_no_space_and_leaves_nothing() {
    let server = TestServer::start(&[]);
    // RLIMIT_FSIZE stands in for a full disk: writes past 4 MiB fail.
    let limit = libc::rlimit {
        rlim_cur: 4 << 20,
        rlim_max: 4 << 20,
    };
    let rc = unsafe {
        libc::prlimit(
            server.pid() as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0);
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big");
    make_file(&big, 16 << 20, 4);
    let url = server.url().to_string();
    fails_with(&run(&server, &["put", &url, p(&big), "big"]), "no_space");
    assert!(!server.root.join("big").exists());
    assert!(leftovers(&server.root).is_empty());
    // The server survived and still serves.
    let small = work.path().join("small");
    make_file(&small, 1 << 20, 5);
    ok(&run(&server, &["put", &url, p(&small), "small"]));
}

/// A server answering `get -r` with a `tree_files` frame whose sizes
/// wrap around when added up (`u64::MAX`, then the body's length plus
/// one): the client refuses it as a malformed frame, with a clear error
/// and no panic, and writes nothing.
#[test]
fn client_refuses_a_tree_batch_whose_sizes_wrap_around() {
    use skiff::session::Session;
    use skiff_wire::message::files::{Entry, EntryKind, StatReply};
    use skiff_wire::message::tree::{TreeEnd, TreeFile, TreeFiles, TreeReady};

    let work = tempfile::tempdir().unwrap();
    let fake = FakeServer::start(work.path(), move |mut s: Session<'static>| async move {
        while let Ok(Some(f)) = s.recv().await {
            match f.op() {
                "stat" => {
                    let entry = Entry {
                        path: "t".into(),
                        kind: EntryKind::Dir,
                        mode: 0o755,
                        ..Default::default()
                    };
                    s.send(&StatReply { entry }, &[]).await.unwrap();
                }
                "get_tree" => {
                    s.queue(&TreeReady { window: 1 << 26 }, &[]).unwrap();
                    let digest = blake3::hash(b"evil").to_hex().to_string();
                    let file = |id, path: &str, size| TreeFile {
                        id,
                        path: path.into(),
                        size,
                        digest: digest.clone(),
                        ..Default::default()
                    };
                    let files = vec![file(1, "huge", u64::MAX), file(2, "wrap", 5)];
                    s.queue(&TreeFiles { files }, b"evil").unwrap();
                    let _ = s.send(&TreeEnd {}, &[]).await;
                }
                _ => {}
            }
        }
    });
    let local = work.path().join("local");
    let out = fake.run(&["get", "-r"], &["t", p(&local)]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("bad_frame") || err.contains("tree_files"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let left = if local.exists() {
        common::names(&local)
    } else {
        Vec::new()
    };
    assert!(left.is_empty(), "{left:?}");
}
