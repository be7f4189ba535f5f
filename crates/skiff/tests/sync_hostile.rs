//! `skiff sync` against a hostile server: a fake server (skiff's own
//! session and handshake code on a Unix socket) that answers a pull as a
//! sender or a push as a receiver with crafted frames: names with `..`,
//! absolute names, links out of DST, writes through links the user has,
//! recipes that copy what the old file does not have, content that does
//! not match its BLAKE3, oversized and unsolicited lists and signatures,
//! deletes nobody asked for. The client must refuse each with a clear
//! error, write nothing outside DST and commit nothing unverified.

mod common;

use std::fs;
use std::future::Future;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use skiff::session::Session;
use skiff_sync::list::ListEncoder;
use skiff_sync::{Entry, Kind};
use skiff_wire::message::sync::{
    SyncBatchFile, SyncCopy, SyncData, SyncDelete, SyncEnd, SyncFile, SyncFiles, SyncFinish,
    SyncList, SyncMeta, SyncMkdir, SyncMore, SyncReady, SyncRequest, SyncRoot, SyncSig, SyncSigReq,
    SyncSummary, SyncSymlink,
};
use skiff_wire::Frame;

/// Longest a client run or a fake server may take.
const LIMIT: Duration = Duration::from_secs(60);

/// A fake server for one connection, and what its script observed.
struct Evil {
    _work: tempfile::TempDir,
    home: tempfile::TempDir,
    key_file: PathBuf,
    config: PathBuf,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Evil {
    /// Listens on a Unix socket, performs the real handshake with the
    /// first client, reads its `sync` request, answers `sync_ready`, and
    /// hands the session to `script`, whose notes [`Evil::notes`] returns.
    fn start<F, Fut>(script: F) -> Evil
    where
        F: FnOnce(SyncRequest, Session<'static>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<String>>,
    {
        use skiff::keys::UserKey;
        use skiff::session::accept::{AuthPolicy, Authenticator};
        use skiff::users::{live::LiveUsers, Users};
        use skiff_wire::message::handshake::Welcome;

        let work = tempfile::tempdir().unwrap();
        let sock = work.path().join("evil.sock");
        let key = UserKey::generate("u");
        let key_file = work.path().join("key");
        skiff::keys::write_private_new(&key_file, &format!("{}\n", key.to_line())).unwrap();
        let config = work.path().join("config.toml");
        fs::write(
            &config,
            format!("[hosts.evil]\naddress = \"unix://{}\"\n", sock.display()),
        )
        .unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        listener.set_nonblocking(true).unwrap();
        let users = LiveUsers::fixed(Users::from_keys([key]));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let served = async move {
                    let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                    let (stream, _) = listener.accept().await.unwrap();
                    let auth = Authenticator::new(users, AuthPolicy::default(), Welcome::default());
                    let mut s = Session::new(Box::new(stream));
                    auth.handshake(&mut s, &[0u8; 32], None).await.unwrap();
                    let (req, _) = s.expect::<SyncRequest>().await.unwrap();
                    s.send(&SyncReady::default(), &[]).await.unwrap();
                    script(req, s).await
                };
                tokio::time::timeout(LIMIT, served)
                    .await
                    .unwrap_or_else(|_| vec!["timeout".into()])
            })
        });
        Evil {
            _work: work,
            home: tempfile::tempdir().unwrap(),
            key_file,
            config,
            thread: Some(thread),
        }
    }

    /// Runs `skiff sync ARGS` against this server (`evil:PATH` names it).
    fn sync(&self, args: &[&str]) -> Output {
        self.sync_env(args, &[])
    }

    /// [`sync`](Self::sync) with extra environment variables (test hooks).
    fn sync_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = env_for(Command::new(skiff_bin()), self.home.path());
        cmd.env("SKIFF_CONFIG", &self.config)
            .envs(env.iter().copied())
            .args(["sync", "--key", p(&self.key_file)])
            .args(args);
        run_bounded(cmd, LIMIT)
    }

    /// What the script saw (waits for it to end).
    fn notes(mut self) -> Vec<String> {
        self.thread
            .take()
            .map(|t| t.join().expect("fake server panicked"))
            .unwrap_or_default()
    }
}

/// The next frame that is not a `sync_failed` notice (those are noted as
/// `failed PATH CODE`); `None` once the client is gone.
async fn next(s: &mut Session<'static>, notes: &mut Vec<String>) -> Option<Frame> {
    loop {
        let f = s.recv().await.ok()??;
        if f.op() == "sync_failed" {
            let v: serde_json::Value = serde_json::from_slice(f.header()).unwrap();
            notes.push(format!("failed {} {}", v["path"], v["code"]));
            continue;
        }
        return Some(f);
    }
}

/// Reads what the client says until it closes, noting its failures and
/// errors (a client that stops with an error tells the peer why).
async fn drain(s: &mut Session<'static>, notes: &mut Vec<String>) {
    while let Some(f) = next(s, notes).await {
        notes.push(format!(
            "{} {}",
            f.op(),
            String::from_utf8_lossy(f.header())
        ));
    }
}

/// A hostile sender's opening: the client's root, then its whole list.
async fn read_receiver_list(s: &mut Session<'static>, notes: &mut Vec<String>) {
    let f = next(s, notes).await.unwrap();
    assert_eq!(f.op(), "sync_root");
    loop {
        s.send(&SyncMore {}, &[]).await.unwrap();
        let f = next(s, notes).await.unwrap();
        let l: SyncList = f.parse().unwrap();
        if l.done {
            break;
        }
    }
}

/// Sends a whole file: header, steps, digest.
async fn send_file(s: &mut Session<'static>, head: SyncFile, steps: &[Step<'_>], digest: &[u8]) {
    s.queue(&head, &[]).unwrap();
    for step in steps {
        match step {
            Step::Copy(offset, size) => s.queue(
                &SyncCopy {
                    offset: *offset,
                    size: *size,
                },
                &[],
            ),
            Step::Data(d) => s.queue(&SyncData { raw: None }, d),
            Step::Zstd(raw, d) => s.queue(&SyncData { raw: Some(*raw) }, d),
        }
        .unwrap();
    }
    let end = SyncEnd {
        hash: blake3::hash(digest).to_hex().to_string(),
        abort: false,
    };
    s.send(&end, &[]).await.unwrap();
}

enum Step<'a> {
    Copy(u64, u64),
    Data(&'a [u8]),
    Zstd(u32, &'a [u8]),
}

fn file(path: &str, size: u64, update: bool) -> SyncFile {
    SyncFile {
        path: path.into(),
        size,
        mode: 0o644,
        mtime_ns: 1_600_000_000_000_000_000,
        update,
        replace: false,
    }
}

/// A destination the user has: two files, a directory link out of DST
/// and a file link out of DST (both made by the user, so they stay),
/// beside a directory `outside` with a secret.
struct Layout {
    _t: tempfile::TempDir,
    base: PathBuf,
    dst: PathBuf,
    outside: PathBuf,
}

const KEEP: &[u8] = b"the user's own content, which no hostile server may change";

fn layout() -> Layout {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    let dst = base.join("dst");
    let outside = base.join("outside");
    fs::create_dir_all(&dst).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(dst.join("keep"), KEEP).unwrap();
    fs::write(dst.join("keep2"), KEEP).unwrap();
    symlink("../outside", dst.join("out")).unwrap();
    symlink("../outside/secret", dst.join("secretlink")).unwrap();
    Layout {
        _t: t,
        base,
        dst,
        outside,
    }
}

impl Layout {
    /// Nothing outside DST was created, changed or exposed.
    fn outside_untouched(&self) {
        assert_eq!(names(&self.base), ["dst", "outside"], "nothing beside DST");
        assert_eq!(names(&self.outside), ["secret"], "nothing written outside");
        assert_eq!(fs::read(self.outside.join("secret")).unwrap(), b"secret");
        let mode = fs::metadata(self.outside.join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
        let mode = fs::metadata(&self.outside).unwrap().permissions().mode();
        assert_ne!(mode & 0o777, 0o777, "the outside directory's mode kept");
        for n in names(&self.dst) {
            assert!(!n.starts_with(".skiff"), "a staged file was left: {n}");
        }
        assert_eq!(fs::read(self.dst.join("keep")).unwrap(), KEEP);
        assert_eq!(
            fs::read_link(self.dst.join("out")).unwrap(),
            Path::new("../outside")
        );
    }
}

/// A pull from a sender that tries every way out of DST and every way of
/// getting unverified data committed, one path at a time: each is refused
/// and reported, the honest file among them is committed, and the client
/// exits 1.
#[test]
fn a_hostile_sender_cannot_write_outside_dst_or_commit_unverified_data() {
    let l = layout();
    let abs = format!("{}/abs_dir", l.base.display());
    let abs2 = abs.clone();
    let evil = Evil::start(move |_req, mut s| async move {
        let abs = abs2;
        let mut notes = Vec::new();
        read_receiver_list(&mut s, &mut notes).await;
        // Signatures of files outside DST, by name or through a link.
        for path in ["secretlink", "../outside/secret", "out/secret"] {
            s.send(&SyncSigReq { path: path.into() }, &[])
                .await
                .unwrap();
            let f = next(&mut s, &mut notes).await.unwrap();
            let sig: SyncSig = f.parse().unwrap();
            notes.push(format!(
                "sig {path} missing={} body={}",
                sig.missing,
                f.body().len()
            ));
        }
        // Names that climb out or are absolute.
        for path in ["../escaped_dir", abs.as_str(), "d/../../escaped2"] {
            let m = SyncMkdir {
                path: path.into(),
                mode: 0o755,
                replace: false,
            };
            s.send(&m, &[]).await.unwrap();
        }
        s.send(
            &SyncMkdir {
                path: "d".into(),
                mode: 0o755,
                replace: false,
            },
            &[],
        )
        .await
        .unwrap();
        // Links out of DST.
        for (path, target) in [("up", "../outside"), ("abs", "/etc"), ("d/up", "../..")] {
            let m = SyncSymlink {
                path: path.into(),
                target: target.into(),
                replace: true,
            };
            s.send(&m, &[]).await.unwrap();
        }
        // Files through the user's link out of DST, or named out of it.
        for path in ["out/stolen", "../escaped_file", "d/up/stolen"] {
            send_file(
                &mut s,
                file(path, 4, false),
                &[Step::Data(b"evil")],
                b"evil",
            )
            .await;
        }
        // The old copy of a link out of DST as the basis of a copy.
        send_file(
            &mut s,
            file("secretlink", 6, true),
            &[Step::Copy(0, 6)],
            b"secret",
        )
        .await;
        // A recipe copying what the old file does not have.
        send_file(
            &mut s,
            file("keep", 10, true),
            &[Step::Copy(1 << 20, 10)],
            &[0u8; 10],
        )
        .await;
        send_file(
            &mut s,
            file("keep", 10, true),
            &[Step::Copy(u64::MAX - 4, 10)],
            &[0u8; 10],
        )
        .await;
        // A copy step in a file sent whole (no old copy is its basis),
        // though `keep` has the bytes.
        send_file(
            &mut s,
            file("nobasis", 4, false),
            &[Step::Copy(0, 4)],
            &KEEP[..4],
        )
        .await;
        // Content that is not what its digest says.
        send_file(
            &mut s,
            file("keep2", 4, false),
            &[Step::Data(b"evil")],
            b"good",
        )
        .await;
        // More data than announced, less data than announced.
        send_file(
            &mut s,
            file("long", 4, false),
            &[Step::Data(b"evil and more")],
            b"evil and more",
        )
        .await;
        send_file(
            &mut s,
            file("short", 100, false),
            &[Step::Data(b"evil")],
            b"evil",
        )
        .await;
        // A compressed chunk announcing 100 MiB (and one that lies).
        send_file(
            &mut s,
            file("bomb", 100 << 20, false),
            &[Step::Zstd(100 << 20, b"not zstd at all")],
            b"",
        )
        .await;
        send_file(
            &mut s,
            file("liar", 4, false),
            &[Step::Zstd(4, b"not zstd at all")],
            b"evil",
        )
        .await;
        // Metadata out of DST, and through the user's link.
        for path in ["../outside", "out"] {
            let m = SyncMeta {
                path: path.into(),
                mode: 0o777,
                mtime_ns: 0,
            };
            s.send(&m, &[]).await.unwrap();
        }
        // One honest file, asking for set-uid.
        let mut good = file("good", 4, false);
        good.mode = 0o4755;
        send_file(&mut s, good, &[Step::Data(b"good")], b"good").await;
        s.send(
            &SyncFinish {
                checked: 1,
                total_size: 4,
                source_errors: 0,
            },
            &[],
        )
        .await
        .unwrap();
        loop {
            let Some(f) = next(&mut s, &mut notes).await else {
                break;
            };
            if f.op() == "sync_summary" {
                let sum: SyncSummary = f.parse().unwrap();
                notes.push(format!(
                    "summary failed={} sent={}",
                    sum.failed, sum.files_sent
                ));
                break;
            }
        }
        notes
    });
    let out = evil.sync(&["evil:src", p(&l.dst)]);
    let notes = evil.notes();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}\n{notes:?}");
    for path in ["secretlink", "../outside/secret", "out/secret"] {
        assert!(
            notes.contains(&format!("sig {path} missing=true body=0")),
            "no signature of a file outside DST: {notes:?}"
        );
    }
    let failed = |path: &str, code: &str| {
        let want = format!("failed \"{path}\" \"{code}\"");
        assert!(notes.contains(&want), "{want} not in {notes:?}");
    };
    for path in ["../escaped_dir", abs.as_str(), "d/../../escaped2"] {
        failed(path, "invalid");
    }
    for path in ["up", "abs", "d/up"] {
        failed(path, "path_escape");
    }
    failed("../escaped_file", "invalid");
    failed("keep2", "checksum_mismatch");
    failed("short", "checksum_mismatch");
    failed("nobasis", "bad_frame");
    for path in [
        "out/stolen",
        "d/up/stolen",
        "secretlink",
        "keep",
        "long",
        "bomb",
        "liar",
    ] {
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with(&format!("failed \"{path}\""))),
            "{path} not refused: {notes:?}"
        );
    }
    failed("../outside", "invalid");
    assert!(
        notes.contains(&"summary failed=19 sent=1".to_string()),
        "{notes:?}"
    );
    for code in ["path_escape", "checksum_mismatch", "invalid"] {
        assert!(err.contains(code), "{code} not reported: {err}");
    }
    l.outside_untouched();
    assert!(!Path::new(&abs).exists());
    assert_eq!(fs::read(l.dst.join("keep2")).unwrap(), KEEP);
    assert_eq!(
        fs::read_link(l.dst.join("secretlink")).unwrap(),
        Path::new("../outside/secret")
    );
    assert_eq!(fs::read(l.dst.join("good")).unwrap(), b"good");
    let mode = fs::metadata(l.dst.join("good"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "set-uid is never carried");
    assert_eq!(
        names(&l.dst),
        ["d", "good", "keep", "keep2", "out", "secretlink"]
    );
    assert!(names(&l.dst.join("d")).is_empty());
}

/// Frames that break the protocol stop the pull at once with a clear
/// error (exit 255) and the server is told why: a delete nobody asked
/// for, a delete out of DST, a step outside a file. A delete through the
/// user's link out of DST fails as one path (exit 1). The destination
/// keeps everything.
#[test]
fn a_hostile_sender_breaking_the_protocol_stops_the_pull() {
    let cases: [(&str, i32, &str, Frame); 6] = [
        (
            "a delete without --delete",
            255,
            "--delete",
            frame(&SyncDelete {
                path: "keep".into(),
                dir: false,
                forced: false,
            }),
        ),
        (
            "a forced delete out of DST",
            255,
            "not a plain relative path",
            frame(&SyncDelete {
                path: "../outside/secret".into(),
                dir: false,
                forced: true,
            }),
        ),
        (
            "a delete through a link out of DST",
            1,
            "out/secret",
            frame(&SyncDelete {
                path: "out/secret".into(),
                dir: false,
                forced: true,
            }),
        ),
        (
            "a copy step outside a file",
            255,
            "sync_copy",
            frame(&SyncCopy { offset: 0, size: 4 }),
        ),
        (
            "a batch whose sizes do not add up to its body",
            255,
            "the body holds 6 bytes",
            batch_frame(&[("a", 2, b"ab"), ("b", 2, b"cd")], b"abcdef"),
        ),
        (
            "a batch naming one path twice",
            255,
            "appears twice",
            batch_frame(&[("a", 3, b"abc"), ("a", 3, b"def")], b"abcdef"),
        ),
    ];
    for (what, exit, says, bad) in cases {
        let l = layout();
        let evil = Evil::start(move |_req, mut s| async move {
            let mut notes = Vec::new();
            read_receiver_list(&mut s, &mut notes).await;
            let (_, w) = s.split();
            let _ = w.write_frame(&bad).await;
            let finish = SyncFinish {
                checked: 1,
                total_size: 0,
                source_errors: 0,
            };
            let _ = s.send(&finish, &[]).await;
            drain(&mut s, &mut notes).await;
            notes
        });
        let out = evil.sync(&["evil:src", p(&l.dst)]);
        let notes = evil.notes();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(exit), "{what}: {err}");
        assert!(err.contains(says), "{what}: {says:?} not in {err}");
        l.outside_untouched();
        assert_eq!(fs::read(l.dst.join("keep2")).unwrap(), KEEP, "{what}");
        if exit == 255 {
            assert!(
                notes.iter().any(|n| n.starts_with("error ")),
                "{what}: the server is told why: {notes:?}"
            );
        } else {
            assert!(
                notes.iter().any(|n| n.starts_with("failed \"out/secret\"")),
                "{what}: {notes:?}"
            );
        }
    }
}

fn frame<M: skiff_wire::Message>(m: &M) -> Frame {
    Frame::from_message(m, bytes::Bytes::new()).unwrap()
}

/// One file of a `sync_files` batch: `size` announced, `content` hashed.
fn batch_file(path: &str, size: u64, content: &[u8]) -> SyncBatchFile {
    SyncBatchFile {
        path: path.into(),
        size,
        mode: 0o644,
        mtime_ns: 1_600_000_000_000_000_000,
        hash: blake3::hash(content).to_hex().to_string(),
        replace: false,
    }
}

/// A `sync_files` frame of `files` (path, announced size, hashed
/// content) with `body`, however little the two agree.
fn batch_frame(files: &[(&str, u64, &[u8])], body: &'static [u8]) -> Frame {
    let head = SyncFiles {
        files: files
            .iter()
            .map(|(path, size, content)| batch_file(path, *size, content))
            .collect(),
        raw: None,
    };
    Frame::from_message(&head, bytes::Bytes::from_static(body)).unwrap()
}

/// A pull whose small files come in one batch: each is checked on its
/// own. The honest file is committed; one whose content is not what its
/// digest says, one with a digest that is not one, one through the
/// user's link out of DST, one named `..`-wise out of DST, and one whose
/// name the user already has (sent as new) each fail and are reported
/// by name, and nothing outside DST changes.
#[test]
fn a_hostile_batch_fails_file_by_file_and_commits_only_verified_files() {
    let l = layout();
    let evil = Evil::start(move |_req, mut s| async move {
        let mut notes = Vec::new();
        read_receiver_list(&mut s, &mut notes).await;
        let mut bad_hash = batch_file("badhash", 4, b"evil");
        bad_hash.hash = "not a digest".into();
        let files = vec![
            batch_file("good", 4, b"good"),
            batch_file("wrong", 4, b"good"),
            bad_hash,
            batch_file("out/stolen", 4, b"evil"),
            batch_file("keep2", 4, b"evil"),
        ];
        let head = SyncFiles { files, raw: None };
        s.send(&head, b"goodevilevilevilevil").await.unwrap();
        let finish = SyncFinish {
            checked: 5,
            total_size: 20,
            source_errors: 0,
        };
        s.send(&finish, &[]).await.unwrap();
        while let Some(f) = next(&mut s, &mut notes).await {
            if f.op() == "sync_summary" {
                let sum: SyncSummary = f.parse().unwrap();
                notes.push(format!(
                    "summary failed={} sent={} literal={}",
                    sum.failed, sum.files_sent, sum.literal_bytes
                ));
                break;
            }
        }
        notes
    });
    let out = evil.sync(&["evil:src", p(&l.dst)]);
    let notes = evil.notes();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}\n{notes:?}");
    let failed = |path: &str, code: &str| {
        let want = format!("failed \"{path}\" \"{code}\"");
        assert!(notes.contains(&want), "{want} not in {notes:?}");
    };
    failed("wrong", "checksum_mismatch");
    failed("badhash", "bad_frame");
    for path in ["out/stolen", "keep2"] {
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with(&format!("failed \"{path}\""))),
            "{path} not refused: {notes:?}"
        );
    }
    assert!(
        notes.contains(&"summary failed=4 sent=1 literal=20".to_string()),
        "{notes:?}"
    );
    l.outside_untouched();
    assert_eq!(fs::read(l.dst.join("keep2")).unwrap(), KEEP);
    assert_eq!(fs::read(l.dst.join("good")).unwrap(), b"good");
    assert_eq!(
        names(&l.dst),
        ["good", "keep", "keep2", "out", "secretlink"]
    );
}

/// A hostile client pushing batches that do not describe their bodies:
/// sizes that do not add up, too many files, a file or a batch over the
/// bounds, a path out of DST or absolute, a path given twice. The server
/// refuses each batch whole with `bad_frame` and a message naming what
/// was wrong, writes nothing of it anywhere, and goes on serving: an
/// honest push afterwards succeeds.
#[test]
fn a_hostile_batch_ends_a_push_with_a_clear_error_and_the_server_goes_on() {
    use common::probe::RawConn;
    let server =
        TestServer::start_listening(&["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"], &[]);
    let big = SyncFiles::MAX_FILE;
    let many: Vec<(String, u64)> = (0..=SyncFiles::MAX_FILES)
        .map(|i| (format!("f{i}"), 0))
        .collect();
    let over: Vec<(String, u64)> = (0..5).map(|i| (format!("f{i}"), big)).collect();
    let own = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(p, n)| (p.to_string(), *n)).collect()
    };
    type Case<'a> = (&'a str, Vec<(String, u64)>, &'a [u8], &'a str);
    let cases: Vec<Case> = vec![
        (
            "sizes",
            own(&[("a", 2), ("b", 2)]),
            b"abcdef",
            "the body holds 6 bytes",
        ),
        ("count", many, b"", "257 files"),
        ("file", own(&[("a", big + 1)]), b"", "at most 262144"),
        ("total", over, b"", "at most 1048576"),
        ("climb", own(&[("../escaped", 6)]), b"abcdef", "../escaped"),
        (
            "deep",
            own(&[("d/../../escaped", 6)]),
            b"abcdef",
            "d/../../escaped",
        ),
        (
            "abs",
            own(&[("/tmp/escaped", 6)]),
            b"abcdef",
            "/tmp/escaped",
        ),
        (
            "twice",
            own(&[("a", 3), ("a", 3)]),
            b"abcdef",
            "appears twice",
        ),
    ];
    for (what, files, body, says) in cases {
        let mut c = RawConn::login(&server.urls[1], &server.key_file);
        let req = serde_json::json!({"op":"sync","path":format!("dst-{what}"),"push":true});
        c.send(&req).unwrap();
        assert_eq!(c.recv().unwrap()["op"], "sync_ready", "{what}");
        assert_eq!(c.recv().unwrap()["op"], "sync_root", "{what}");
        c.send(&serde_json::json!({"op":"sync_more"})).unwrap();
        let list = c.recv().unwrap();
        assert_eq!(
            (&list["op"], &list["done"]),
            (&"sync_list".into(), &true.into())
        );
        let head = SyncFiles {
            files: files.iter().map(|(p, n)| batch_file(p, *n, body)).collect(),
            raw: None,
        };
        let mut h = serde_json::to_value(&head).unwrap();
        h["op"] = "sync_files".into();
        h["len"] = body.len().into();
        c.send_raw(h.to_string().as_bytes(), body).unwrap();
        let answer = c.recv().expect("an error, not a silent close");
        assert_eq!(answer["op"], "error", "{what}: {answer}");
        assert_eq!(answer["code"], "bad_frame", "{what}: {answer}");
        let m = answer["message"].as_str().unwrap_or_default();
        assert!(m.contains("sync_files") && m.contains(says), "{what}: {m}");
        let dst = server.root.join(format!("dst-{what}"));
        assert!(names(&dst).is_empty(), "{what}: {:?}", names(&dst));
    }
    let mut root = names(&server.root);
    root.retain(|n| !n.starts_with("dst-"));
    assert!(root.is_empty(), "nothing beside the destinations: {root:?}");
    assert!(!Path::new("/tmp/escaped").exists());
    // The server goes on serving.
    let work = tempfile::tempdir().unwrap();
    fs::write(work.path().join("f"), b"honest").unwrap();
    let port = server.url().rsplit(':').next().unwrap().to_string();
    let mut cmd = server.client();
    cmd.args(["sync", "-p", &port, p(work.path()), "127.0.0.1:after"]);
    let o = run_bounded(cmd, LIMIT);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read(server.root.join("after/f")).unwrap(), b"honest");
}

/// What a hostile receiver answers a push with, after `sync_root`.
#[derive(Clone, Copy, Debug)]
enum Receiver {
    /// A list batch announcing 100 MiB once decompressed.
    HugeList,
    /// List batches nobody asked for, as fast as it can, before its root.
    FloodLists,
    /// Signatures nobody asked for.
    FloodSigs,
    /// A list naming `..`.
    Climbing,
    /// A list naming an absolute path.
    Absolute,
    /// A list out of order.
    Unsorted,
    /// A signature with chunk parameters that ask for tiny chunks.
    TinyChunks,
    /// Answers every list request but never the signature request.
    Silent,
    /// A signature body that is not made of 36-byte records.
    RaggedSig,
}

/// One list batch of `entries` (path, kind, size), as `sync_list` carries it.
fn batch(entries: &[(&str, Kind, u64)], done: bool) -> (SyncList, Vec<u8>) {
    let mut enc = ListEncoder::new();
    for (path, kind, size) in entries {
        enc.push(&Entry {
            path: (*path).into(),
            kind: *kind,
            mode: 0o644,
            mtime_ns: 0,
            size: *size,
            target: None,
            hash: None,
        });
    }
    let (z, raw) = enc.finish().unwrap();
    (
        SyncList {
            done,
            raw: raw as u32,
        },
        z,
    )
}

async fn hostile_receiver(how: Receiver, mut s: Session<'static>) -> Vec<String> {
    let mut notes = Vec::new();
    if let Receiver::FloodLists = how {
        let (head, body) = batch(&[], false);
        for _ in 0..200 {
            if s.send(&head, &body).await.is_err() {
                break;
            }
        }
    }
    // A receiver that does not take batches: the push sends file by file.
    let root = SyncRoot {
        mode: Some(0o755),
        mtime_ns: Some(0),
        files: false,
    };
    let _ = s.send(&root, &[]).await;
    let list = |entries: &[(&str, Kind, u64)]| batch(entries, true);
    match how {
        Receiver::FloodLists => {}
        Receiver::FloodSigs => {
            let sig = SyncSig {
                missing: true,
                ..SyncSig::default()
            };
            for _ in 0..200 {
                if s.send(&sig, &[]).await.is_err() {
                    break;
                }
            }
        }
        _ => {
            let f = next(&mut s, &mut notes).await.unwrap();
            assert_eq!(f.op(), "sync_more");
            let (head, body) = match how {
                Receiver::HugeList => (
                    SyncList {
                        done: false,
                        raw: 100 << 20,
                    },
                    b"tiny".to_vec(),
                ),
                Receiver::Climbing => list(&[("../x", Kind::File, 1)]),
                Receiver::Absolute => list(&[("/etc/passwd", Kind::File, 1)]),
                Receiver::Unsorted => list(&[("b", Kind::File, 1), ("a", Kind::File, 1)]),
                _ => list(&[("f", Kind::File, 5)]),
            };
            s.send(&head, &body).await.unwrap();
            if matches!(
                how,
                Receiver::TinyChunks | Receiver::RaggedSig | Receiver::Silent
            ) {
                // The sender asks for list batches ahead and for
                // signatures before it needs them: every `sync_more` is
                // answered (after the last batch, with an empty one), as
                // an honest receiver does.
                loop {
                    let Some(f) = next(&mut s, &mut notes).await else {
                        break;
                    };
                    if f.op() == "sync_more" {
                        let (head, body) = list(&[]);
                        s.send(&head, &body).await.unwrap();
                    } else if f.op() != "sync_sig_req" {
                        notes.push(format!(
                            "{} {}",
                            f.op(),
                            String::from_utf8_lossy(f.header())
                        ));
                    }
                    if f.op() == "sync_sig_req" && !matches!(how, Receiver::Silent) {
                        break;
                    }
                }
                let (sig, body) = if matches!(how, Receiver::TinyChunks) {
                    let sig = SyncSig {
                        size: 5,
                        min: 1,
                        avg: 2,
                        max: 4,
                        missing: false,
                    };
                    (sig, vec![0u8; 36 * 3])
                } else {
                    let p = skiff_sync::ChunkParams::for_size(5);
                    let sig = SyncSig {
                        size: 5,
                        min: p.min,
                        avg: p.avg,
                        max: p.max,
                        missing: false,
                    };
                    (sig, vec![0u8; 35])
                };
                if !matches!(how, Receiver::Silent) {
                    s.send(&sig, &body).await.unwrap();
                }
            }
        }
    }
    drain(&mut s, &mut notes).await;
    notes
}

/// A push to a receiver that sends oversized, unsolicited, climbing,
/// absolute or unsorted lists, signatures with bad parameters, or never
/// answers a signature request: the client stops with a clear error
/// (exit 255) within its peer timeout (2 s here, through the debug-build
/// hook), tells the server why, and its source tree is left exactly as
/// it was.
#[test]
fn a_hostile_receiver_cannot_make_a_push_misbehave() {
    let cases = [
        (Receiver::HugeList, "destination list"),
        (Receiver::FloodLists, "not asked for"),
        (Receiver::FloodSigs, "not asked for"),
        (Receiver::Climbing, "not a plain relative path"),
        (Receiver::Absolute, "not a plain relative path"),
        (Receiver::Unsorted, "not sorted"),
        (Receiver::TinyChunks, "invalid chunk parameters"),
        (Receiver::RaggedSig, "36-byte records"),
        (Receiver::Silent, "timed out after 2s"),
    ];
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"0123456789").unwrap();
    fs::write(src.join("g"), b"g").unwrap();
    let before = names(&src);
    for (how, says) in cases {
        let evil = Evil::start(move |req, s| async move {
            assert!(req.push);
            hostile_receiver(how, s).await
        });
        let started = std::time::Instant::now();
        let out = evil.sync_env(
            &["--delete", p(&src), "evil:dst"],
            &[("SKIFF_TEST_SYNC_PEER_TIMEOUT_MS", "2000")],
        );
        let took = started.elapsed();
        let notes = evil.notes();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(255), "{how:?}: {err}\n{notes:?}");
        assert!(
            took < Duration::from_secs(20),
            "{how:?}: the push fails fast ({took:?})"
        );
        assert!(err.contains(says), "{how:?}: {says:?} not in {err}");
        assert!(
            notes.iter().any(|n| n.starts_with("error ")),
            "{how:?}: the server is told why: {notes:?}"
        );
        assert!(
            !notes
                .iter()
                .any(|n| n.starts_with("sync_delete") && (n.contains("../") || n.contains("/etc"))),
            "{how:?}: no delete is sent for a bad name: {notes:?}"
        );
        assert_eq!(names(&src), before, "{how:?}");
        assert_eq!(fs::read(src.join("f")).unwrap(), b"0123456789");
        assert_eq!(
            names(t.path()),
            ["src"],
            "{how:?}: nothing written beside SRC"
        );
    }
}

/// A pull whose batches meet the user's links at DST: a file sent as a
/// replacement over the user's link to a secret outside DST replaces the
/// link, never its target; a file through a link the server just made
/// (pointing inside DST) is refused; a new file over a link is a
/// conflict. Then a batch that is a zstd bomb (64 MiB of zeros
/// announcing 1 MiB) ends a pull with `bad_frame` before anything of it
/// is written. Nothing outside DST changes and no staged file is left.
#[test]
fn batches_of_a_hostile_sender_meet_the_users_links_and_bombs_safely() {
    let l = layout();
    let evil = Evil::start(move |_req, mut s| async move {
        let mut notes = Vec::new();
        read_receiver_list(&mut s, &mut notes).await;
        let m = SyncSymlink {
            path: "inner".into(),
            target: ".".into(),
            replace: false,
        };
        s.send(&m, &[]).await.unwrap();
        let mut over = batch_file("secretlink", 4, b"mine");
        over.replace = true;
        let files = vec![
            over,
            batch_file("inner/through", 4, b"evil"),
            batch_file("out", 4, b"evil"),
        ];
        let head = SyncFiles { files, raw: None };
        s.send(&head, b"mineevilevil").await.unwrap();
        let finish = SyncFinish {
            checked: 3,
            total_size: 12,
            source_errors: 0,
        };
        s.send(&finish, &[]).await.unwrap();
        drain(&mut s, &mut notes).await;
        notes
    });
    let out = evil.sync(&["evil:src", p(&l.dst)]);
    let notes = evil.notes();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}\n{notes:?}");
    for path in ["inner/through", "out"] {
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with(&format!("failed \"{path}\""))),
            "{path} not refused: {notes:?}"
        );
    }
    assert_eq!(fs::read(l.dst.join("secretlink")).unwrap(), b"mine");
    assert!(fs::symlink_metadata(l.dst.join("secretlink"))
        .unwrap()
        .is_file());
    assert_eq!(
        fs::read_link(l.dst.join("inner")).unwrap(),
        PathBuf::from(".")
    );
    assert!(!l.dst.join("through").exists());
    fs::remove_file(l.dst.join("inner")).unwrap();
    fs::remove_file(l.dst.join("secretlink")).unwrap();
    symlink("../outside/secret", l.dst.join("secretlink")).unwrap();
    l.outside_untouched();

    let evil = Evil::start(move |_req, mut s| async move {
        let mut notes = Vec::new();
        read_receiver_list(&mut s, &mut notes).await;
        let mut z = skiff_sync::compress::Compressor::new(1).unwrap();
        let bomb = z.compress(&vec![0u8; 64 << 20]).unwrap();
        let files = (0..4)
            .map(|i| batch_file(&format!("bomb{i}"), SyncFiles::MAX_FILE, b""))
            .collect();
        let head = SyncFiles {
            files,
            raw: Some(SyncFiles::MAX_BYTES as u32),
        };
        let _ = s.send(&head, &bomb).await;
        drain(&mut s, &mut notes).await;
        notes
    });
    let out = evil.sync(&["evil:src", p(&l.dst)]);
    let notes = evil.notes();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}\n{notes:?}");
    assert!(err.contains("sync_files"), "{err}");
    assert!(
        notes.iter().any(|n| n.starts_with("error ")),
        "the server is told why: {notes:?}"
    );
    l.outside_untouched();
    assert!(!names(&l.dst).iter().any(|n| n.starts_with("bomb")));
}
