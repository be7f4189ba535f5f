//! End-to-end tests of `skiff sync` through the real binary: both
//! directions, idempotence, deltas, deletes, excludes, dry runs, type
//! changes, symlinks that would escape, corruption and interruption.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// What a tree holds, for comparing two trees byte for byte and by
/// metadata: (path, kind, mode, mtime of files, content or link target).
fn snapshot(root: &Path) -> Vec<(String, char, u32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p).unwrap();
            let name = r.to_string_lossy().into_owned();
            if md.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.push((name, 'l', 0, 0, t.to_string_lossy().as_bytes().to_vec()));
            } else if md.is_dir() {
                out.push((name, 'd', md.mode() & 0o777, md.mtime(), Vec::new()));
                stack.push(r);
            } else {
                let ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
                out.push((name, 'f', md.mode() & 0o777, ns, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let names =
        |s: &[(String, char, u32, i64, Vec<u8>)]| s.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&sa), names(&sb), "paths differ");
    for (x, y) in sa.iter().zip(&sb) {
        assert_eq!(x, y, "{} differs", x.0);
    }
}

/// A small tree with nested directories, modes, mtimes and a link.
fn make_tree(dir: &Path) {
    fs::create_dir_all(dir.join("a/b/c")).unwrap();
    fs::create_dir_all(dir.join("empty")).unwrap();
    fs::write(dir.join("top.txt"), "top\n").unwrap();
    fs::write(dir.join("a/one"), "one").unwrap();
    fs::write(dir.join("a/b/c/deep"), vec![7u8; 100_000]).unwrap();
    make_file(&dir.join("a/big"), 3 << 20, 5);
    fs::write(dir.join("exec.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(dir.join("exec.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(dir.join("a/b"), fs::Permissions::from_mode(0o700)).unwrap();
    symlink("../top.txt", dir.join("a/link")).unwrap();
    symlink("b/c", dir.join("a/dirlink")).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(dir.join("a/one"))
        .unwrap()
        .set_modified(old)
        .unwrap();
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

fn remote(path: &str) -> String {
    format!("127.0.0.1:{path}")
}

#[test]
fn push_and_pull_mirror_the_tree_and_a_second_run_sends_nothing() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    // Push, trailing slash on the source.
    let first = sync_json(&server, &[&format!("{}/", p(&src)), &remote("dst")]);
    assert_eq!(num(&first, "failed"), 0);
    assert_eq!(num(&first, "files_sent"), 5);
    assert_same_tree(&src, &server.root.join("dst"));
    // Again, without the slash on the source, with one on DST: nothing.
    let again = sync_json(&server, &[p(&src), &remote("dst/")]);
    assert_eq!(num(&again, "files_sent"), 0);
    assert_eq!(num(&again, "files_changed"), 0);
    assert_eq!(num(&again, "literal_bytes"), 0);
    assert!(num(&again, "bytes_sent") < 2000, "{again}");
    // Pull into a directory that does not exist yet.
    let back = work.path().join("back/here");
    let pulled = sync_json(&server, &[&remote("dst"), p(&back)]);
    assert_eq!(num(&pulled, "files_sent"), 5);
    assert_same_tree(&src, &back);
    let again = sync_json(&server, &[&remote("dst/"), &format!("{}/", p(&back))]);
    assert_eq!(num(&again, "files_sent"), 0);
    assert_eq!(num(&again, "files_changed"), 0);
    // With -c nothing differs either.
    let sums = sync_json(&server, &["-c", p(&src), &remote("dst")]);
    assert_eq!(num(&sums, "files_changed"), 0);
    // No staged file is left anywhere.
    assert!(
        server.staged_files().is_empty(),
        "{:?}",
        server.staged_files()
    );
    assert!(!snapshot(&back).iter().any(|e| e.0.contains(".skiff")));
}

#[test]
fn a_small_insertion_sends_a_small_delta_both_ways() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    let size = 16u64 << 20;
    make_file(&src.join("big"), size, 9);
    sync_json(&server, &[p(&src), &remote("d")]);
    let local = work.path().join("local");
    sync_json(&server, &[&remote("d"), p(&local)]);
    // Insert 1000 bytes in the middle.
    let mut data = fs::read(src.join("big")).unwrap();
    data.splice(8 << 20..8 << 20, std::iter::repeat_n(b'x', 1000));
    fs::write(src.join("big"), &data).unwrap();
    let push = sync_json(&server, &[p(&src), &remote("d")]);
    assert_eq!(num(&push, "files_sent"), 1);
    assert!(num(&push, "literal_bytes") < size / 50, "{push}");
    assert!(num(&push, "matched_bytes") > size * 9 / 10, "{push}");
    assert!(num(&push, "bytes_sent") < size / 40, "{push}");
    assert_eq!(fs::read(server.root.join("d/big")).unwrap(), data);
    // The pull side gets the same delta.
    let pull = sync_json(&server, &[&remote("d"), p(&local)]);
    assert!(num(&pull, "literal_bytes") < size / 50, "{pull}");
    assert!(num(&pull, "bytes_received") < size / 40, "{pull}");
    assert_eq!(fs::read(local.join("big")).unwrap(), data);
    // Truncate and grow are deltas too.
    data.truncate(10 << 20);
    data.extend_from_slice(b"tail");
    fs::write(src.join("big"), &data).unwrap();
    let cut = sync_json(&server, &["-z", p(&src), &remote("d")]);
    assert!(num(&cut, "literal_bytes") < 1 << 20, "{cut}");
    assert_eq!(fs::read(server.root.join("d/big")).unwrap(), data);
}

#[test]
fn delete_dry_run_and_excludes() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    sync_json(&server, &[p(&src), &remote("m")]);
    let dst = server.root.join("m");
    fs::write(dst.join("extra"), "x").unwrap();
    fs::create_dir_all(dst.join("olddir/sub")).unwrap();
    fs::write(dst.join("olddir/sub/f"), "x").unwrap();
    fs::write(dst.join("keep.log"), "excluded, so never deleted").unwrap();
    fs::remove_file(src.join("top.txt")).unwrap();
    fs::write(src.join("a/one"), "changed").unwrap();
    // A dry run lists every change and makes none.
    let before = snapshot(&dst);
    let o = sync(
        &server,
        &[
            "-n",
            "--delete",
            "--exclude",
            "*.log",
            p(&src),
            &remote("m"),
        ],
    );
    ok(&o);
    let listed = String::from_utf8_lossy(&o.stdout);
    for line in [
        "- top.txt",
        "~ a/one",
        "- extra",
        "- olddir/",
        "- olddir/sub/f",
    ] {
        assert!(
            listed.lines().any(|l| l == line),
            "{line:?} not in:\n{listed}"
        );
    }
    assert!(!listed.contains("keep.log"), "{listed}");
    assert_eq!(snapshot(&dst), before, "the dry run changed something");
    // Without --delete nothing is removed.
    sync_json(&server, &["--exclude", "*.log", p(&src), &remote("m")]);
    assert!(dst.join("extra").exists());
    // With it, everything extraneous goes except the excluded file.
    let del = sync_json(
        &server,
        &["--delete", "--exclude", "*.log", p(&src), &remote("m")],
    );
    assert_eq!(num(&del, "deleted"), 5, "{del}");
    assert!(dst.join("keep.log").exists());
    fs::remove_file(dst.join("keep.log")).unwrap();
    assert_same_tree(&src, &dst);
    // Excluded source files are not sent; .skiffignore works as well.
    fs::write(src.join("secret.key"), "k").unwrap();
    fs::write(src.join(".skiffignore"), "*.tmp\n").unwrap();
    fs::write(src.join("a/x.tmp"), "t").unwrap();
    sync_json(&server, &["--exclude", "*.key", p(&src), &remote("m")]);
    assert!(!dst.join("secret.key").exists());
    assert!(!dst.join("a/x.tmp").exists());
    assert!(dst.join(".skiffignore").exists());
}

#[test]
fn files_become_directories_and_back() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("x")).unwrap();
    fs::write(src.join("x/in"), "in").unwrap();
    fs::write(src.join("y"), "y").unwrap();
    symlink("y", src.join("z")).unwrap();
    sync_json(&server, &[p(&src), &remote("t")]);
    fs::remove_dir_all(src.join("x")).unwrap();
    fs::write(src.join("x"), "now a file").unwrap();
    fs::remove_file(src.join("y")).unwrap();
    fs::create_dir(src.join("y")).unwrap();
    fs::write(src.join("y/f"), "f").unwrap();
    fs::remove_file(src.join("z")).unwrap();
    fs::write(src.join("z"), "was a link").unwrap();
    let r = sync_json(&server, &[p(&src), &remote("t")]);
    assert_eq!(num(&r, "failed"), 0, "{r}");
    assert_same_tree(&src, &server.root.join("t"));
    let local = work.path().join("local");
    sync_json(&server, &[&remote("t"), p(&local)]);
    assert_same_tree(&src, &local);
}

#[test]
fn symlinks_that_would_escape_are_refused_and_the_rest_is_synced() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("ok"), "fine").unwrap();
    symlink("../../../etc", src.join("sub/out")).unwrap();
    symlink("/etc/passwd", src.join("abs")).unwrap();
    symlink("..", src.join("sub/up")).unwrap();
    symlink("sub/up/..", src.join("chain")).unwrap();
    let o = sync(&server, &[p(&src), &remote("s")]);
    fails_with(&o, "path_escape");
    let dst = server.root.join("s");
    assert_eq!(fs::read_to_string(dst.join("ok")).unwrap(), "fine");
    for bad in ["sub/out", "abs", "chain"] {
        assert!(
            fs::symlink_metadata(dst.join(bad)).is_err(),
            "{bad} was created"
        );
    }
    assert_eq!(fs::read_link(dst.join("sub/up")).unwrap(), Path::new(".."));
    // Pulling: a link the server's tree holds that would lead out of the
    // local destination is not created there either.
    symlink("../../outside", server.root.join("s/sub/evil")).unwrap();
    let local = work.path().join("local");
    let o = sync(&server, &[&remote("s"), p(&local)]);
    fails_with(&o, "path_escape");
    assert!(fs::symlink_metadata(local.join("sub/evil")).is_err());
    assert_eq!(fs::read_to_string(local.join("ok")).unwrap(), "fine");
}

#[test]
fn a_corrupted_chunk_is_caught_and_the_old_file_kept() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), vec![1u8; 300_000]).unwrap();
    sync_json(&server, &[p(&src), &remote("c")]);
    make_file(&src.join("f"), 2 << 20, 3);
    let port = server.url().rsplit(':').next().unwrap().to_string();
    let o = server
        .client()
        .env("SKIFF_TEST_CORRUPT_CHUNK", "0")
        .args(["sync", "-p", &port, p(&src), &remote("c")])
        .output()
        .unwrap();
    fails_with(&o, "checksum_mismatch");
    assert_eq!(
        fs::read(server.root.join("c/f")).unwrap(),
        vec![1u8; 300_000]
    );
    assert!(server.staged_files().is_empty());
    sync_json(&server, &[p(&src), &remote("c")]);
    assert_eq!(hash(&server.root.join("c/f")), hash(&src.join("f")));
}

#[test]
fn a_killed_sync_leaves_old_or_new_files_and_completes_on_rerun() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..4 {
        fs::write(src.join(format!("f{i}")), format!("old {i}")).unwrap();
    }
    sync_json(&server, &[p(&src), &remote("k")]);
    for i in 0..4 {
        make_file(&src.join(format!("f{i}")), 4 << 20, i);
    }
    let mut child = spawn_sync(&server, 100, p(&src), &remote("k"));
    std::thread::sleep(Duration::from_millis(600));
    child.kill().unwrap();
    child.wait().unwrap();
    let dst = server.root.join("k");
    for i in 0..4 {
        let got = fs::read(dst.join(format!("f{i}"))).unwrap();
        let new = fs::read(src.join(format!("f{i}"))).unwrap();
        assert!(
            got == format!("old {i}").as_bytes() || got == new,
            "f{i} is neither old nor new ({} bytes)",
            got.len()
        );
    }
    let names: Vec<_> = fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "something else appeared: {names:?}");
    let r = sync_json(&server, &[p(&src), &remote("k")]);
    assert_eq!(num(&r, "failed"), 0);
    assert_same_tree(&src, &dst);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    for args in [
        vec![p(work.path()), p(work.path())],
        vec!["127.0.0.1:a", "127.0.0.1:b"],
        vec!["-", "127.0.0.1:b"],
    ] {
        let o = sync(&server, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    // A missing local source, or a remote source that is a file: exit 1.
    let o = sync(&server, &[p(&work.path().join("nope")), &remote("x")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    fs::write(server.root.join("file"), "f").unwrap();
    let o = sync(&server, &[&remote("file"), p(&work.path().join("l"))]);
    fails_with(&o, "not a directory");
    let o = sync(&server, &[&remote("../up"), p(&work.path().join("l"))]);
    fails_with(&o, "outside");
}

#[test]
fn a_read_only_user_may_pull_but_not_push() {
    let dir = tempfile::tempdir().unwrap();
    let reader = skiff::keys::UserKey::generate("reader");
    let users = dir.path().join("users");
    fs::write(&users, format!("{} read-only\n", reader.to_line())).unwrap();
    fs::set_permissions(&users, fs::Permissions::from_mode(0o600)).unwrap();
    let key = dir.path().join("reader.key");
    fs::write(&key, format!("{}\n", reader.to_line())).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let server = TestServer::start(&["--users", p(&users)]);
    fs::create_dir_all(server.root.join("pub/sub")).unwrap();
    fs::write(server.root.join("pub/sub/f"), "readable").unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("new"), "must not land").unwrap();
    let as_reader = |args: &[&str]| {
        let mut all = vec!["--key", p(&key)];
        all.extend_from_slice(args);
        sync(&server, &all)
    };
    let o = as_reader(&[p(&src), "reader@127.0.0.1:pub"]);
    fails_with(&o, "read-only");
    let o = as_reader(&["--delete", p(&src), "reader@127.0.0.1:fresh"]);
    fails_with(&o, "read-only");
    assert!(!server.root.join("pub/new").exists());
    assert!(!server.root.join("fresh").exists());
    assert!(server.root.join("pub/sub/f").exists());
    assert!(server.staged_files().is_empty());
    // A dry run changes nothing, so it is allowed; so is a pull.
    let o = as_reader(&["-n", p(&src), "reader@127.0.0.1:pub"]);
    ok(&o);
    assert!(!server.root.join("pub/new").exists());
    let local = dir.path().join("local");
    let o = as_reader(&["reader@127.0.0.1:pub", p(&local)]);
    ok(&o);
    assert_eq!(fs::read_to_string(local.join("sub/f")).unwrap(), "readable");
}

#[test]
fn a_killed_pull_leaves_no_partial_file_and_the_rerun_cleans_up() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = server.root.join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..3 {
        make_file(&src.join(format!("f{i}")), 4 << 20, 20 + i);
    }
    let local = work.path().join("local");
    fs::create_dir(&local).unwrap();
    fs::write(local.join("f0"), "old").unwrap();
    // The server sends slowly (its own hook); kill the client halfway.
    let mut server = server;
    server.restart_with_env(&[("SKIFF_TEST_CHUNK_DELAY_MS", "100")]);
    let port = server.url().rsplit(':').next().unwrap().to_string();
    let mut child = server
        .client()
        .args(["sync", "-p", &port, &remote("src"), p(&local)])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    let got = fs::read(local.join("f0")).unwrap();
    assert!(got == b"old" || got == fs::read(src.join("f0")).unwrap());
    let staged = fs::read_dir(&local)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".part")
        })
        .count();
    assert!(staged <= 1, "at most the one file in progress is staged");
    server.restart();
    let r = sync_json(&server, &[&remote("src"), p(&local)]);
    assert_eq!(num(&r, "failed"), 0);
    assert_same_tree(&src, &local);
}

/// Small files are committed in batches (one durability pass per batch):
/// a tree of several batches arrives whole in both directions, and a
/// sender killed halfway leaves only whole files at their paths (the
/// verified but uncommitted rest of its batch is removed), with nothing
/// else visible; the rerun completes.
#[test]
fn small_files_are_committed_in_batches_and_a_killed_sender_leaves_only_whole_files() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    for d in 0..3 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for i in 0..110 {
            fs::write(
                src.join(format!("d{d}/f{i:03}")),
                format!("file {d}/{i}\n").repeat(i + 1),
            )
            .unwrap();
        }
    }
    let r = sync_json(&server, &[p(&src), &remote("b")]);
    assert_eq!(num(&r, "files_sent"), 330);
    assert_same_tree(&src, &server.root.join("b"));
    let back = work.path().join("back");
    let r = sync_json(&server, &[&remote("b"), p(&back)]);
    assert_eq!(num(&r, "files_sent"), 330);
    assert_same_tree(&src, &back);

    // Killed halfway through a push of 330 new files.
    let mut child = spawn_sync(&server, 6, p(&src), &remote("k"));
    std::thread::sleep(Duration::from_millis(1200));
    child.kill().unwrap();
    child.wait().unwrap();
    let dst = server.root.join("k");
    let mut present = 0;
    for d in 0..3 {
        let Ok(names) = fs::read_dir(dst.join(format!("d{d}"))) else {
            continue;
        };
        for n in names {
            let n = n.unwrap().file_name().into_string().unwrap();
            let rel = format!("d{d}/{n}");
            let want = fs::read(src.join(&rel))
                .unwrap_or_else(|_| panic!("{rel} is not a source file (a partial file?)"));
            assert_eq!(
                fs::read(dst.join(&rel)).unwrap(),
                want,
                "{rel} is not whole"
            );
            present += 1;
        }
    }
    assert!(present < 330, "the kill came too late to test anything");
    let r = sync_json(&server, &[p(&src), &remote("k")]);
    assert_eq!(num(&r, "failed"), 0);
    assert_same_tree(&src, &dst);
}

/// `--delete` of more paths than are held in memory (the rest wait in a
/// temporary file): every one is removed, in an order that empties each
/// directory before removing it, and an excluded path is kept.
#[test]
fn delete_of_thousands_of_paths_spills_and_removes_them_all() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    for d in 0..5 {
        fs::create_dir_all(src.join(format!("gone{d}"))).unwrap();
        for i in 0..900 {
            fs::write(src.join(format!("gone{d}/f{i:04}")), b"").unwrap();
        }
    }
    fs::write(src.join("keep"), b"k").unwrap();
    fs::write(src.join("gone0/precious.log"), b"p").unwrap();
    sync_json(&server, &[p(&src), &remote("del")]);
    for d in 0..5 {
        fs::remove_dir_all(src.join(format!("gone{d}"))).unwrap();
    }
    let r = sync_json(
        &server,
        &["--delete", "--exclude", "*.log", p(&src), &remote("del")],
    );
    // 4,500 files and 4 directories; gone0 still holds the excluded log.
    assert_eq!(num(&r, "deleted"), 4504, "{r}");
    assert_eq!(num(&r, "failed"), 0, "{r}");
    let dst = server.root.join("del");
    let mut names: Vec<_> = fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["gone0", "keep"]);
    let left: Vec<_> = fs::read_dir(dst.join("gone0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["precious.log"]);
}

/// Many changed files, small and large, between new directories and
/// metadata changes: their signatures are asked for ahead (several in
/// flight), each answer goes to its own file, the order of directories
/// and their contents holds, and every file travels as a small delta,
/// in both directions.
#[test]
fn many_changed_files_each_get_their_own_delta_both_ways() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let mut files = Vec::new();
    for d in 0..5 {
        for f in 0..8 {
            let path = src.join(format!("d{d}/sub{}/f{f}", f % 2));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            // Every fourth file is large enough to be cut while its
            // signature is on its way.
            let size = if f % 4 == 0 {
                (2 << 20) + f * 1000
            } else {
                20_000 + f * 100
            };
            make_file(&path, size, d * 100 + f);
            files.push(path);
        }
    }
    sync_json(&server, &[p(&src), &remote("m")]);
    let local = work.path().join("local");
    sync_json(&server, &[&remote("m"), p(&local)]);
    let total: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    // Change every file in the middle, add a directory between them and
    // change a directory's mode.
    for (i, f) in files.iter().enumerate() {
        let mut data = fs::read(f).unwrap();
        let mid = data.len() / 2;
        data.splice(mid..mid, random_bytes(50, i as u64 + 1000));
        fs::write(f, data).unwrap();
    }
    fs::create_dir_all(src.join("d2/new/deeper")).unwrap();
    fs::write(src.join("d2/new/deeper/n"), "new").unwrap();
    fs::set_permissions(src.join("d3/sub1"), fs::Permissions::from_mode(0o750)).unwrap();
    let push = sync_json(&server, &[p(&src), &remote("m")]);
    assert_eq!(num(&push, "failed"), 0, "{push}");
    assert_eq!(num(&push, "files_sent"), files.len() as u64 + 1, "{push}");
    assert!(num(&push, "literal_bytes") < total / 5, "{push}");
    assert!(num(&push, "matched_bytes") > total / 2, "{push}");
    assert_same_tree(&src, &server.root.join("m"));
    let pull = sync_json(&server, &[&remote("m"), p(&local)]);
    assert_eq!(num(&pull, "failed"), 0, "{pull}");
    assert!(num(&pull, "literal_bytes") < total / 5, "{pull}");
    assert_same_tree(&src, &local);
    let again = sync_json(&server, &[p(&src), &remote("m")]);
    assert_eq!(num(&again, "files_changed"), 0, "{again}");
}

/// A large file's first copy leaves its signature in the server's cache
/// (cut from the bytes as they arrived, SYNC.md "The receiver's signature
/// cache"), and the first delta against it sends only what changed and
/// rebuilds the file exactly; one killed half way leaves nothing.
#[test]
fn a_first_copy_leaves_its_signature_in_the_cache() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    let size = 24usize << 20;
    let mut data = random_bytes(size, 31);
    fs::write(src.join("big"), &data).unwrap();
    // A first copy killed half way (its signature being cut) leaves no
    // file, no staged file and no cache entry, and the server goes on.
    let mut child = spawn_sync(&server, 50, p(&src), &remote("d"));
    std::thread::sleep(Duration::from_millis(400));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!server.root.join("d/big").exists());
    // The server notices the closed connection and removes its staged
    // file within moments.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.staged_files().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        server.staged_files().is_empty(),
        "{:?}",
        server.staged_files()
    );
    let cache = server.staging_dir().with_file_name("sigcache");
    assert!(names(&cache).is_empty(), "{:?}", names(&cache));

    let r = sync_json(&server, &[p(&src), &remote("d")]);
    assert_eq!(num(&r, "failed"), 0, "{r}");
    let md = fs::metadata(server.root.join("d/big")).unwrap();
    let entry = cache.join(format!("{:x}-{:x}.sig", md.dev(), md.ino()));
    assert!(entry.exists(), "{:?}", names(&cache));

    data[5 << 20..(5 << 20) + 50_000].copy_from_slice(&random_bytes(50_000, 32));
    data.splice(17 << 20..17 << 20, random_bytes(30_000, 33));
    fs::write(src.join("big"), &data).unwrap();
    let r = sync_json(&server, &[p(&src), &remote("d")]);
    assert_eq!(num(&r, "failed"), 0, "{r}");
    assert_eq!(fs::read(server.root.join("d/big")).unwrap(), data);
    assert!(num(&r, "literal_bytes") < size as u64 / 20, "{r}");
}

/// The server keeps the signature of a large file it committed
/// (`STATE_DIR/sigcache`, SYNC.md "The receiver's signature cache"), and
/// a file changed behind the cache's back, with its size and mtime put
/// back as `touch -d` does, is cut again: the next sync still makes it
/// byte-identical instead of copying stale ranges.
#[test]
fn a_file_changed_behind_the_signature_cache_still_syncs_exactly() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    let size = 20u64 << 20;
    // Random throughout (make_file repeats a block, whose chunks would
    // match at other offsets and hide a stale copy).
    fs::write(src.join("big"), random_bytes(size as usize, 21)).unwrap();
    let rewrite = |at: usize, seed: u64| {
        let mut data = fs::read(src.join("big")).unwrap();
        data[at..at + 100_000].copy_from_slice(&random_bytes(100_000, seed));
        fs::write(src.join("big"), &data).unwrap();
    };
    let push = || {
        let r = sync_json(&server, &[p(&src), &remote("d")]);
        assert_eq!(num(&r, "failed"), 0, "{r}");
        assert_eq!(
            fs::read(src.join("big")).unwrap(),
            fs::read(server.root.join("d/big")).unwrap()
        );
        r
    };
    push();
    rewrite(3 << 20, 22);
    push();
    // The committed file's signature is in the cache, under its inode.
    let cache = server.staging_dir().with_file_name("sigcache");
    let md = fs::metadata(server.root.join("d/big")).unwrap();
    let entry = cache.join(format!("{:x}-{:x}.sig", md.dev(), md.ino()));
    assert!(entry.exists(), "{:?}", names(&cache));
    // Used: a second delta against the cached signature.
    rewrite(11 << 20, 23);
    let r = push();
    assert!(num(&r, "literal_bytes") < size / 20, "{r}");

    // Rewrite the destination in place, same size, and put its mtime back.
    let dst = server.root.join("d/big");
    let before = fs::metadata(&dst).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let mut data = fs::read(&dst).unwrap();
    data[15 << 20..(15 << 20) + 4096].copy_from_slice(&[0u8; 4096]);
    fs::write(&dst, &data).unwrap();
    fs::File::options()
        .write(true)
        .open(&dst)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    let after = fs::metadata(&dst).unwrap();
    assert_eq!(
        (after.len(), after.mtime_nsec()),
        (before.len(), before.mtime_nsec())
    );
    assert_eq!(after.ino(), before.ino());
    rewrite(1 << 20, 24);
    push();
}

/// A client pulling a large file keeps its signature too
/// (`~/.cache/skiff/sigcache`), so the next pull of that file after a
/// change is a delta against the cached chunks, byte-identical.
#[test]
fn a_pulled_large_file_leaves_its_signature_in_the_client_cache() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let size = 20usize << 20;
    let mut data = random_bytes(size, 41);
    fs::create_dir(server.root.join("s")).unwrap();
    fs::write(server.root.join("s/big"), &data).unwrap();
    let dst = work.path().join("pulled");
    let pull = || {
        let r = sync_json(&server, &[&remote("s"), p(&dst)]);
        assert_eq!(num(&r, "failed"), 0, "{r}");
        assert_eq!(
            fs::read(dst.join("big")).unwrap(),
            fs::read(server.root.join("s/big")).unwrap()
        );
        r
    };
    pull();
    let cache = server.home.path().join(".cache/skiff/sigcache");
    let md = fs::metadata(dst.join("big")).unwrap();
    let entry = cache.join(format!("{:x}-{:x}.sig", md.dev(), md.ino()));
    assert!(entry.exists(), "{:?}", names(&cache));
    data[7 << 20..(7 << 20) + 60_000].copy_from_slice(&random_bytes(60_000, 42));
    fs::write(server.root.join("s/big"), &data).unwrap();
    let r = pull();
    assert!(num(&r, "literal_bytes") < size as u64 / 20, "{r}");
    // The committed delta left the new copy's signature in turn.
    let md = fs::metadata(dst.join("big")).unwrap();
    assert!(cache
        .join(format!("{:x}-{:x}.sig", md.dev(), md.ino()))
        .exists());

    // The local copy changed behind the cache's back, in place, with its
    // size and mtime put back: the next pull cuts it again and still
    // makes it byte-identical instead of copying stale ranges.
    let local = dst.join("big");
    let before = fs::metadata(&local).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let mut mine = fs::read(&local).unwrap();
    mine[12 << 20..(12 << 20) + 4096].copy_from_slice(&[0u8; 4096]);
    fs::write(&local, &mine).unwrap();
    fs::File::options()
        .write(true)
        .open(&local)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    let after = fs::metadata(&local).unwrap();
    assert_eq!(
        (after.ino(), after.len(), after.mtime_nsec()),
        (before.ino(), before.len(), before.mtime_nsec())
    );
    data[3 << 20..(3 << 20) + 60_000].copy_from_slice(&random_bytes(60_000, 43));
    fs::write(server.root.join("s/big"), &data).unwrap();
    pull();
}

/// A tree of `dirs` x `files` small files whose content says `tag`.
fn tagged_tree(dir: &Path, dirs: usize, files: usize, tag: &str) {
    for d in 0..dirs {
        fs::create_dir_all(dir.join(format!("d{d}"))).unwrap();
        for i in 0..files {
            fs::write(
                dir.join(format!("d{d}/f{i:03}")),
                format!("{tag} {d}/{i}\n").repeat(i % 50 + 1),
            )
            .unwrap();
        }
    }
}

/// Starts `skiff sync SRC DST` in `server`'s environment, each piece of
/// file data delayed by `delay_ms` (debug builds).
fn spawn_sync(server: &TestServer, delay_ms: u32, src: &str, dst: &str) -> std::process::Child {
    let port = server.url().rsplit(':').next().unwrap().to_string();
    server
        .client()
        .env("SKIFF_TEST_CHUNK_DELAY_MS", delay_ms.to_string())
        .args(["sync", "--json", "-p", &port, src, dst])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Two pushes of different versions of one tree into the same new
/// destination at once: both see nothing there, so each new file is
/// linked into place by whichever commits it first and the other is told
/// (a conflict; nothing replaced). Every file is whole and from one of
/// the two trees, nothing temporary is left, and a rerun of either
/// converges.
#[test]
fn two_concurrent_pushes_of_one_new_tree_leave_every_file_whole_from_one_of_them() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    tagged_tree(&a, 3, 120, "version a");
    tagged_tree(&b, 3, 120, "version b");
    let ca = spawn_sync(&server, 1, &format!("{}/", p(&a)), &remote("both"));
    let cb = spawn_sync(&server, 1, &format!("{}/", p(&b)), &remote("both"));
    let (oa, ob) = (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    );
    let dst = server.root.join("both");
    let (mut from_a, mut from_b) = (0, 0);
    for d in 0..3 {
        let names = names(&dst.join(format!("d{d}")));
        assert_eq!(names.len(), 120, "d{d}: {names:?}");
        for n in names {
            let rel = format!("d{d}/{n}");
            let got = fs::read(dst.join(&rel)).unwrap();
            if got == fs::read(a.join(&rel)).unwrap() {
                from_a += 1;
            } else if got == fs::read(b.join(&rel)).unwrap() {
                from_b += 1;
            } else {
                panic!("{rel} is from neither tree: {:?}", text(&got));
            }
        }
    }
    assert_eq!(from_a + from_b, 360);
    // What a push lost is reported, as a change of the destination.
    for (o, lost) in [(&oa, from_b), (&ob, from_a)] {
        let err = stderr(o);
        let conflicts = err.matches("changed while the sync ran").count();
        assert!(
            conflicts <= lost,
            "{conflicts} conflicts, {lost} files lost: {err}"
        );
        if o.status.success() {
            assert_eq!(conflicts, 0, "{err}");
        }
    }
    assert!(
        server.staged_files().is_empty(),
        "{:?}",
        server.staged_files()
    );
    // A rerun makes the destination version a exactly.
    let r = sync_json(&server, &[&format!("{}/", p(&a)), &remote("both")]);
    assert_eq!(num(&r, "failed"), 0);
    assert_same_tree(&a, &dst);
}

/// A file that appears at the destination while a sync that found
/// nothing there is running is never replaced: the sync reports the
/// conflict and goes on; its other files arrive whole. Both directions.
#[test]
fn a_file_created_at_the_destination_during_a_sync_is_not_replaced() {
    let server = TestServer::start(&[]);
    // The pull's sender is the server: its data is delayed there.
    let slow = TestServer::start_with_env(
        &["tcp://127.0.0.1:0"],
        &[],
        &[("SKIFF_TEST_CHUNK_DELAY_MS", "4")],
    );
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tagged_tree(&src, 3, 110, "source");
    tagged_tree(&slow.root.join("p"), 3, 110, "source");
    let pulled = work.path().join("pulled");
    let cases: [(&TestServer, String, String, PathBuf); 2] = [
        (
            &server,
            p(&src).to_string(),
            remote("p"),
            server.root.join("p"),
        ),
        (&slow, remote("p"), p(&pulled).to_string(), pulled.clone()),
    ];
    for (i, (srv, from, to, dst)) in cases.into_iter().enumerate() {
        let child = spawn_sync(srv, 4, &from, &to);
        // Once the first directory is there the (empty) destination list
        // has been merged; the last directory's files come some 220 files
        // of 4 ms each later.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !dst.join("d0").exists() {
            assert!(std::time::Instant::now() < deadline, "case {i}: no d0");
            std::thread::sleep(Duration::from_millis(5));
        }
        fs::create_dir_all(dst.join("d2")).unwrap();
        for f in 100..110 {
            fs::write(dst.join(format!("d2/f{f:03}")), b"theirs").unwrap();
        }
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        let conflicts = err.matches("changed while the sync ran").count();
        assert_eq!(conflicts, 10, "case {i}: {err}");
        assert!(!o.status.success(), "case {i}: failures make the exit code");
        for f in 100..110 {
            let rel = format!("d2/f{f:03}");
            assert_eq!(
                fs::read(dst.join(&rel)).unwrap(),
                b"theirs",
                "case {i}: {rel}"
            );
        }
        let mut whole = 0;
        for d in 0..3 {
            for n in names(&dst.join(format!("d{d}"))) {
                let rel = format!("d{d}/{n}");
                let want = fs::read(src.join(&rel)).unwrap_or_else(|_| panic!("{rel}?"));
                if d < 2 || n.as_str() < "f100" {
                    assert_eq!(fs::read(dst.join(&rel)).unwrap(), want, "case {i}: {rel}");
                    whole += 1;
                }
            }
        }
        assert_eq!(whole, 320, "case {i}");
        assert!(srv.staged_files().is_empty(), "{:?}", srv.staged_files());
    }
}

/// Small new files travel many to a `sync_files` frame: with `-z` a
/// batch of compressible and random files arrives byte for byte, is
/// counted as before (every file sent, literal bytes their sizes), and
/// only the compressible part shrinks on the wire; without `-z` the wire
/// carries the literal bytes as they are. Both directions.
#[test]
fn a_compressed_batch_of_small_files_arrives_whole_both_ways() {
    let server = TestServer::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("text")).unwrap();
    fs::create_dir_all(src.join("random")).unwrap();
    let line = b"the same line of text, again and again, compresses well\n";
    let mut text_bytes = 0u64;
    let mut random_bytes = 0u64;
    for i in 0..300u64 {
        let t = line.repeat(20 + i as usize % 50);
        text_bytes += t.len() as u64;
        fs::write(src.join(format!("text/t{i:03}")), &t).unwrap();
        let size = 1000 + i * 37;
        random_bytes += size;
        make_file(&src.join(format!("random/r{i:03}")), size, i + 1);
    }
    // One empty file and one at the batch's per-file limit.
    fs::write(src.join("empty"), b"").unwrap();
    make_file(&src.join("edge"), 256 * 1024, 99);
    let total = text_bytes + random_bytes + 256 * 1024;
    let z = sync_json(&server, &["-z", p(&src), &remote("z")]);
    assert_eq!(num(&z, "failed"), 0, "{z}");
    assert_eq!(num(&z, "files_sent"), 602, "{z}");
    assert_eq!(num(&z, "literal_bytes"), total, "{z}");
    let wire = num(&z, "literal_wire_bytes");
    assert!(wire < total - text_bytes / 2, "text shrinks: {z}");
    assert!(wire > random_bytes, "random data does not: {z}");
    assert_same_tree(&src, &server.root.join("z"));
    let plain = sync_json(&server, &[p(&src), &remote("plain")]);
    assert_eq!(num(&plain, "files_sent"), 602, "{plain}");
    assert_eq!(num(&plain, "literal_wire_bytes"), total, "{plain}");
    assert_same_tree(&src, &server.root.join("plain"));
    // The pull direction, compressed.
    let back = work.path().join("back");
    let pulled = sync_json(&server, &["-z", &remote("z"), p(&back)]);
    assert_eq!(num(&pulled, "files_sent"), 602, "{pulled}");
    assert_eq!(num(&pulled, "literal_bytes"), total, "{pulled}");
    assert!(num(&pulled, "literal_wire_bytes") < total - text_bytes / 2);
    assert_same_tree(&src, &back);
    let again = sync_json(&server, &["-z", p(&src), &remote("z")]);
    assert_eq!(num(&again, "files_sent"), 0, "{again}");
}
