//! Transfers onto a file system that fills up, for real: a 2 MiB tmpfs
//! mounted inside the served root (or the client's destination) for the
//! length of a test. Writes there fail with `ENOSPC` part way through a
//! file or a tree. What is reported done must be whole and in place,
//! what failed must be reported as failed and leave the old file (or
//! nothing), no staged or hidden file may stay, the receiver's threads
//! must end and its descriptors be released, and the server must go on
//! serving. Mounting needs root: without it (or with
//! `SKIFF_TEST_NO_MOUNT=1`) each test says so and passes; root that
//! cannot mount fails.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::probe::open_fds;
use common::*;

/// Longest any client run here may take.
const LIMIT: Duration = Duration::from_secs(60);

/// A small tmpfs mounted at a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes at `dir` (created); `None` when
    /// this process is not root, or is told it may not mount
    /// (`SKIFF_TEST_NO_MOUNT=1`). Root that cannot mount fails the test
    /// rather than skip it unseen.
    fn mount(dir: &Path, size: u64) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() || std::env::var_os("SKIFF_TEST_NO_MOUNT").is_some() {
            eprintln!("not root, or SKIFF_TEST_NO_MOUNT set: full-disk test skipped");
            return None;
        }
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                p(dir),
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "root could not mount a tmpfs at {}; set SKIFF_TEST_NO_MOUNT=1 where mounting is not allowed",
            dir.display()
        );
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every name under `dir`, recursively, relative to it.
fn all_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if e.file_type().unwrap().is_dir() {
                stack.push(path);
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}

/// After a sync of the 40 files `f00`..`f39` from `src` into `dst` that
/// ran out of room: every file in `dst` is whole, not all of them fit,
/// and the `--json` summary counts exactly those as sent and the rest as
/// failed.
fn whole_and_counted(what: &str, o: &std::process::Output, src: &Path, dst: &Path) {
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut present = 0;
    for i in 0..40 {
        let name = format!("f{i:02}");
        if dst.join(&name).exists() {
            assert_eq!(hash(&dst.join(&name)), hash(&src.join(&name)), "{name}");
            present += 1;
        }
    }
    eprintln!("{what}: {present} of 40 files stored");
    assert!(present < 40, "everything fit?");
    assert_eq!(summary["files_sent"].as_u64(), Some(present), "{summary}");
    assert_eq!(summary["failed"].as_u64(), Some(40 - present), "{summary}");
}

/// No hidden file of a transfer in progress anywhere under `dir`.
fn no_hidden(dir: &Path) {
    let hidden: Vec<String> = all_names(dir)
        .into_iter()
        .filter(|n| {
            let last = n.rsplit('/').next().unwrap_or(n);
            last.starts_with(".skiff") || last.ends_with(".part") || last.ends_with(".skiff-part")
        })
        .collect();
    assert!(hidden.is_empty(), "left behind: {hidden:?}");
}

/// Threads of `pid` with one of `names`.
fn threads_named(pid: u32, names: &[&str]) -> usize {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            names.contains(&comm.trim())
        })
        .count()
}

/// Waits (10 s at most) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The server let go of the transfer: no receiver thread left, no staged
/// file, descriptors back to what they were.
fn server_let_go(server: &TestServer, fds_before: usize) {
    eventually("the receiver's threads end", || {
        threads_named(server.pid(), &["tree-sync", "skiff-sync-disk"]) == 0
    });
    eventually("no staged file stays", || server.staged_files().is_empty());
    eventually("descriptors are released", || {
        open_fds(server.pid()) <= fds_before + 2
    });
}

const OLD: &[u8] = b"the old content, which a failed transfer must keep";

/// `put` of a 3 MiB file over an existing one on a 2 MiB file system:
/// a clear `no_space`, the old file intact, nothing hidden left, and the
/// server goes on.
#[test]
fn a_put_onto_a_full_disk_says_no_space_and_keeps_the_old_file() {
    let server = TestServer::start(&[]);
    let Some(_fs) = Tmpfs::mount(&server.root.join("small"), 2 << 20) else {
        return;
    };
    fs::write(server.root.join("small/f"), OLD).unwrap();
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big");
    make_file(&big, 3 << 20, 7);
    let fds = open_fds(server.pid());
    let url = server.url().to_string();
    let o = run(&server, &["put", "-f", &url, p(&big), "small/f"]);
    fails_with(&o, "no_space");
    assert_eq!(fs::read(server.root.join("small/f")).unwrap(), OLD);
    assert_eq!(all_names(&server.root.join("small")), ["f"]);
    server_let_go(&server, fds);
    let little = work.path().join("little");
    make_file(&little, 100 << 10, 8);
    ok(&run(&server, &["put", "-f", &url, p(&little), "small/f"]));
    assert_eq!(hash(&server.root.join("small/f")), hash(&little));
}

/// `get` of a 3 MiB file over an existing one on a full client file
/// system: `no_space` part way through the file, the old file intact,
/// no partial file left beside it.
#[test]
fn a_get_onto_a_full_disk_says_no_space_and_keeps_the_old_file() {
    let server = TestServer::start(&[]);
    make_file(&server.root.join("big"), 3 << 20, 9);
    let work = tempfile::tempdir().unwrap();
    let Some(_fs) = Tmpfs::mount(&work.path().join("small"), 2 << 20) else {
        return;
    };
    let dst = work.path().join("small/f");
    fs::write(&dst, OLD).unwrap();
    let url = server.url().to_string();
    let o = run(&server, &["get", "-f", &url, "big", p(&dst)]);
    fails_with(&o, "no_space");
    assert_eq!(fs::read(&dst).unwrap(), OLD);
    assert_eq!(all_names(&work.path().join("small")), ["f"]);
}

/// A tree of 40 files of 100 KiB (4 MB) uploaded with `put -r` onto a
/// 2 MiB file system: some files fit, the rest fail with `no_space`.
/// Every file reported stored is whole at its path, every other one is
/// absent, the failures are reported, nothing hidden is left, the tree
/// receiver's threads and descriptors are released, and the server goes
/// on serving.
#[test]
fn a_tree_onto_a_full_disk_reports_each_file_right() {
    let server = TestServer::start(&[]);
    let Some(_fs) = Tmpfs::mount(&server.root.join("small"), 2 << 20) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let top = work.path().join("top");
    for d in 0..4 {
        fs::create_dir_all(top.join(format!("d{d}"))).unwrap();
        for i in 0..10 {
            make_file(
                &top.join(format!("d{d}/f{i}")),
                100 << 10,
                (d * 10 + i) as u64,
            );
        }
    }
    let fds = open_fds(server.pid());
    let mut cmd = server.client();
    cmd.args(["put", "-r", "--json", server.url(), p(&top), "small/t"]);
    let o = run_bounded(cmd, LIMIT);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no_space"), "{err}");
    let dest = server.root.join("small/t");
    let mut present = 0;
    for d in 0..4 {
        for i in 0..10 {
            let rel = format!("d{d}/f{i}");
            if dest.join(&rel).exists() {
                assert_eq!(hash(&dest.join(&rel)), hash(&top.join(&rel)), "{rel}");
                present += 1;
            } else {
                assert!(
                    err.contains(&rel),
                    "{rel} is absent but not reported: {err}"
                );
            }
        }
    }
    eprintln!("put -r: {present} of 40 files stored");
    assert!(present > 0 && present < 40, "{present} files stored");
    let out = text(&o.stdout);
    let summary: serde_json::Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary: {out}"));
    let files = summary["files"].as_u64().unwrap_or(u64::MAX);
    assert_eq!(files, present, "files reported stored: {summary}");
    no_hidden(&server.root);
    server_let_go(&server, fds);
    // Room again: the same tree completes.
    fs::remove_dir_all(&dest).unwrap();
    let mut cmd = server.client();
    cmd.args(["put", "-r", server.url(), p(&top.join("d0")), "small/again"]);
    ok(&run_bounded(cmd, LIMIT));
    assert_eq!(all_names(&server.root.join("small/again")).len(), 10);
}

/// A push of 40 small new files (sent in `sync_files` batches) onto a
/// 2 MiB file system: each file is committed whole or reported failed,
/// the summary counts agree with the disk, nothing hidden or staged is
/// left, the disk thread ends, and a rerun with room completes.
#[test]
fn a_sync_onto_a_full_disk_commits_whole_files_and_reports_the_rest() {
    let server = TestServer::start(&[]);
    let Some(_fs) = Tmpfs::mount(&server.root.join("small"), 2 << 20) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        make_file(&src.join(format!("f{i:02}")), 100 << 10, 100 + i);
    }
    let fds = open_fds(server.pid());
    let o = sync(&server, &["--json", p(&src), "127.0.0.1:small/dst"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no_space"), "{err}");
    let dst = server.root.join("small/dst");
    whole_and_counted("sync", &o, &src, &dst);
    no_hidden(&server.root);
    server_let_go(&server, fds);
    // With room, a rerun completes what is missing.
    for i in 0..20 {
        let _ = fs::remove_file(dst.join(format!("f{i:02}")));
    }
    for i in 20..40 {
        fs::remove_file(src.join(format!("f{i:02}"))).unwrap();
    }
    let o = sync(&server, &["--delete", p(&src), "127.0.0.1:small/dst"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(all_names(&dst).len(), 20);
}

/// A pull of 40 small new files onto a full 2 MiB client file system
/// (the client is the receiver: unnamed files in DST, or staged beside
/// their destination): each file is whole or reported failed, the
/// summary agrees with the disk, and nothing hidden is left in DST.
#[test]
fn a_pull_onto_a_full_disk_commits_whole_files_and_reports_the_rest() {
    let server = TestServer::start(&[]);
    let src = server.root.join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        make_file(&src.join(format!("f{i:02}")), 100 << 10, 200 + i);
    }
    let work = tempfile::tempdir().unwrap();
    let Some(_fs) = Tmpfs::mount(&work.path().join("small"), 2 << 20) else {
        return;
    };
    let dst = work.path().join("small/dst");
    let o = sync(&server, &["--json", "127.0.0.1:src", p(&dst)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no_space"), "{err}");
    whole_and_counted("pull", &o, &src, &dst);
    no_hidden(&work.path().join("small"));
}
