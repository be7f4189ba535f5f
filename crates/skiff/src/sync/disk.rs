//! The receiver's disk thread: one long-lived thread per sync that owns
//! the commit batch ([`super::batch`]) and assembles the small new files
//! itself, so a tree of small files costs no thread hand-over per file and
//! the session never waits for the disk between two files (as `put -r`'s
//! tree receiver, `transfer::tree_recv`).
//!
//! The role hands it, in the order the sender sent them: whole small files
//! ([`Job::Whole`]: not assembled against an old copy, at most
//! [`WHOLE_MAX`] bytes, collected in memory with their closing digest),
//! files assembled elsewhere and already verified ([`Job::Verified`]),
//! metadata changes, and at the end a flush. One queue for all of them
//! keeps the batch's order (a directory's metadata after its files). The
//! thread checks a whole file's size and whole-file BLAKE3 before
//! anything is visible under its name, writes it (a new one unnamed in its
//! directory, [`apply::whole_unnamed`]; one replacing what is there to a
//! staged file), and adds it to the batch,
//! which it commits when full and at the flush. What happened comes back
//! as [`Outcome`]s, which the role reports as they arrive.
//!
//! Jobs travel in groups ([`GROUP`] jobs or [`GROUP_BYTES`] at most),
//! sent when a group is full or the role has nothing else to read (a
//! group of fewer than [`SUBMIT_MIN`] jobs then waits [`LINGER`] for the
//! next message first), so a burst of small files wakes the thread once,
//! not once per file.
//!
//! Bounds: the queue holds at most [`QUEUE`] groups, each of at most
//! [`GROUP_BYTES`] plus one file of at most [`WHOLE_MAX`]. Outcomes travel on an unbounded channel, but
//! each job yields at most one, plus one per commit, and the role drains
//! them after every message it reads, so they never outnumber the jobs in
//! flight. Dropping the [`Disk`] closes the queue: the thread drops the
//! uncommitted batch (removing its staged files, its unnamed ones vanish
//! by themselves, so their destinations keep what they had; files the
//! last pass already put in place stay, complete and verified, but are
//! not reported) and ends; [`Disk::into_thread`] lets whoever must wait
//! for that (an atomic sync discarding its new tree) join it.

use bytes::Bytes;
use std::sync::Arc;

use cap_std::fs::{Dir, MetadataExt};
use skiff_sync::Hash;
use skiff_wire::message::sync::SyncFile;
use skiff_wire::{ErrorCode, ErrorMsg};
use tokio::sync::mpsc;

use super::apply::{self, Incoming, Stager, Step, Verified};
use super::batch::{Batch, Committed};
use super::SyncError;
use crate::transfer::tree_recv::Parent;

/// Groups of jobs queued for the disk thread.
pub const QUEUE: usize = 4;

/// Jobs per group, at most.
pub const GROUP: usize = 64;

/// A group is sent once its files hold this many bytes.
pub const GROUP_BYTES: u64 = 1024 * 1024;

/// A group smaller than this (in jobs) waits up to [`LINGER`] for more
/// when the role has nothing to read: each wake-up of the thread is a
/// hand-over between threads, which on a busy machine costs more than
/// the few files it carries.
pub const SUBMIT_MIN: usize = GROUP / 4;

/// How long a small group waits for more before it is sent anyway.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// The largest file the role collects in memory and hands over whole
/// (with [`QUEUE`] and [`GROUP_BYTES`], at most about 6 MiB wait for the
/// disk).
pub const WHOLE_MAX: u64 = 256 * 1024;

/// A new small file as the sender sent it: its announcement, its literal
/// data, and its closing digest, or why it cannot be stored (decided while
/// its steps arrived: bad data, a copy step with no old copy, more data
/// than announced, an aborted send).
pub struct Whole {
    /// The announcement.
    pub file: SyncFile,
    /// Its literal data, in order.
    pub data: Vec<Bytes>,
    /// The expected whole-file digest, or the failure to report.
    pub end: Result<Hash, ErrorMsg>,
}

/// What the disk thread is asked to do.
pub enum Job {
    /// Stage, verify and batch a whole small file.
    Whole(Whole),
    /// Batch a file verified elsewhere.
    Verified(Verified),
    /// Batch a mode and mtime change (`""`: the root).
    Meta {
        /// The path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Modification time.
        mtime_ns: i64,
    },
    /// Commit what the batch holds, then answer [`Outcome::Flushed`].
    Flush,
}

/// What the disk thread tells the role.
pub enum Outcome {
    /// A file that was not stored (its destination keeps what it had).
    Failed(String, ErrorMsg),
    /// A batch was committed.
    Committed(Committed),
    /// Everything queued before the flush is committed and reported.
    Flushed,
}

/// The role's end of the disk thread.
pub struct Disk {
    jobs: Option<mpsc::Sender<Vec<Job>>>,
    /// The group being gathered, and its files' bytes.
    group: Vec<Job>,
    group_bytes: u64,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Disk {
    /// Starts the disk thread for the tree at `root` (new files staged by
    /// `stager`), committing into `batch`.
    pub fn start(root: Dir, stager: Stager, batch: Batch) -> Result<Disk, SyncError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("skiff-sync-disk".into())
            .spawn(move || run(root, stager, batch, rx, out_tx))
            .map_err(|e| SyncError::Local(format!("starting the disk thread: {e}")))?;
        Ok(Disk {
            jobs: Some(tx),
            group: Vec::new(),
            group_bytes: 0,
            outcomes: out_rx,
            thread: Some(thread),
        })
    }

    /// Adds a job to the group, which is sent when full (waits while the
    /// queue is full) or by [`submit`](Self::submit).
    pub async fn push(&mut self, job: Job) -> Result<(), SyncError> {
        if let Job::Whole(w) = &job {
            self.group_bytes += w.file.size;
        }
        let flush = matches!(job, Job::Flush);
        self.group.push(job);
        if flush || self.group.len() >= GROUP || self.group_bytes >= GROUP_BYTES {
            self.submit().await?;
        }
        Ok(())
    }

    /// Whether the group gathered so far is too small to wake the thread
    /// for while more may be on its way (fewer than [`SUBMIT_MIN`] jobs).
    pub fn should_linger(&self) -> bool {
        !self.group.is_empty()
            && self.group.len() < SUBMIT_MIN
            && self.group_bytes < GROUP_BYTES / 4
    }

    /// Sends the group gathered so far (waits while the queue is full).
    pub async fn submit(&mut self) -> Result<(), SyncError> {
        if self.group.is_empty() {
            return Ok(());
        }
        let Some(tx) = &self.jobs else {
            return Err(gone());
        };
        let group = std::mem::take(&mut self.group);
        self.group_bytes = 0;
        tx.send(group).await.map_err(|_| gone())
    }

    /// An outcome that has already arrived, if any.
    pub fn try_outcome(&mut self) -> Option<Outcome> {
        self.outcomes.try_recv().ok()
    }

    /// The next outcome (the thread never waits for the role, so this
    /// only waits for the disk).
    pub async fn outcome(&mut self) -> Result<Outcome, SyncError> {
        self.outcomes.recv().await.ok_or_else(gone)
    }

    /// Closes the queue and hands over the thread, which ends once it has
    /// dropped what it had not committed.
    pub fn into_thread(mut self) -> Option<std::thread::JoinHandle<()>> {
        self.jobs = None;
        self.thread.take()
    }
}

fn gone() -> SyncError {
    SyncError::Local("the disk thread ended".into())
}

/// The disk thread: jobs in order until the queue closes.
fn run(
    root: Dir,
    stager: Stager,
    mut batch: Batch,
    mut jobs: mpsc::Receiver<Vec<Job>>,
    out: mpsc::UnboundedSender<Outcome>,
) {
    let mut place = Place::default();
    while let Some(group) = jobs.blocking_recv() {
        for job in group {
            one(job, &root, &stager, &mut place, &mut batch, &out);
        }
    }
    // The queue closed before a flush: `batch` is dropped uncommitted.
}

/// Does one job.
fn one(
    job: Job,
    root: &Dir,
    stager: &Stager,
    place: &mut Place,
    batch: &mut Batch,
    out: &mpsc::UnboundedSender<Outcome>,
) {
    let report = |done: Committed| {
        let _ = out.send(Outcome::Committed(done));
    };
    {
        match job {
            Job::Whole(w) => {
                let path = w.file.path.clone();
                match assemble(root, stager, place, w) {
                    Ok(v) => batch.add_file(v),
                    Err(e) => {
                        let _ = out.send(Outcome::Failed(path, e));
                    }
                }
            }
            Job::Verified(v) => batch.add_file(v),
            Job::Meta {
                path,
                mode,
                mtime_ns,
            } => batch.add_meta(path, mode, mtime_ns),
            Job::Flush => {
                if !batch.is_empty() {
                    report(batch.flush());
                }
                let _ = out.send(Outcome::Flushed);
                return;
            }
        }
        if batch.is_full() {
            report(batch.commit());
        }
    }
}

/// Directories the disk thread keeps open for the files that follow: the
/// last file's parent (files arrive grouped by directory; one handle
/// shared by all its files, with its device) and the staging area's
/// directory of the user; and whether the destination's file system
/// takes unnamed files.
struct Place {
    parent: Option<(String, Parent)>,
    user_dir: Option<Dir>,
    unnamed: bool,
}

impl Default for Place {
    fn default() -> Place {
        Place {
            parent: None,
            user_dir: None,
            unnamed: true,
        }
    }
}

impl Place {
    /// The parent directory of `path` (opened component by component,
    /// never through a symlink, as [`apply::open_parent`]) and its last
    /// component (a clone of the shared handle: no system call).
    fn parent<'a>(&mut self, root: &Dir, path: &'a str) -> Result<(Parent, &'a str), ErrorMsg> {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let cached = matches!(&self.parent, Some((p, _)) if p == parent);
        if cached {
            skiff_sync::entry::check_path(path).map_err(|e| {
                crate::transfer::errors::msg(ErrorCode::Invalid, path, &e.to_string())
            })?;
        } else {
            self.parent = None;
            let (d, _) = apply::open_parent(root, path)?;
            let dev = d
                .dir_metadata()
                .map_err(|e| crate::transfer::errors::to_msg(&e, path))?
                .dev();
            let p = Parent {
                dir: Arc::new(d),
                dev,
            };
            self.parent = Some((parent.to_string(), p));
        }
        match &self.parent {
            Some((_, p)) => Ok((p.clone(), name)),
            None => Err(ErrorMsg::new(ErrorCode::Internal, "parent directory")),
        }
    }
}

/// Checks a whole file and readies it for the batch: verified, or the
/// failure to report. A new file (nothing at its destination when the
/// sender listed it) is received unnamed where the file system allows
/// ([`apply::whole_unnamed`]); any other is staged and assembled.
fn assemble(
    root: &Dir,
    stager: &Stager,
    place: &mut Place,
    w: Whole,
) -> Result<Verified, ErrorMsg> {
    let hash = w.end?;
    let f = w.file;
    let new = !f.update && !f.replace;
    let (parent, name) = place.parent(root, &f.path)?;
    if new && place.unnamed {
        let v = apply::whole_unnamed(
            &parent, name, &f.path, &w.data, f.size, hash, f.mode, f.mtime_ns,
        )?;
        match v {
            Some(v) => return Ok(v),
            None => place.unnamed = false,
        }
    }
    let dir = parent
        .dir
        .try_clone()
        .map_err(|e| crate::transfer::errors::to_msg(&e, &f.path))?;
    let mut inc = Incoming::start_in(
        dir,
        name,
        stager,
        &mut place.user_dir,
        &f.path,
        false,
        f.size,
    )?;
    for d in w.data {
        inc.step(Step::Literal(d))?;
    }
    inc.verify(hash, f.mode, f.mtime_ns)
}

/// The failure of a whole file whose steps broke the rules.
pub fn bad(path: &str, why: &str) -> ErrorMsg {
    ErrorMsg::new(ErrorCode::BadFrame, format!("{path}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::batch::tests::names;
    use cap_std::ambient_authority;

    fn whole(path: &str, data: &'static [u8], hash: Hash) -> Job {
        Job::Whole(Whole {
            file: SyncFile {
                path: path.into(),
                size: data.len() as u64,
                mode: 0o644,
                mtime_ns: 1_000_000_000,
                update: false,
                replace: false,
            },
            data: vec![Bytes::from_static(data)],
            end: Ok(hash),
        })
    }

    #[tokio::test]
    async fn files_appear_only_at_the_flush_and_bad_ones_never() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let batch = Batch::new(root.try_clone().unwrap());
        let mut disk = Disk::start(root, Stager::Beside, batch).unwrap();
        disk.push(whole("a", b"aaa", Hash::of(b"aaa")))
            .await
            .unwrap();
        disk.push(whole("b", b"bbb", Hash::of(b"not b")))
            .await
            .unwrap();
        disk.push(Job::Meta {
            path: String::new(),
            mode: 0o750,
            mtime_ns: 2_000_000_000,
        })
        .await
        .unwrap();
        disk.submit().await.unwrap();
        match disk.outcome().await.unwrap() {
            Outcome::Failed(p, e) => {
                assert_eq!(p, "b");
                assert_eq!(e.code, ErrorCode::ChecksumMismatch);
            }
            _ => panic!("the bad file is reported first"),
        }
        disk.push(Job::Flush).await.unwrap();
        match disk.outcome().await.unwrap() {
            Outcome::Committed(c) => assert_eq!(c.files, 1),
            _ => panic!("a commit"),
        }
        assert!(matches!(disk.outcome().await.unwrap(), Outcome::Flushed));
        assert_eq!(names(t.path()), ["a"]);
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(t.path()).unwrap();
        assert_eq!((md.mode() & 0o777, md.mtime()), (0o750, 2));
    }

    #[tokio::test]
    async fn a_closed_queue_leaves_nothing_behind() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"old").unwrap();
        let root = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let batch = Batch::new(root.try_clone().unwrap());
        let mut disk = Disk::start(root, Stager::Beside, batch).unwrap();
        disk.push(whole("a", b"new", Hash::of(b"new")))
            .await
            .unwrap();
        disk.push(whole("b", b"bbb", Hash::of(b"bbb")))
            .await
            .unwrap();
        disk.submit().await.unwrap();
        disk.into_thread().unwrap().join().unwrap();
        assert_eq!(names(t.path()), ["a"]);
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"old");
    }
}
