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
//! thread stages a whole file, checks its size and whole-file BLAKE3
//! before anything is visible under its name, and adds it to the batch,
//! which it commits when full and at the flush. What happened comes back
//! as [`Outcome`]s, which the role reports as they arrive.
//!
//! Bounds: the queue holds at most [`QUEUE`] jobs of at most
//! [`WHOLE_MAX`] bytes each. Outcomes travel on an unbounded channel, but
//! each job yields at most one, plus one per commit, and the role drains
//! them after every message it reads, so they never outnumber the jobs in
//! flight. Dropping the [`Disk`] closes the queue: the thread drops the
//! uncommitted batch (removing its staged files, so every destination
//! keeps what it had) and ends; [`Disk::into_thread`] lets whoever must
//! wait for that (an atomic sync discarding its new tree) join it.

use bytes::Bytes;
use cap_std::fs::Dir;
use skiff_sync::Hash;
use skiff_wire::message::sync::SyncFile;
use skiff_wire::{ErrorCode, ErrorMsg};
use tokio::sync::mpsc;

use super::apply::{Incoming, Stager, Step, Verified};
use super::batch::{Batch, Committed};
use super::SyncError;

/// Jobs queued for the disk thread.
pub const QUEUE: usize = 64;

/// The largest file the role collects in memory and hands over whole
/// (with [`QUEUE`], at most 16 MiB wait for the disk).
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
    jobs: Option<mpsc::Sender<Job>>,
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
            outcomes: out_rx,
            thread: Some(thread),
        })
    }

    /// Queues a job (waits while the queue is full).
    pub async fn send(&self, job: Job) -> Result<(), SyncError> {
        let Some(tx) = &self.jobs else {
            return Err(gone());
        };
        tx.send(job).await.map_err(|_| gone())
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
    mut jobs: mpsc::Receiver<Job>,
    out: mpsc::UnboundedSender<Outcome>,
) {
    let commit = |batch: &mut Batch| {
        if !batch.is_empty() {
            let _ = out.send(Outcome::Committed(batch.commit()));
        }
    };
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::Whole(w) => {
                let path = w.file.path.clone();
                match assemble(&root, &stager, w) {
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
                commit(&mut batch);
                let _ = out.send(Outcome::Flushed);
                continue;
            }
        }
        if batch.is_full() {
            commit(&mut batch);
        }
    }
    // The queue closed before a flush: `batch` is dropped uncommitted.
}

/// Stages a whole file and checks it: verified, or the failure to report.
fn assemble(root: &Dir, stager: &Stager, w: Whole) -> Result<Verified, ErrorMsg> {
    let hash = w.end?;
    let f = w.file;
    let mut inc = Incoming::start(root, stager, &f.path, false, f.size)?;
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
        disk.send(whole("a", b"aaa", Hash::of(b"aaa")))
            .await
            .unwrap();
        disk.send(whole("b", b"bbb", Hash::of(b"not b")))
            .await
            .unwrap();
        disk.send(Job::Meta {
            path: String::new(),
            mode: 0o750,
            mtime_ns: 2_000_000_000,
        })
        .await
        .unwrap();
        match disk.outcome().await.unwrap() {
            Outcome::Failed(p, e) => {
                assert_eq!(p, "b");
                assert_eq!(e.code, ErrorCode::ChecksumMismatch);
            }
            _ => panic!("the bad file is reported first"),
        }
        disk.send(Job::Flush).await.unwrap();
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
        let disk = Disk::start(root, Stager::Beside, batch).unwrap();
        disk.send(whole("a", b"new", Hash::of(b"new")))
            .await
            .unwrap();
        disk.send(whole("b", b"bbb", Hash::of(b"bbb")))
            .await
            .unwrap();
        disk.into_thread().unwrap().join().unwrap();
        assert_eq!(names(t.path()), ["a"]);
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"old");
    }
}
