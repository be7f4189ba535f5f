//! `sync_files` batches against the real server from a hostile client
//! speaking frames by hand (`probe::RawConn`): batches whose headers are
//! valid but whose files meet links, directories and lookalike names at
//! the destination, metadata out of range, decompression bombs, bodies
//! cut off by a closed connection, a flood of batches from a client that
//! never reads. The server must fail what it must file by file, never
//! write outside the destination, leave no staged or temporary file
//! behind, stay within its memory bound and go on serving.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::probe::{rss_kib, RawConn};
use common::*;
use serde_json::{json, Value};
use skiff_sync::compress::Compressor;
use skiff_wire::message::sync::{SyncBatchFile, SyncFiles};

/// Longest any client run here may take.
const LIMIT: Duration = Duration::from_secs(30);

/// A server with a frame-level (`tcp+plain`) listener beside TLS.
fn server() -> TestServer {
    TestServer::start_listening(&["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"], &[])
}

/// A logged-in push into `dst`, past the destination's list: the server
/// now waits for changes.
fn open_push(server: &TestServer, dst: &str) -> RawConn {
    let mut c = RawConn::login(&server.urls[1], &server.key_file);
    c.send(&json!({"op":"sync","path":dst,"push":true}))
        .unwrap();
    assert_eq!(c.recv().unwrap()["op"], "sync_ready");
    let root = c.recv().unwrap();
    assert_eq!(root["op"], "sync_root");
    assert_eq!(root["files"], true, "the server takes batches");
    for _ in 0..100 {
        c.send(&json!({"op":"sync_more"})).unwrap();
        let list = c.recv().unwrap();
        assert_eq!(list["op"], "sync_list", "{list}");
        if list["done"] == true {
            return c;
        }
    }
    panic!("the destination list did not end");
}

/// One file of a batch, hashed over `content`.
fn bf(path: &str, content: &[u8]) -> SyncBatchFile {
    SyncBatchFile {
        path: path.into(),
        size: content.len() as u64,
        mode: 0o644,
        mtime_ns: 1_600_000_000_000_000_000,
        hash: blake3::hash(content).to_hex().to_string(),
        replace: false,
    }
}

/// Sends a `sync_files` frame of `files` with `body` (`raw`: compressed).
fn send_batch(c: &mut RawConn, files: Vec<SyncBatchFile>, raw: Option<u32>, body: &[u8]) {
    let mut h = serde_json::to_value(SyncFiles { files, raw }).unwrap();
    h["op"] = "sync_files".into();
    h["len"] = body.len().into();
    c.send_raw(h.to_string().as_bytes(), body).unwrap();
}

/// What the server said after `sync_finish`: each failure (path, code),
/// and the summary or the error that ended the sync.
struct Answer {
    failed: Vec<(String, String)>,
    last: Value,
}

impl Answer {
    fn code(&self, path: &str) -> Option<&str> {
        self.failed
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, c)| c.as_str())
    }
}

/// Sends `sync_finish` and reads until the summary (or an error).
fn finish(c: &mut RawConn, checked: u64) -> Answer {
    c.send(&json!({"op":"sync_finish","checked":checked,"total_size":0,"source_errors":0}))
        .unwrap();
    read_answer(c)
}

fn read_answer(c: &mut RawConn) -> Answer {
    let mut failed = Vec::new();
    loop {
        let Some(v) = c.recv() else {
            return Answer {
                failed,
                last: Value::Null,
            };
        };
        match v["op"].as_str() {
            Some("sync_failed") => failed.push((
                v["path"].as_str().unwrap_or_default().to_string(),
                v["code"].as_str().unwrap_or_default().to_string(),
            )),
            _ => return Answer { failed, last: v },
        }
    }
}

/// Every name under `dir` (recursively, not following links) that is a
/// receiver's file in progress.
fn temp_names(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".skiff") || name.ends_with(".part") {
                out.push(p.clone());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    out
}

/// Nothing of a sync in progress is left: no staged file in the server's
/// staging area (once the server has let go of them), no temporary name
/// in the served root.
fn nothing_left(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let staged = server.staged_files();
        let temps = temp_names(&server.root);
        if staged.is_empty() && temps.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: staged {staged:?}, in the root {temps:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `skiff sync ARGS` against `server`, killed after [`LIMIT`].
fn bounded_sync(server: &TestServer, args: &[&str]) -> std::process::Output {
    let port = server.url().rsplit(':').next().unwrap().to_string();
    let mut cmd = server.client();
    cmd.args(["sync", "-p", &port]).args(args);
    run_bounded(cmd, LIMIT)
}

/// An honest push still works (the server goes on serving).
fn honest_push(server: &TestServer, name: &str) {
    let work = tempfile::tempdir().unwrap();
    fs::write(work.path().join("f"), b"honest").unwrap();
    let o = bounded_sync(server, &[p(work.path()), &format!("127.0.0.1:{name}")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::read(server.root.join(name).join("f")).unwrap(),
        b"honest"
    );
}

const KEEP: &[u8] = b"the destination's own content";

/// A batch with a valid header whose files meet what the destination
/// has: a directory link out of the served root, a file link to a secret
/// outside it, a non-empty and an empty directory, an existing file, a
/// file of the same batch used as a directory, and names that differ
/// only by Unicode normalization, carry a newline, or ask for every mode
/// bit and the extreme mtimes. Nothing outside the destination changes,
/// nothing is written through a link, each refusal is one file's
/// failure, the others are committed whole with their bits masked, and
/// the server goes on.
#[test]
fn a_batch_meeting_links_directories_and_odd_names_fails_file_by_file() {
    let server = server();
    let dst = server.root.join("dst");
    let outside = server.home.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir_all(dst.join("full")).unwrap();
    fs::create_dir_all(dst.join("empty")).unwrap();
    fs::create_dir_all(dst.join("empty2")).unwrap();
    fs::write(dst.join("full/keep"), KEEP).unwrap();
    fs::write(dst.join("old"), KEEP).unwrap();
    symlink(&outside, dst.join("outdir")).unwrap();
    symlink(outside.join("secret"), dst.join("outfile")).unwrap();
    symlink(outside.join("secret"), dst.join("outfile2")).unwrap();

    let mut c = open_push(&server, "dst");
    let nfc = "caf\u{e9}";
    let nfd = "cafe\u{301}";
    let mut files: Vec<(SyncBatchFile, &[u8])> = vec![
        (bf("outdir/stolen", b"evil"), b"evil"),
        (bf("outfile", b"evil"), b"evil"),
        (bf(nfc, b"nfc"), b"nfc"),
        (bf(nfd, b"nfd"), b"nfd"),
        (bf("line\nbreak", b"nl"), b"nl"),
        (bf("full", b"evil"), b"evil"),
        (bf("empty", b"evil"), b"evil"),
        (bf("old", b"evil"), b"evil"),
        (bf("x", b"x"), b"x"),
        (bf("x/y", b"y"), b"y"),
        (bf("modes", b"m"), b"m"),
        (bf("tmin", b"t"), b"t"),
        (bf("tmax", b"t"), b"t"),
    ];
    // Replacements: over a file link (the link goes, not its target)
    // and over an empty directory (replaced).
    for (path, content) in [("outfile2", &b"repl"[..]), ("empty2", b"r")] {
        let mut f = bf(path, content);
        f.replace = true;
        files.push((f, content));
    }
    for (f, _) in files.iter_mut() {
        match f.path.as_str() {
            "modes" => f.mode = u32::MAX,
            "tmin" => f.mtime_ns = i64::MIN,
            "tmax" => f.mtime_ns = i64::MAX,
            _ => {}
        }
    }
    // Over a non-empty directory (refused), in a batch of its own since
    // `full` is already in the first.
    let mut second = bf("full", b"r");
    second.replace = true;
    let body: Vec<u8> = files.iter().flat_map(|(_, b)| b.to_vec()).collect();
    let n = files.len() as u64;
    send_batch(
        &mut c,
        files.into_iter().map(|(f, _)| f).collect(),
        None,
        &body,
    );
    send_batch(&mut c, vec![second], None, b"r");
    let a = finish(&mut c, n + 1);
    assert_eq!(a.last["op"], "sync_summary", "{}", a.last);

    // Refused, one file each.
    for path in ["outdir/stolen", "outfile", "full", "empty", "old", "x/y"] {
        assert!(a.code(path).is_some(), "{path} not refused: {:?}", a.failed);
    }
    assert_eq!(a.code("old"), Some("conflict"), "{:?}", a.failed);
    // Nothing outside changed, nothing through a link.
    assert_eq!(names(&outside), ["secret"]);
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"secret");
    let mode = fs::metadata(outside.join("secret")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o600);
    assert_eq!(fs::read_link(dst.join("outdir")).unwrap(), outside);
    assert_eq!(
        fs::read_link(dst.join("outfile")).unwrap(),
        outside.join("secret")
    );
    // The destination's own things are kept.
    assert_eq!(fs::read(dst.join("full/keep")).unwrap(), KEEP);
    assert_eq!(fs::read(dst.join("old")).unwrap(), KEEP);
    assert!(fs::metadata(dst.join("empty")).unwrap().is_dir());
    // What was valid is whole, its bits masked.
    assert_eq!(fs::read(dst.join(nfc)).unwrap(), b"nfc");
    assert_eq!(fs::read(dst.join(nfd)).unwrap(), b"nfd");
    assert_eq!(fs::read(dst.join("line\nbreak")).unwrap(), b"nl");
    assert_eq!(fs::read(dst.join("x")).unwrap(), b"x");
    let m = fs::metadata(dst.join("modes")).unwrap();
    assert_eq!(
        m.mode() & 0o7777,
        0o777,
        "no set-uid, set-gid or sticky bit"
    );
    assert_eq!(fs::read(dst.join("outfile2")).unwrap(), b"repl");
    assert!(fs::symlink_metadata(dst.join("outfile2"))
        .unwrap()
        .is_file());
    assert_eq!(fs::read(dst.join("empty2")).unwrap(), b"r");
    // The extreme times are stored or refused, never anything else.
    for t in ["tmin", "tmax"] {
        match a.code(t) {
            Some(_) => assert!(!dst.join(t).exists(), "{t} failed but is there"),
            None => assert_eq!(fs::read(dst.join(t)).unwrap(), b"t"),
        }
    }
    let sent = a.last["files_sent"].as_u64().unwrap();
    let failed = a.last["failed"].as_u64().unwrap();
    assert_eq!(sent + failed, n + 1, "every file counted once: {}", a.last);
    assert_eq!(failed as usize, a.failed.len());
    drop(c);
    nothing_left(&server);
    honest_push(&server, "after");
}

/// Compressed batches that lie: a body that expands far beyond the
/// announced `raw` (a zstd bomb: 64 MiB of zeros in a few KiB), one
/// that expands to less, and one that is not zstd. Each ends the sync
/// with `bad_frame` at once, the server's memory does not grow by the
/// bomb's size (the output is bounded before it is allocated), nothing
/// is written, and the server goes on.
#[test]
fn a_zstd_bomb_in_a_batch_is_refused_before_it_expands() {
    let server = server();
    let mut z = Compressor::new(1).unwrap();
    let bomb = z.compress(&vec![0u8; 64 << 20]).unwrap();
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let short = z.compress(&[1u8; 1000]).unwrap();
    let quarter = SyncFiles::MAX_FILE as usize;
    let full: Vec<SyncBatchFile> = (0..4)
        .map(|i| bf(&format!("f{i}"), &vec![0u8; quarter]))
        .collect();
    let rss_before = rss_kib(server.pid());
    type Case<'a> = (&'a str, Vec<SyncBatchFile>, u32, &'a [u8]);
    let cases: Vec<Case> = vec![
        ("bomb", full.clone(), SyncFiles::MAX_BYTES as u32, &bomb),
        ("short", vec![bf("s", &[1u8; 2000])], 2000, &short),
        (
            "garbage",
            vec![bf("g", &[0u8; 100])],
            100,
            b"not zstd at all, really",
        ),
    ];
    for (what, files, raw, body) in cases {
        let mut c = open_push(&server, &format!("dst-{what}"));
        let started = Instant::now();
        send_batch(&mut c, files, Some(raw), body);
        let a = read_answer(&mut c);
        assert_eq!(a.last["op"], "error", "{what}: {}", a.last);
        assert_eq!(a.last["code"], "bad_frame", "{what}: {}", a.last);
        assert!(
            a.last["message"].as_str().unwrap().contains("sync_files"),
            "{what}: {}",
            a.last
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
        assert!(names(&server.root.join(format!("dst-{what}"))).is_empty());
    }
    let grew = rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(grew < 64 * 1024, "the server grew by {grew} KiB");
    nothing_left(&server);
    honest_push(&server, "after");
}

/// A batch whose header is valid but whose body never fully arrives (the
/// client goes away mid-body), after earlier batches were taken but not
/// yet committed: nothing of the unfinished sync is left anywhere (no
/// staged file, no temporary name, no half file), the files it had sent
/// whole are either absent or whole, and a rerun completes.
#[test]
fn a_client_gone_mid_batch_leaves_nothing_and_a_rerun_completes() {
    let server = server();
    let content = |i: usize| format!("file {i} ").repeat(100 + i).into_bytes();
    for round in 0..3 {
        let mut c = open_push(&server, "dst");
        // Two whole batches, then one cut off in its body.
        for b in 0..2 {
            let files: Vec<(String, Vec<u8>)> = (0..50)
                .map(|i| (format!("d{b}/f{i:02}"), content(i)))
                .collect();
            c.send(&json!({"op":"sync_mkdir","path":format!("d{b}"),"mode":0o755}))
                .unwrap();
            let body: Vec<u8> = files.iter().flat_map(|(_, d)| d.clone()).collect();
            let head = files.iter().map(|(p, d)| bf(p, d)).collect();
            send_batch(&mut c, head, None, &body);
        }
        let files: Vec<(String, Vec<u8>)> = (0..50)
            .map(|i| (format!("cut{i:02}"), content(i)))
            .collect();
        let body: Vec<u8> = files.iter().flat_map(|(_, d)| d.clone()).collect();
        let mut h = serde_json::to_value(SyncFiles {
            files: files.iter().map(|(p, d)| bf(p, d)).collect(),
            raw: None,
        })
        .unwrap();
        h["op"] = "sync_files".into();
        h["len"] = body.len().into();
        let header = h.to_string();
        let mut frame = (header.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(header.as_bytes());
        frame.extend_from_slice(&body[..body.len() / (round + 2)]);
        use std::io::Write;
        c.sock.write_all(&frame).unwrap();
        drop(c);
        nothing_left(&server);
        let dst = server.root.join("dst");
        let mut present = Vec::new();
        for b in 0..2 {
            let d = dst.join(format!("d{b}"));
            if !d.exists() {
                continue;
            }
            for n in names(&d) {
                let i: usize = n.trim_start_matches('f').parse().unwrap();
                assert_eq!(fs::read(d.join(&n)).unwrap(), content(i), "d{b}/{n}");
                present.push(n);
            }
        }
        assert!(
            names(&dst).iter().all(|n| !n.starts_with("cut")),
            "round {round}: nothing of the cut batch: {:?}",
            names(&dst)
        );
    }
    // A real push of the whole tree completes it.
    let work = tempfile::tempdir().unwrap();
    for b in 0..2 {
        fs::create_dir_all(work.path().join(format!("d{b}"))).unwrap();
        for i in 0..50 {
            fs::write(work.path().join(format!("d{b}/f{i:02}")), content(i)).unwrap();
        }
    }
    let o = bounded_sync(&server, &[p(work.path()), "127.0.0.1:dst"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for b in 0..2 {
        for i in 0..50 {
            let f = server.root.join(format!("dst/d{b}/f{i:02}"));
            assert_eq!(fs::read(&f).unwrap(), content(i));
        }
    }
    nothing_left(&server);
}

/// A client that floods the server with batches and never reads an
/// answer: full batches (1 MiB each) alternate with batches of 256 tiny
/// files, and every file fails its digest, so `sync_failed` answers pile
/// up unread until the server can no longer send them and stops reading.
/// Its memory stays bounded meanwhile, it serves another client while
/// the flooding one is stuck, and once that one goes away it lets go of
/// everything.
#[test]
fn a_flood_of_batches_from_a_client_that_never_reads_stays_bounded() {
    let server = server();
    let mut c = open_push(&server, "dst");
    c.sock
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let rss_before = rss_kib(server.pid());
    let per = SyncFiles::MAX_FILE;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut stuck = false;
    for b in 0..2000 {
        let (files, len): (Vec<SyncBatchFile>, usize) = if b % 2 == 0 {
            let files = (0..4)
                .map(|i| {
                    let mut f = bf(&format!("b{b}-{i}"), b"not the content");
                    f.size = per;
                    f
                })
                .collect();
            (files, 4 * per as usize)
        } else {
            let n = SyncFiles::MAX_FILES;
            let files = (0..n)
                .map(|i| {
                    let mut f = bf(&format!("b{b}-{i}"), b"not the content");
                    f.size = 1;
                    f
                })
                .collect();
            (files, n)
        };
        let mut h = serde_json::to_value(SyncFiles { files, raw: None }).unwrap();
        h["op"] = "sync_files".into();
        h["len"] = len.into();
        if c.send_raw(h.to_string().as_bytes(), &vec![b'x'; len])
            .is_err()
        {
            stuck = true;
            break;
        }
        sent += 1;
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let grew = rss_kib(server.pid()).saturating_sub(rss_before);
    eprintln!(
        "flood: {sent} batches in {:?}, stuck: {stuck}, server grew {grew} KiB",
        started.elapsed()
    );
    assert!(stuck, "the server took {sent} batches without stopping");
    assert!(grew < 96 * 1024, "the server grew by {grew} KiB");
    // Another client is served while this one is stuck.
    honest_push(&server, "beside");
    drop(c);
    nothing_left(&server);
    assert!(names(&server.root.join("dst")).is_empty());
    honest_push(&server, "after");
}

/// Two pushes at once into a destination whose every name is an empty
/// directory, each replacing them with its own version of the files
/// (forced deletes, then `sync_files` batches with `replace`: staged and
/// renamed by identity). Every path ends a whole file from one of the
/// two, nothing is left staged or hidden, and each push's failures are
/// reported; a third push then completes.
#[test]
fn two_pushes_replacing_directories_with_files_at_once_leave_whole_files() {
    let server = server();
    let dst = server.root.join("dst");
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let content = |tag: &str, i: usize| format!("{tag} {i} ").repeat(i % 40 + 1).into_bytes();
    for (dir, tag) in [(&a, "a"), (&b, "b")] {
        fs::create_dir_all(dir).unwrap();
        for i in 0..150 {
            fs::write(dir.join(format!("f{i:03}")), content(tag, i)).unwrap();
        }
    }
    for round in 0..2 {
        let _ = fs::remove_dir_all(&dst);
        for i in 0..150 {
            fs::create_dir_all(dst.join(format!("f{i:03}"))).unwrap();
        }
        let port = server.url().rsplit(':').next().unwrap().to_string();
        let spawn = |src: &Path| {
            server
                .client()
                .args(["sync", "-p", &port, p(src), "127.0.0.1:dst"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (ca, cb) = (spawn(&a), spawn(&b));
        let (oa, ob) = (
            ca.wait_with_output().unwrap(),
            cb.wait_with_output().unwrap(),
        );
        for o in [&oa, &ob] {
            let code = o.status.code();
            assert!(matches!(code, Some(0 | 1)), "round {round}: {}", stderr(o));
        }
        let (mut from_a, mut from_b) = (0, 0);
        for i in 0..150 {
            let f = dst.join(format!("f{i:03}"));
            let got = fs::read(&f).unwrap_or_else(|e| panic!("round {round}: f{i:03}: {e}"));
            if got == content("a", i) {
                from_a += 1;
            } else if got == content("b", i) {
                from_b += 1;
            } else {
                panic!("round {round}: f{i:03} is from neither: {:?}", text(&got));
            }
        }
        assert_eq!(from_a + from_b, 150);
        assert_eq!(names(&dst).len(), 150, "round {round}: {:?}", names(&dst));
        nothing_left(&server);
    }
    let o = bounded_sync(&server, &[p(&a), "127.0.0.1:dst"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..150 {
        assert_eq!(
            fs::read(dst.join(format!("f{i:03}"))).unwrap(),
            content("a", i)
        );
    }
}
