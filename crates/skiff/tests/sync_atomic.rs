//! End-to-end tests of `skiff sync --atomic` through the real binary, in
//! both directions: a reader polling the destination never sees a mix of
//! the old and the new tree; a failed or killed sync leaves the old tree
//! and no shadow; a run with nothing to change does not exchange; what
//! `--atomic` cannot do is refused with a message saying why.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use cap_std::fs::{Dir, MetadataExt as _};
use common::*;

/// Files in the polled tree; each holds the same generation marker.
const FILES: usize = 120;

fn remote(path: &str) -> String {
    format!("127.0.0.1:{path}")
}

/// Writes generation `g` of the tree: every file says `gen g`, in two
/// directories, with an mtime of its own per generation.
fn write_gen(dir: &Path, g: u32) {
    for sub in ["a", "b/c"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for i in 0..FILES {
        let f = file_path(dir, i);
        fs::write(&f, format!("gen {g:04}")).unwrap();
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(1_600_000_000 + u64::from(g)))
            .unwrap();
    }
}

fn file_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(rel(i))
}

fn rel(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("a/f{i:03}")
    } else {
        format!("b/c/f{i:03}")
    }
}

/// Polls `dst` until `stop`: each pass opens the directory once and reads
/// every file through that handle, so a pass sees one tree. A pass must
/// find one generation only; files may be missing only from a tree that
/// was already removed (the old one, after the exchange). Returns the
/// generations seen, in order, and the number of passes.
fn poll(dst: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(Vec<String>, u64)> {
    std::thread::spawn(move || {
        let (mut seen, mut passes) = (Vec::<String>::new(), 0u64);
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
            let Ok(d) = Dir::open_ambient_dir(&dst, cap_std::ambient_authority()) else {
                panic!("{} is missing during the sync", dst.display());
            };
            let mut gens = std::collections::BTreeSet::new();
            let mut missing = 0;
            for i in 0..FILES {
                match d.read_to_string(rel(i)) {
                    Ok(s) => {
                        gens.insert(s);
                    }
                    Err(_) => missing += 1,
                }
            }
            assert!(gens.len() <= 1, "a reader saw a mix: {gens:?}");
            if missing > 0 {
                // Only the old tree, being removed after the exchange.
                let live = fs::metadata(&dst).map(|m| m.ino()).ok();
                let gone = d
                    .dir_metadata()
                    .map(|m| Some(m.ino()) != live)
                    .unwrap_or(true)
                    || gens.is_empty();
                assert!(gone, "{missing} files missing from a live tree ({gens:?})");
            }
            if let Some(g) = gens.into_iter().next() {
                if seen.last() != Some(&g) {
                    seen.push(g);
                }
            }
            passes += 1;
        }
        (seen, passes)
    })
}

/// Runs generations 2..=5 as atomic syncs with `run_gen` while a reader
/// polls `dst`; checks what the reader saw.
fn sync_gens_under_a_reader(dst: &Path, mut run_gen: impl FnMut(u32)) {
    let stop = Arc::new(AtomicBool::new(false));
    let reader = poll(dst.to_path_buf(), stop.clone());
    for g in 2..=5 {
        run_gen(g);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let (seen, passes) = reader.join().expect("the reader saw a mix");
    assert!(passes > 10, "the reader hardly ran ({passes} passes)");
    assert!(seen.len() >= 2, "the reader never saw a switch: {seen:?}");
    let nums: Vec<u32> = seen.iter().map(|s| s[4..].parse().unwrap()).collect();
    assert!(nums.windows(2).all(|w| w[0] < w[1]), "went back: {seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("gen 0005"));
}

#[test]
fn a_reader_never_sees_a_mix_pushing_or_pulling() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    // Push: the server's tree is exchanged.
    let src = work.path().join("src");
    write_gen(&src, 1);
    let r = sync_json(&server, &["--atomic", p(&src), &remote("dst")]);
    assert_eq!(r["atomic"], "exchanged", "{r}");
    let dst = server.root.join("dst");
    sync_gens_under_a_reader(&dst, |g| {
        write_gen(&src, g);
        let r = sync_json(&server, &["--atomic", p(&src), &remote("dst")]);
        assert_eq!(r["atomic"], "exchanged", "{r}");
        assert_eq!(r["files_sent"], FILES as u64, "{r}");
    });
    assert_eq!(names(&server.root), ["dst"], "no shadow left in the root");
    // Pull: the local tree is exchanged.
    write_gen(&src, 1);
    sync_json(&server, &[p(&src), &remote("dst")]);
    let local = work.path().join("local");
    sync_json(&server, &["--atomic", &remote("dst"), p(&local)]);
    sync_gens_under_a_reader(&local, |g| {
        write_gen(&src, g);
        sync_json(&server, &[p(&src), &remote("dst")]);
        let r = sync_json(&server, &["--atomic", &remote("dst"), p(&local)]);
        assert_eq!(r["atomic"], "exchanged", "{r}");
    });
    assert_eq!(names(work.path()), ["local", "src"], "no shadow left");
}

#[test]
fn a_second_run_does_not_exchange_and_hard_linked_files_are_not_changed_in_place() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_gen(&src, 1);
    let local = work.path().join("local");
    for (from, to) in [
        (p(&src).to_string(), remote("dst")),
        (remote("dst"), p(&local).to_string()),
    ] {
        let r = sync_json(&server, &["--atomic", &from, &to]);
        assert_eq!(r["atomic"], "exchanged", "{r}");
        let dst = if to == remote("dst") {
            server.root.join("dst")
        } else {
            local.clone()
        };
        let ino = fs::metadata(&dst).unwrap().ino();
        let r = sync_json(&server, &["--atomic", &from, &to]);
        assert_eq!(r["atomic"], "unchanged", "{r}");
        assert_eq!(r["files_sent"], 0, "{r}");
        assert_eq!(fs::metadata(&dst).unwrap().ino(), ino, "no exchange");
    }
    assert_eq!(names(work.path()), ["local", "src"]);
    // A mode-only change: the old tree's file (held open by a reader)
    // keeps its mode; the new tree has the new one.
    let held = fs::File::open(file_path(&local, 0)).unwrap();
    let old_mode = held.metadata().unwrap().mode() & 0o777;
    fs::set_permissions(
        file_path(&server.root.join("dst"), 0),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let r = sync_json(&server, &["--atomic", &remote("dst"), p(&local)]);
    assert_eq!(r["atomic"], "exchanged", "{r}");
    assert_eq!(held.metadata().unwrap().mode() & 0o777, old_mode);
    assert_eq!(
        fs::metadata(file_path(&local, 0)).unwrap().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_failed_sync_keeps_the_old_tree_and_leaves_no_shadow() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_gen(&src, 1);
    sync_json(&server, &["--atomic", p(&src), &remote("dst")]);
    write_gen(&src, 2);
    // Every file's first literal piece is corrupted after hashing: each
    // fails its check, so nothing is exchanged.
    let port = server.url().rsplit(':').next().unwrap().to_string();
    let o = server
        .client()
        .env("SKIFF_TEST_CORRUPT_CHUNK", "0")
        .args(["sync", "--atomic", "-p", &port, p(&src), &remote("dst")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("still the old tree"), "{}", stderr(&o));
    let dst = server.root.join("dst");
    for i in 0..FILES {
        assert_eq!(fs::read_to_string(file_path(&dst, i)).unwrap(), "gen 0001");
    }
    assert_eq!(names(&server.root), ["dst"], "no shadow left");
    let r = sync_json(&server, &["--atomic", p(&src), &remote("dst")]);
    assert_eq!(r["atomic"], "exchanged");
    assert_eq!(fs::read_to_string(file_path(&dst, 7)).unwrap(), "gen 0002");
}

#[test]
fn a_killed_client_leaves_the_old_tree_and_the_shadow_goes() {
    let mut server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_gen(&src, 1);
    let local = work.path().join("local");
    sync_json(&server, &["--atomic", p(&src), &remote("dst")]);
    sync_json(&server, &["--atomic", &remote("dst"), p(&local)]);
    write_gen(&src, 2);
    let port = server.url().rsplit(':').next().unwrap().to_string();
    // A push killed halfway: the server discards its shadow.
    let mut child = server
        .client()
        .env("SKIFF_TEST_CHUNK_DELAY_MS", "20")
        .args(["sync", "--atomic", "-p", &port, p(&src), &remote("dst")])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    let dst = server.root.join("dst");
    let deadline = Instant::now() + Duration::from_secs(20);
    while names(&server.root) != ["dst"] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        names(&server.root),
        ["dst"],
        "the server removed its shadow"
    );
    for i in 0..FILES {
        assert_eq!(fs::read_to_string(file_path(&dst, i)).unwrap(), "gen 0001");
    }
    // A pull killed halfway: the old tree stays, the shadow is left
    // beside it and removed by the next run.
    server.restart_with_env(&[("SKIFF_TEST_CHUNK_DELAY_MS", "20")]);
    sync_json(&server, &["--atomic", p(&src), &remote("dst")]);
    let port = server.url().rsplit(':').next().unwrap().to_string();
    let mut child = server
        .client()
        .args(["sync", "--atomic", "-p", &port, &remote("dst"), p(&local)])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    for i in 0..FILES {
        assert_eq!(
            fs::read_to_string(file_path(&local, i)).unwrap(),
            "gen 0001"
        );
    }
    server.restart();
    let r = sync_json(&server, &["--atomic", &remote("dst"), p(&local)]);
    assert_eq!(r["atomic"], "exchanged", "{r}");
    assert_eq!(
        names(work.path()),
        ["local", "src"],
        "the leftover shadow was removed"
    );
    assert_eq!(
        fs::read_to_string(file_path(&local, 3)).unwrap(),
        "gen 0002"
    );
}

#[test]
fn what_atomic_cannot_do_is_refused_with_a_reason() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_gen(&src, 1);
    let o = sync(&server, &["--atomic", p(&src), &remote("/")]);
    fails_with(&o, "server's root");
    fs::create_dir(work.path().join("real")).unwrap();
    std::os::unix::fs::symlink("real", work.path().join("link")).unwrap();
    sync_json(&server, &[p(&src), &remote("dst")]);
    let o = sync(
        &server,
        &["--atomic", &remote("dst"), p(&work.path().join("link"))],
    );
    fails_with(&o, "symlink");
    assert!(names(&work.path().join("real")).is_empty());
    // A missing DST is created.
    let r = sync_json(
        &server,
        &["--atomic", &remote("dst"), p(&work.path().join("new/dir"))],
    );
    assert_eq!(r["atomic"], "exchanged", "{r}");
    assert_eq!(
        fs::read_to_string(file_path(&work.path().join("new/dir"), 0)).unwrap(),
        "gen 0001"
    );
}
