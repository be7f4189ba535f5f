//! The receiving side of a tree stream (`put_tree` on the server,
//! `get_tree` on the client; PROTOCOL.md section 7): one disk thread per
//! transfer, no thread per file.
//!
//! The session task reads entries and hands them to the disk thread
//! ([`Receiver::run`], through a channel of at most [`JOBS`] frames), and
//! sends the answers that thread produces (through a channel of at most
//! [`ACKS`] batches). The disk thread checks each small file's whole-file
//! digest before anything is written under its name, writes it to a hidden
//! file (where is the [`Place`]'s business: the server's staging area, the
//! client's partial files), starts its writeback, and collects it into a
//! batch. Durability passes ([`durable::sync_pass`]) run one at a time on
//! a worker thread while the next batch is written. A batch is handed to
//! a pass when it is full or the input pauses; once that pass has made
//! its data durable the files are renamed or linked into place and the
//! directory modes and times that waited for them applied; the *next*
//! pass, which also carries the next batch's data, makes those directory
//! entries durable, and only then are the files answered in a
//! `tree_ack`. One `syncfs` per batch thus does the work of two, and a
//! file answered `done` survives a crash.
//!
//! A peer that stops reading the answers stalls the disk thread, which
//! stops taking input (memory stays bounded), and so does a pass that
//! takes long while entries keep coming (each holds a directory handle);
//! a peer that goes away mid-tree leaves nothing partial: every hidden
//! file of the unfinished batch is removed (a file already placed whose
//! answer waited for the next pass stays, whole and verified).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cap_std::fs::Dir;
use skiff_wire::message::files::{Done, End, HashAlg};
use skiff_wire::message::tree::{
    TreeAck, TreeDir, TreeDone, TreeFailure, TreeFile, TreeInput, TreeLink,
};
use skiff_wire::{ErrorCode, ErrorMsg};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::checksum::{digests_match, Checksum};
use super::{durable, errors};
use crate::session::{SessionError, SessionReader, SessionWriter};

/// Frames queued between the network task and the disk thread (each at
/// most one 8 MiB body).
pub const JOBS: usize = 4;
/// Answer batches queued between the disk thread and the network task.
pub const ACKS: usize = 4;
/// A batch is committed at this many files ...
const BATCH_FILES: usize = 512;
/// ... or bytes ...
const BATCH_BYTES: u64 = 64 * 1024 * 1024;
/// ... or when no input has arrived for a while: twice as long as the
/// last commit took, within these bounds (a commit on a busy disk can take
/// a quarter of a second; committing small batches at every short pause
/// would then cost more than the pauses).
const LINGER_MIN: Duration = Duration::from_millis(5);
const LINGER_MAX: Duration = Duration::from_millis(500);
/// Answers per `tree_ack` frame (the header stays far below 64 KiB).
const ACK_IDS: usize = 2048;
/// Failures per `tree_ack` frame.
const ACK_FAILURES: usize = 32;
/// A failure's message is cut to this many bytes.
const MESSAGE_MAX: usize = 512;
/// Files a batch may gather while a pass runs (every pending file holds
/// a descriptor: with the pass's own, at most twice this many).
const PENDING_WHILE_SYNCING: usize = BATCH_FILES;
/// Other entries (answers, directory changes, and the directory handles
/// they hold) that may gather for the next pass, while one runs or
/// before one is due.
const ENTRIES_WHILE_SYNCING: usize = BATCH_FILES * 4;
/// How often a disk thread waiting for input looks in on a batch being
/// synced, to send its answers promptly.
const SYNC_POLL: Duration = Duration::from_millis(2);
/// Parent directories kept open for the files that follow.
const PARENTS_MAX: usize = 1024;

/// A file being received: hidden until [`Place::place`] makes it visible.
pub trait Slot {
    /// The open file, written at offsets.
    fn file(&self) -> &File;
    /// The directory it becomes visible in (fsynced after the rename).
    fn dir(&self) -> &Dir;
    /// The device the file is on (one `syncfs` covers a batch on one).
    fn dev(&self) -> u64;
    /// Removes the hidden file.
    fn discard(self);
}

/// Where a tree receiver puts what it receives, and how.
pub trait Place {
    /// A file being received (handed to a helper thread while its batch
    /// is synced).
    type Slot: Slot + Send + 'static;
    /// Creates a directory (an existing one is fine) and applies the mode
    /// and mtime when given; returns the directory whose entries changed.
    fn dir(&mut self, d: &TreeDir) -> Result<Option<Dir>, ErrorMsg>;
    /// Creates a symlink (checked by resolution, [`super::links`]);
    /// returns the directory it was created in.
    fn link(&mut self, l: &TreeLink) -> Result<Option<Dir>, ErrorMsg>;
    /// Checks where `path` goes (refusing what is in the way) and creates
    /// the hidden file it is written to.
    fn open(&mut self, path: &str) -> Result<Self::Slot, ErrorMsg>;
    /// Makes a verified, durable file visible at its path.
    fn place(
        &mut self,
        slot: &Self::Slot,
        path: &str,
        mode: u32,
        mtime_ns: Option<i64>,
    ) -> Result<(), ErrorMsg>;
    /// Notes an entry's outcome (the server's audit log).
    fn record(
        &mut self,
        op: &'static str,
        path: &str,
        done: Option<&Done>,
        r: Result<(), &ErrorMsg>,
    );
}

/// What the disk thread hands the network task.
pub enum Out {
    /// Answers to send, and the paths of the files among them that are
    /// done (for a progress display).
    Ack(TreeAck, Vec<String>),
    /// The stream ended; everything was answered.
    Done(TreeDone),
    /// A protocol violation: sent as an error, and the session ends.
    Fatal(ErrorMsg),
}

/// A verified file waiting for its batch to be committed.
struct Pending<S> {
    id: u64,
    path: String,
    slot: S,
    mode: u32,
    mtime_ns: Option<i64>,
    size: u64,
    digest: String,
}

/// A large file being received in `data` frames.
struct Big<S> {
    head: TreeFile,
    received: u64,
    sum: Checksum,
    /// Where it goes; `None` once it failed (the rest of its data is
    /// discarded up to its `end`).
    slot: Option<S>,
}

/// A file in place (linked or renamed), answered `done` once the next
/// durability pass has made its directory entry durable.
struct Linked {
    id: u64,
    path: String,
    size: u64,
    digest: String,
}

/// One durability pass ([`durable::sync_pass`]): makes the data of the
/// given files durable and, in the same pass, the entries of the given
/// directories. A test replaces it to watch the order of events.
pub type SyncFn = Arc<
    dyn Fn(&[&File], Option<u64>, &[Dir]) -> (Vec<io::Result<()>>, io::Result<()>) + Send + Sync,
>;

/// The disk thread of one tree transfer.
pub struct Receiver<P: Place> {
    place: P,
    hash: HashAlg,
    /// Files written and verified, waiting for a pass to make their data
    /// durable.
    batch: Vec<Pending<P::Slot>>,
    batch_bytes: u64,
    /// Directory modes and times waiting for the links of the batch they
    /// arrived with (filling a directory changes its mtime).
    dir_meta: Vec<TreeDir>,
    /// When the last entry arrived.
    last_input: Instant,
    /// How long the last pass took.
    last_commit: Duration,
    /// Files placed since the last pass began (the next one makes their
    /// entries durable).
    linked: Vec<Linked>,
    /// Entries answered since the last pass began, not yet sent.
    done: Vec<u64>,
    done_files: Vec<String>,
    failed: Vec<TreeFailure>,
    /// Directories whose entries changed since the last pass began (the
    /// placed files' directories, new directories' parents, links').
    dirty_dirs: Vec<Dir>,
    big: Option<Big<P::Slot>>,
    /// The pass in flight, if any.
    pass: Option<Pass<P::Slot>>,
    /// The thread that runs the passes (started at the first).
    worker: Option<Worker<P::Slot>>,
    sync: SyncFn,
    totals: TreeDone,
}

/// A durability pass in flight: what it covers and what waits for it.
struct Pass<S> {
    started: Instant,
    /// Directory modes and times waiting for the links of its files.
    dir_meta: Vec<TreeDir>,
    /// Files placed before it began: answered when it is over.
    linked: Vec<Linked>,
    /// Other answers recorded before it began.
    done: Vec<u64>,
    failed: Vec<TreeFailure>,
    /// Its result, when it ran on the disk thread itself (no worker).
    inline: Option<PassResult<S>>,
}

/// What a pass is given: the files whose data it makes durable, and the
/// directories whose entries it makes durable.
struct PassJob<S> {
    written: Vec<Pending<S>>,
    dirs: Vec<Dir>,
}

/// A pass's files back, with one result per file and the directories'.
type PassResult<S> = (Vec<Pending<S>>, Vec<io::Result<()>>, io::Result<()>);

/// A pass that is over, and its result.
type Finished<S> = (Pass<S>, PassResult<S>);

/// The thread running the passes of one receiver, one at a time.
struct Worker<S> {
    jobs: std::sync::mpsc::Sender<PassJob<S>>,
    results: std::sync::mpsc::Receiver<PassResult<S>>,
}

impl<S: Slot + Send + 'static> PassJob<S> {
    fn run(self, sync: &SyncFn) -> PassResult<S> {
        let files: Vec<&File> = self.written.iter().map(|p| p.slot.file()).collect();
        let dev = self.written.first().map(|p| p.slot.dev());
        let one_dev = dev.filter(|d| self.written.iter().all(|p| p.slot.dev() == *d));
        let (synced, dirs) = sync(&files, one_dev, &self.dirs);
        drop(files);
        (self.written, synced, dirs)
    }
}

impl<S: Slot + Send + 'static> Worker<S> {
    fn start(sync: SyncFn) -> io::Result<Worker<S>> {
        let (jobs, job_rx) = std::sync::mpsc::channel::<PassJob<S>>();
        let (result_tx, results) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("tree-sync".into())
            .spawn(move || {
                while let Ok(job) = job_rx.recv() {
                    if result_tx.send(job.run(&sync)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Worker { jobs, results })
    }
}

/// A parent directory held open for the files that follow: one handle
/// shared by all of them (no descriptor duplicated per file), and the
/// device it is on (so a batch knows its files share a file system
/// without looking at each).
#[derive(Clone)]
pub struct Parent {
    /// The directory.
    pub dir: Arc<Dir>,
    /// Its `st_dev`.
    pub dev: u64,
}

/// Parent directories by path, held open for the files that follow (a
/// bounded cache).
#[derive(Default)]
pub struct Parents {
    map: HashMap<String, Parent>,
}

impl Parents {
    /// The directory `key`, opened with `open` when not cached.
    pub fn get(
        &mut self,
        key: &str,
        open: impl FnOnce() -> std::io::Result<Dir>,
    ) -> std::io::Result<&Parent> {
        if !self.map.contains_key(key) {
            let dir = open()?;
            let dev = cap_std::fs::MetadataExt::dev(&dir.dir_metadata()?);
            if self.map.len() >= PARENTS_MAX {
                self.map.clear();
            }
            let parent = Parent {
                dir: Arc::new(dir),
                dev,
            };
            self.map.insert(key.to_string(), parent);
        }
        self.map
            .get(key)
            .ok_or_else(|| std::io::Error::other("parent cache"))
    }
}

impl<P: Place> Receiver<P> {
    /// A receiver putting files through `place`, checking `hash` digests.
    pub fn new(place: P, hash: HashAlg) -> Receiver<P> {
        Receiver {
            place,
            hash,
            batch: Vec::new(),
            batch_bytes: 0,
            dir_meta: Vec::new(),
            last_input: Instant::now(),
            last_commit: Duration::ZERO,
            linked: Vec::new(),
            done: Vec::new(),
            done_files: Vec::new(),
            failed: Vec::new(),
            dirty_dirs: Vec::new(),
            big: None,
            pass: None,
            worker: None,
            sync: Arc::new(|files, dev, dirs| durable::sync_pass(files, dev, dirs)),
            totals: TreeDone::default(),
        }
    }

    /// The same receiver with another durability pass (tests).
    #[cfg(test)]
    fn with_sync(mut self, sync: SyncFn) -> Receiver<P> {
        self.sync = sync;
        self
    }

    /// Processes entries until `tree_end` (then commits, sends
    /// [`Out::Done`] and returns) or until either channel closes (then
    /// removes everything hidden and returns).
    pub fn run(mut self, mut rx: mpsc::Receiver<TreeInput>, tx: mpsc::Sender<Out>, rt: Handle) {
        loop {
            let job = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // While a pass runs, look in on it often.
                    let linger = self.linger_left();
                    let wait = match (&self.pass, linger) {
                        (Some(_), l) => Some(l.map_or(SYNC_POLL, |l| l.min(SYNC_POLL))),
                        (None, l) => l,
                    };
                    match wait {
                        None => rt.block_on(rx.recv()),
                        Some(w) => match rt.block_on(tokio::time::timeout(w, rx.recv())) {
                            Ok(j) => j,
                            Err(_) => {
                                let lingered = self.linger_left().is_some_and(|l| l.is_zero());
                                let ok = if lingered {
                                    self.commit(&tx)
                                } else {
                                    self.step(&tx, false)
                                };
                                if !ok {
                                    return self.abort();
                                }
                                continue;
                            }
                        },
                    }
                }
            };
            let Some(job) = job else {
                return self.abort();
            };
            self.last_input = Instant::now();
            let finish = matches!(job, TreeInput::Finish(_));
            if let Err(m) = self.process(job) {
                let _ = tx.blocking_send(Out::Fatal(m));
                return self.abort();
            }
            if finish {
                if !self.commit(&tx) {
                    return self.abort();
                }
                let _ = tx.blocking_send(Out::Done(std::mem::take(&mut self.totals)));
                return;
            }
            // While a pass runs the next batch grows, up to a bound
            // (every pending file holds a descriptor, and so does every
            // directory a directory or link entry changed).
            let wait = self.pass.is_some()
                && (self.batch.len() >= PENDING_WHILE_SYNCING
                    || self.entries_pending() + self.dirty_dirs.len() >= ENTRIES_WHILE_SYNCING);
            if !self.step(&tx, wait) {
                return self.abort();
            }
        }
    }

    /// Finishes the pass in flight if it is over (or waits for it), and
    /// starts the next when one is due: when the batch is full, or, with
    /// files placed and waiting for their entries to be made durable, once
    /// half a batch has gathered (a slow disk is then kept busy with
    /// passes as large as the descriptor bound allows). `false` when the
    /// answers can no longer be sent.
    fn step(&mut self, tx: &mpsc::Sender<Out>, wait: bool) -> bool {
        if !self.finish_pass(tx, wait) {
            return false;
        }
        let due =
            self.batch_full() || (!self.linked.is_empty() && self.batch.len() >= BATCH_FILES / 2);
        if due && self.pass.is_none() {
            self.start_pass();
        }
        true
    }

    /// How long to wait for more input before committing what is pending:
    /// `None` when nothing is pending.
    fn linger_left(&self) -> Option<Duration> {
        if self.batch.is_empty()
            && self.linked.is_empty()
            && self.done.is_empty()
            && self.failed.is_empty()
            && self.dir_meta.is_empty()
            && self.dirty_dirs.is_empty()
        {
            return None;
        }
        let linger = (self.last_commit * 2).clamp(LINGER_MIN, LINGER_MAX);
        Some(linger.saturating_sub(self.last_input.elapsed()))
    }

    fn batch_full(&self) -> bool {
        self.batch.len() >= BATCH_FILES
            || self.batch_bytes >= BATCH_BYTES
            || self.entries_pending() >= ENTRIES_WHILE_SYNCING
    }

    /// Answers and directory changes gathered for the next pass.
    fn entries_pending(&self) -> usize {
        self.done.len() + self.failed.len() + self.dir_meta.len() + self.linked.len()
    }

    /// One entry; `Err` for a protocol violation.
    fn process(&mut self, job: TreeInput) -> Result<(), ErrorMsg> {
        if let Some(big) = &self.big {
            match &job {
                TreeInput::Data(_) | TreeInput::End(_) => {}
                TreeInput::Failure(f) if f.id == big.head.id => {}
                _ => {
                    return Err(bad(
                        "a large file's data must end with `end` before the next entry",
                    ))
                }
            }
        }
        match job {
            TreeInput::Dir(d) if d.mode.is_some() || d.mtime_ns.is_some() => self.dir_meta.push(d),
            TreeInput::Dir(d) => {
                let r = self.place.dir(&d);
                self.changed("mkdir", d.id, &d.path, r);
            }
            TreeInput::Files((files, body)) => return self.small_files(files.files, body),
            TreeInput::File(head) => self.big_head(head),
            TreeInput::Data(chunk) => return self.big_data(chunk),
            TreeInput::End(end) => return self.big_end(end),
            TreeInput::Link(l) => {
                let r = self.place.link(&l);
                self.changed("symlink", l.id, &l.path, r);
            }
            TreeInput::Failure(f) => self.sender_failed(f),
            TreeInput::Finish(_) => {}
        }
        Ok(())
    }

    /// Records a directory or link entry; its directory is fsynced with
    /// the next commit.
    fn changed(&mut self, op: &'static str, id: u64, path: &str, r: Result<Option<Dir>, ErrorMsg>) {
        let r = r.map(|dir| {
            if let Some(d) = dir {
                self.dirty_dirs.push(d);
            }
        });
        self.record(op, id, path, None, r);
    }

    /// The sender could not read an entry (for a large file in progress:
    /// it stops, and what arrived of it is discarded).
    fn sender_failed(&mut self, f: TreeFailure) {
        let path = match self.big.take() {
            Some(big) => {
                if let Some(slot) = big.slot {
                    slot.discard();
                } else {
                    // Already answered as failed on this side.
                    return;
                }
                big.head.path
            }
            None => String::new(),
        };
        let m = ErrorMsg::new(f.code, f.message);
        self.record("put", f.id, &path, None, Err(m));
    }

    fn small_files(&mut self, files: Vec<TreeFile>, body: Bytes) -> Result<(), ErrorMsg> {
        // Added without wrapping: sizes from the peer that overflow
        // cannot come out at the body's length.
        let total = files.iter().try_fold(0u64, |t, f| t.checked_add(f.size));
        if total != Some(body.len() as u64) {
            let announced = total.map_or_else(|| "more than 2^64".into(), |t| t.to_string());
            return Err(bad(&format!(
                "tree_files announces {announced} bytes of files but carries {}",
                body.len()
            )));
        }
        let mut at = 0usize;
        for f in files {
            // `total` fits the body, so every size fits usize.
            let len = f.size as usize;
            let bytes = body.slice(at..at + len);
            at += len;
            match self.store_small(&f, &bytes) {
                Ok(p) => self.push(p),
                Err(m) => self.record("put", f.id, &f.path, None, Err(m)),
            }
        }
        Ok(())
    }

    /// Verifies a whole small file and writes it to a hidden file.
    fn store_small(&mut self, f: &TreeFile, bytes: &[u8]) -> Result<Pending<P::Slot>, ErrorMsg> {
        let mut sum = Checksum::new(self.hash);
        sum.update(bytes);
        let digest = sum.finish_hex();
        if !digests_match(&digest, &f.digest) {
            return Err(mismatch(&f.path, &f.digest, &digest));
        }
        let slot = self.place.open(&f.path)?;
        let mode = f.mode.unwrap_or(0o644);
        let written = slot
            .file()
            .write_all_at(bytes, 0)
            .and_then(|()| super::meta::apply(slot.file(), Some(mode), f.mtime_ns));
        if let Err(e) = written {
            slot.discard();
            return Err(errors::to_msg(&e, &f.path));
        }
        durable::start_writeback(slot.file(), 0, bytes.len() as u64);
        Ok(Pending {
            id: f.id,
            path: f.path.clone(),
            slot,
            mode,
            mtime_ns: f.mtime_ns,
            size: f.size,
            digest,
        })
    }

    fn big_head(&mut self, head: TreeFile) {
        let slot = match self.place.open(&head.path) {
            Ok(s) => Some(s),
            Err(m) => {
                self.record("put", head.id, &head.path, None, Err(m));
                None
            }
        };
        self.big = Some(Big {
            head,
            received: 0,
            sum: Checksum::new(self.hash),
            slot,
        });
    }

    fn big_data(&mut self, chunk: Bytes) -> Result<(), ErrorMsg> {
        let Some(big) = self.big.as_mut() else {
            return Err(bad("`data` outside a large file"));
        };
        let Some(slot) = &big.slot else {
            return Ok(());
        };
        let len = chunk.len() as u64;
        let failure = if big.received + len > big.head.size {
            Some(ErrorMsg::new(
                ErrorCode::TooLarge,
                format!(
                    "{}: more data than the announced {} bytes",
                    big.head.path, big.head.size
                ),
            ))
        } else {
            match slot.file().write_all_at(&chunk, big.received) {
                Ok(()) => {
                    durable::start_writeback(slot.file(), big.received, len);
                    big.sum.update(&chunk);
                    big.received += len;
                    None
                }
                Err(e) => Some(errors::to_msg(&e, &big.head.path)),
            }
        };
        if let Some(m) = failure {
            if let Some(slot) = big.slot.take() {
                slot.discard();
            }
            let (id, path) = (big.head.id, big.head.path.clone());
            self.record("put", id, &path, None, Err(m));
        }
        Ok(())
    }

    fn big_end(&mut self, end: End) -> Result<(), ErrorMsg> {
        let Some(big) = self.big.take() else {
            return Err(bad("`end` outside a large file"));
        };
        let Some(slot) = big.slot else {
            return Ok(());
        };
        let head = big.head;
        let digest = big.sum.finish_hex();
        let mode = head.mode.unwrap_or(0o644);
        let check = if end.abort {
            Err(ErrorMsg::new(
                ErrorCode::Internal,
                format!("{}: aborted by the sender", head.path),
            ))
        } else if big.received != head.size || end.size != head.size {
            Err(errors::msg(
                ErrorCode::ChecksumMismatch,
                &head.path,
                &format!("received {} bytes, expected {}", big.received, head.size),
            ))
        } else if !digests_match(&digest, &end.digest) {
            Err(mismatch(&head.path, &end.digest, &digest))
        } else {
            super::meta::apply(slot.file(), Some(mode), head.mtime_ns)
                .map_err(|e| errors::to_msg(&e, &head.path))
        };
        match check {
            Ok(()) => self.push(Pending {
                id: head.id,
                path: head.path,
                slot,
                mode,
                mtime_ns: head.mtime_ns,
                size: head.size,
                digest,
            }),
            Err(m) => {
                slot.discard();
                self.record("put", head.id, &head.path, None, Err(m));
            }
        }
        Ok(())
    }

    fn push(&mut self, p: Pending<P::Slot>) {
        self.batch_bytes += p.size;
        self.batch.push(p);
    }

    /// Commits everything pending (module docs) and waits for it: passes
    /// until nothing is left (the last one only for the entries the one
    /// before let be placed); `false` when the answers can no longer be
    /// sent.
    fn commit(&mut self, tx: &mpsc::Sender<Out>) -> bool {
        loop {
            if !self.finish_pass(tx, true) {
                return false;
            }
            if self.linger_left().is_none() {
                return true;
            }
            self.start_pass();
        }
    }

    /// Starts a durability pass over everything done so far (module
    /// docs): the data of the batch, and the entries placed since the last
    /// pass began. It runs on the worker thread while the next batch is
    /// written (on a busy disk a pass takes longer than writing a batch,
    /// and the next batch then grows until it is done); on the disk thread
    /// itself if the worker cannot be started.
    fn start_pass(&mut self) {
        let job = PassJob {
            written: std::mem::take(&mut self.batch),
            dirs: std::mem::take(&mut self.dirty_dirs),
        };
        self.batch_bytes = 0;
        let mut pass = Pass {
            started: Instant::now(),
            dir_meta: std::mem::take(&mut self.dir_meta),
            linked: std::mem::take(&mut self.linked),
            done: std::mem::take(&mut self.done),
            failed: std::mem::take(&mut self.failed),
            inline: None,
        };
        if job.written.is_empty() && job.dirs.is_empty() {
            pass.inline = Some((Vec::new(), Vec::new(), Ok(())));
        } else {
            if self.worker.is_none() {
                self.worker = Worker::start(self.sync.clone()).ok();
            }
            let sent = match &self.worker {
                Some(w) => w.jobs.send(job).map_err(|e| e.0),
                None => Err(job),
            };
            if let Err(job) = sent {
                self.worker = None;
                pass.inline = Some(job.run(&self.sync));
            }
        }
        self.pass = Some(pass);
    }

    /// The result of the pass in flight: `None` when there is none, or it
    /// is still running and `wait` is off. A worker that died took its
    /// files with it (staged copies are then left for the expiry sweep),
    /// and their entries are failed.
    fn pass_result(&mut self, wait: bool) -> Option<Finished<P::Slot>> {
        let pass = self.pass.as_mut()?;
        if let Some(r) = pass.inline.take() {
            return self.pass.take().map(|p| (p, r));
        }
        let r = match &self.worker {
            Some(w) if wait => w.results.recv().ok(),
            Some(w) => match w.results.try_recv() {
                Ok(r) => Some(r),
                Err(std::sync::mpsc::TryRecvError::Empty) => return None,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
            },
            None => None,
        };
        let r = r.unwrap_or_else(|| {
            self.worker = None;
            let lost = io::Error::other("the durability pass stopped");
            (Vec::new(), Vec::new(), Err(lost))
        });
        self.pass.take().map(|p| (p, r))
    }

    /// Finishes the pass in flight if it is over (or waits for it, with
    /// `wait`): answers the files it made durable, places the files whose
    /// data it made durable (renames or links, for the next pass), and
    /// applies the directory modes and times that waited for them; `false`
    /// when the answers can no longer be sent.
    fn finish_pass(&mut self, tx: &mpsc::Sender<Out>, wait: bool) -> bool {
        let Some((pass, (written, synced, dirs))) = self.pass_result(wait) else {
            return true;
        };
        // Answers recorded since the pass began wait for the next one.
        let later_done = std::mem::replace(&mut self.done, pass.done);
        let later_failed = std::mem::replace(&mut self.failed, pass.failed);
        let later_files = std::mem::take(&mut self.done_files);
        for l in pass.linked {
            let r = match &dirs {
                Ok(()) => Ok(()),
                Err(e) => Err(unsynced_dir(&l.path, e)),
            };
            if r.is_ok() {
                self.totals.files += 1;
                self.totals.bytes += l.size;
                self.done_files.push(l.path.clone());
            }
            let done = Done {
                size: l.size,
                digest: l.digest,
            };
            self.record("put", l.id, &l.path, Some(&done), r);
        }
        let sent = self.send_answers(tx);
        self.done = later_done;
        self.failed = later_failed;
        self.done_files = later_files;
        if !sent {
            return false;
        }
        // A file whose data is durable is placed; its directory is made
        // durable by the next pass. The slots are all open until every
        // directory is cloned, so equal descriptors are one directory.
        let mut placed = Vec::with_capacity(written.len());
        let mut failed = Vec::new();
        let mut failed_after = Vec::new();
        for (p, synced) in written.into_iter().zip(synced) {
            let r = synced
                .map_err(|e| errors::to_msg(&e, &p.path))
                .and_then(|()| self.place.place(&p.slot, &p.path, p.mode, p.mtime_ns));
            match r {
                Ok(()) => placed.push(p),
                Err(m) => failed.push((p, m)),
            }
        }
        let mut cloned = HashMap::new();
        let mut held = Vec::with_capacity(placed.len());
        for p in &placed {
            let dir = p.slot.dir();
            let dirs = &mut self.dirty_dirs;
            let h =
                cloned
                    .entry(dir.as_fd().as_raw_fd())
                    .or_insert_with(|| match dir.try_clone() {
                        Ok(d) => {
                            dirs.push(d);
                            None
                        }
                        Err(e) => Some(e.to_string()),
                    });
            held.push(h.clone());
        }
        for (p, h) in placed.into_iter().zip(held) {
            match h {
                None => self.linked.push(Linked {
                    id: p.id,
                    path: p.path,
                    size: p.size,
                    digest: p.digest,
                }),
                Some(e) => {
                    let m = unsynced_dir(&p.path, &e);
                    failed_after.push((p.id, p.path, m));
                }
            }
        }
        for (p, m) in failed {
            let (id, path) = (p.id, p.path.clone());
            p.slot.discard();
            self.record("put", id, &path, None, Err(m));
        }
        for (id, path, m) in failed_after {
            self.record("put", id, &path, None, Err(m));
        }
        for d in pass.dir_meta {
            let r = self.place.dir(&d);
            self.changed("mkdir", d.id, &d.path, r);
        }
        self.last_commit = pass.started.elapsed();
        true
    }

    /// Sends every answer collected, in frames of bounded size.
    fn send_answers(&mut self, tx: &mpsc::Sender<Out>) -> bool {
        let mut done = std::mem::take(&mut self.done);
        let mut failed = std::mem::take(&mut self.failed);
        let mut files = std::mem::take(&mut self.done_files);
        while !done.is_empty() || !failed.is_empty() {
            let ack = TreeAck {
                done: done.drain(..done.len().min(ACK_IDS)).collect(),
                failed: failed.drain(..failed.len().min(ACK_FAILURES)).collect(),
            };
            if tx
                .blocking_send(Out::Ack(ack, std::mem::take(&mut files)))
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Notes an entry's outcome for the next `tree_ack` (and the place's
    /// record).
    fn record(
        &mut self,
        op: &'static str,
        id: u64,
        path: &str,
        done: Option<&Done>,
        r: Result<(), ErrorMsg>,
    ) {
        self.place.record(op, path, done, r.as_ref().map(|_| ()));
        match r {
            Ok(()) => self.done.push(id),
            Err(m) => {
                self.totals.failed += 1;
                let mut message = m.message;
                if message.len() > MESSAGE_MAX {
                    let mut cut = MESSAGE_MAX;
                    while !message.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    message.truncate(cut);
                }
                self.failed.push(TreeFailure {
                    id,
                    code: m.code,
                    message,
                });
            }
        }
    }

    /// The peer is gone or broke the protocol: nothing hidden is kept.
    fn abort(mut self) {
        if let Some((_, (written, _, _))) = self.pass_result(true) {
            for p in written {
                p.slot.discard();
            }
        }
        for p in self.batch.drain(..) {
            p.slot.discard();
        }
        if let Some(Big { slot: Some(s), .. }) = self.big.take() {
            s.discard();
        }
    }
}

/// The failure of a file that is in place but whose directory entry could
/// not be made durable (or its directory held for that).
fn unsynced_dir(path: &str, e: &dyn std::fmt::Display) -> ErrorMsg {
    errors::msg(
        ErrorCode::Internal,
        path,
        &format!("stored, but its directory could not be synced: {e}"),
    )
}

/// Runs the network side of a receiver: reads entries into `jobs` (for
/// the disk thread; `on_input` sees each first) and sends the answers it
/// produces (`on_ack` sees each batch first), then `tree_done`, which it
/// returns. Each entry must be complete within `idle` (the session's idle
/// timeout on a server, the I/O timeout on a client; `None`: as long as
/// the connection stays up), or the stream ends with
/// [`SessionError::Stalled`].
pub async fn exchange(
    idle: Option<Duration>,
    reader: &mut SessionReader<'_>,
    writer: &mut SessionWriter<'_>,
    jobs: mpsc::Sender<TreeInput>,
    out: &mut mpsc::Receiver<Out>,
    on_input: impl Fn(&TreeInput),
    mut on_ack: impl FnMut(&TreeAck, Vec<String>),
) -> Result<TreeDone, SessionError> {
    let read = async move {
        loop {
            let msg = match crate::maybe::timeout(idle, reader.recv_msg::<TreeInput>()).await {
                Ok(r) => r?,
                Err(d) => return Err(SessionError::Stalled(d)),
            };
            on_input(&msg);
            let last = matches!(msg, TreeInput::Finish(_));
            if jobs.send(msg).await.is_err() || last {
                // Done, or the disk thread stopped (the writer says why).
                return Ok(());
            }
        }
    };
    let write = async {
        while let Some(o) = out.recv().await {
            match o {
                Out::Ack(a, files) => {
                    on_ack(&a, files);
                    writer.queue(&a, &[])?;
                }
                Out::Done(d) => {
                    writer.queue(&d, &[])?;
                    writer.flush().await?;
                    return Ok(d);
                }
                Out::Fatal(m) => {
                    writer.queue(&m, &[])?;
                    let _ = writer.flush().await;
                    return Err(SessionError::Unexpected {
                        expected: "a tree entry",
                        got: m.message,
                    });
                }
            }
            if out.is_empty() {
                writer.flush().await?;
            }
        }
        Err(SessionError::Closed)
    };
    let ((), done) = tokio::try_join!(read, write)?;
    Ok(done)
}

fn bad(what: &str) -> ErrorMsg {
    ErrorMsg::new(ErrorCode::BadFrame, format!("tree stream: {what}"))
}

fn mismatch(path: &str, sent: &str, computed: &str) -> ErrorMsg {
    errors::msg(
        ErrorCode::ChecksumMismatch,
        path,
        &format!("sender sent {sent}, receiver computed {computed}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_wire::message::tree::{TreeEnd, TreeFiles};
    use std::sync::Mutex;

    type Log = Arc<Mutex<Vec<String>>>;

    /// A hidden named file in one directory, renamed at the commit.
    struct TestSlot {
        file: File,
        dir: Arc<Dir>,
        hidden: String,
    }

    impl Slot for TestSlot {
        fn file(&self) -> &File {
            &self.file
        }
        fn dir(&self) -> &Dir {
            &self.dir
        }
        fn dev(&self) -> u64 {
            1
        }
        fn discard(self) {
            let _ = self.dir.remove_file(&self.hidden);
        }
    }

    /// A receiver with the durability pass `sync`, running on a thread
    /// of its own as on a blocking task of a runtime (timers need its
    /// context), fed and drained by the test.
    struct Running {
        _rt: tokio::runtime::Runtime,
        jobs: mpsc::Sender<TreeInput>,
        out: mpsc::Receiver<Out>,
        disk: std::thread::JoinHandle<()>,
    }

    impl Running {
        fn start(place: TestPlace, sync: SyncFn) -> Running {
            let receiver = Receiver::new(place, HashAlg::Blake3).with_sync(sync);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (jobs, job_rx) = mpsc::channel(JOBS);
            let (out_tx, out) = mpsc::channel(ACKS);
            let handle = rt.handle().clone();
            let disk = std::thread::spawn(move || {
                let _in = handle.enter();
                receiver.run(job_rx, out_tx, handle.clone())
            });
            Running {
                _rt: rt,
                jobs,
                out,
                disk,
            }
        }
    }

    struct TestPlace {
        dir: Arc<Dir>,
        log: Log,
        next: u64,
    }

    impl Place for TestPlace {
        type Slot = TestSlot;
        fn dir(&mut self, _: &TreeDir) -> Result<Option<Dir>, ErrorMsg> {
            // As a real place: the changed directory, a descriptor each.
            let d = self.dir.try_clone();
            Ok(Some(d.map_err(|e| {
                ErrorMsg::new(ErrorCode::Internal, e.to_string())
            })?))
        }
        fn link(&mut self, _: &TreeLink) -> Result<Option<Dir>, ErrorMsg> {
            Ok(None)
        }
        fn open(&mut self, _: &str) -> Result<TestSlot, ErrorMsg> {
            self.next += 1;
            let hidden = format!(".part{}", self.next);
            let file = self
                .dir
                .create(&hidden)
                .map_err(|e| ErrorMsg::new(ErrorCode::Internal, e.to_string()))?
                .into_std();
            Ok(TestSlot {
                file,
                dir: self.dir.clone(),
                hidden,
            })
        }
        fn place(
            &mut self,
            s: &TestSlot,
            path: &str,
            _: u32,
            _: Option<i64>,
        ) -> Result<(), ErrorMsg> {
            self.log.lock().unwrap().push(format!("place {path}"));
            s.dir
                .rename(&s.hidden, &s.dir, path)
                .map_err(|e| ErrorMsg::new(ErrorCode::Internal, e.to_string()))
        }
        fn record(&mut self, _: &'static str, _: &str, _: Option<&Done>, _: Result<(), &ErrorMsg>) {
        }
    }

    fn wait_for(log: &Log, what: &str) {
        let until = Instant::now() + Duration::from_secs(10);
        while !log.lock().unwrap().iter().any(|e| e == what) {
            assert!(
                Instant::now() < until,
                "no `{what}` in {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sizes that wrap around when added up (a peer's `u64::MAX` and
    /// the body's length plus one) are a protocol violation, found
    /// before any file is opened, not a panic.
    #[test]
    fn sizes_that_wrap_around_are_a_protocol_error() {
        let t = tempfile::tempdir().unwrap();
        let dir = Arc::new(Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap());
        let place = TestPlace {
            dir,
            log: Arc::default(),
            next: 0,
        };
        let mut receiver = Receiver::new(place, HashAlg::Blake3);
        let file = |id, size| TreeFile {
            id,
            path: format!("f{id}"),
            size,
            ..Default::default()
        };
        let body = Bytes::from_static(b"abcde");
        for files in [
            vec![file(1, u64::MAX), file(2, 6)],
            vec![file(1, 0), file(2, u64::MAX), file(3, u64::MAX), file(4, 7)],
        ] {
            let e = receiver.small_files(files, body.clone()).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadFrame, "{}", e.message);
            assert!(e.message.contains("more than 2^64"), "{}", e.message);
        }
        assert_eq!(receiver.place.next, 0, "no file opened");
        assert!(receiver.batch.is_empty());
    }

    /// A pass that blocks (a slow disk) while the peer goes on sending
    /// directory entries: each holds a directory handle until the next
    /// pass, so the receiver stops taking input once a bounded number
    /// has gathered, rather than holding a descriptor per entry without
    /// bound.
    #[test]
    fn entries_sent_while_a_pass_is_slow_are_bounded() {
        let t = tempfile::tempdir().unwrap();
        let dir = Arc::new(Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap());
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        let started = Arc::new(Mutex::new(0usize));
        let passes = started.clone();
        let sync: SyncFn = Arc::new(move |files: &[&File], _: Option<u64>, _: &[Dir]| {
            *passes.lock().unwrap() += 1;
            let _ = released
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10));
            (files.iter().map(|_| Ok(())).collect(), Ok(()))
        });
        let place = TestPlace {
            dir,
            log: Arc::default(),
            next: 0,
        };
        let Running {
            _rt,
            jobs: job_tx,
            out: mut out_rx,
            disk,
        } = Running::start(place, sync);
        // A full batch starts a pass, which then blocks.
        let empty = {
            let mut sum = Checksum::new(HashAlg::Blake3);
            sum.update(b"");
            sum.finish_hex()
        };
        let files = (0..BATCH_FILES as u64)
            .map(|id| TreeFile {
                id,
                path: format!("f{id}"),
                digest: empty.clone(),
                ..Default::default()
            })
            .collect();
        let input = TreeInput::Files((TreeFiles { files }, Bytes::new()));
        job_tx.blocking_send(input).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while *started.lock().unwrap() == 0 {
            assert!(Instant::now() < until, "no pass started");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Directory entries, as fast as they are taken.
        let mut taken = 0u64;
        let mut full_since: Option<Instant> = None;
        let flood = Instant::now();
        while taken < 50_000 && flood.elapsed() < Duration::from_secs(5) {
            let d = TreeDir {
                id: 1_000_000 + taken,
                path: "d".into(),
                ..Default::default()
            };
            match job_tx.try_send(TreeInput::Dir(d)) {
                Ok(()) => {
                    taken += 1;
                    full_since = None;
                }
                Err(_) => {
                    let since = *full_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(300) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        assert!(
            taken <= (ENTRIES_WHILE_SYNCING + JOBS + 1) as u64,
            "{taken} entries taken while a pass was blocked"
        );
        for _ in 0..100 {
            let _ = release.send(());
        }
        job_tx.blocking_send(TreeInput::Finish(TreeEnd {})).unwrap();
        loop {
            match out_rx.blocking_recv() {
                Some(Out::Ack(..)) => {}
                Some(Out::Done(d)) => {
                    assert_eq!(d.files, BATCH_FILES as u64);
                    break;
                }
                Some(Out::Fatal(m)) => panic!("{}", m.message),
                None => panic!("the receiver stopped"),
            }
        }
        disk.join().unwrap();
    }

    /// The order the durability guarantee rests on: a file is placed only
    /// after the pass that made its data durable, and answered only after
    /// the pass that began after it was placed (which made its directory
    /// entry durable).
    #[test]
    fn a_file_is_placed_after_its_data_pass_and_answered_after_its_entry_pass() {
        let t = tempfile::tempdir().unwrap();
        let dir = Arc::new(Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap());
        let log: Log = Arc::default();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        let pass_log = log.clone();
        let sync: SyncFn = Arc::new(move |files: &[&File], _: Option<u64>, dirs: &[Dir]| {
            let n = files.len();
            pass_log
                .lock()
                .unwrap()
                .push(format!("pass {n} files {} dirs", dirs.len()));
            let _ = released
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10));
            pass_log.lock().unwrap().push("passed".into());
            ((0..n).map(|_| Ok(())).collect(), Ok(()))
        });
        let place = TestPlace {
            dir: dir.clone(),
            log: log.clone(),
            next: 0,
        };
        let Running {
            _rt,
            jobs: job_tx,
            out: mut out_rx,
            disk,
        } = Running::start(place, sync);
        let mut files = Vec::new();
        let mut body = Vec::new();
        for id in 0..20u64 {
            let bytes = vec![id as u8; 100];
            let mut sum = Checksum::new(HashAlg::Blake3);
            sum.update(&bytes);
            files.push(TreeFile {
                id,
                path: format!("f{id}"),
                size: bytes.len() as u64,
                digest: sum.finish_hex(),
                ..Default::default()
            });
            body.extend_from_slice(&bytes);
        }
        let input = TreeInput::Files((TreeFiles { files }, Bytes::from(body)));
        job_tx.blocking_send(input).unwrap();
        job_tx.blocking_send(TreeInput::Finish(TreeEnd {})).unwrap();

        // The data pass: nothing placed, nothing answered.
        wait_for(&log, "pass 20 files 0 dirs");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!log.lock().unwrap().iter().any(|e| e.starts_with("place")));
        assert!(out_rx.try_recv().is_err());
        assert!(!t.path().join("f0").exists());
        release.send(()).unwrap();

        // The entry pass begins after every file was placed; still no answer.
        wait_for(&log, "pass 0 files 1 dirs");
        let events = log.lock().unwrap().clone();
        let entry_pass = events
            .iter()
            .position(|e| e == "pass 0 files 1 dirs")
            .unwrap();
        let placed = events.iter().filter(|e| e.starts_with("place")).count();
        assert_eq!(placed, 20, "{events:?}");
        assert!(
            events[..entry_pass]
                .iter()
                .filter(|e| e.starts_with("place"))
                .count()
                == 20
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(out_rx.try_recv().is_err());
        assert!(t.path().join("f0").exists());
        release.send(()).unwrap();

        // Only now the answers, then the end.
        let mut done = Vec::new();
        loop {
            match out_rx.blocking_recv() {
                Some(Out::Ack(a, _)) => {
                    assert!(a.failed.is_empty());
                    done.extend(a.done);
                }
                Some(Out::Done(d)) => {
                    assert_eq!(d.files, 20);
                    break;
                }
                Some(Out::Fatal(m)) => panic!("{}", m.message),
                None => panic!("the receiver stopped"),
            }
        }
        done.sort_unstable();
        assert_eq!(done, (0..20).collect::<Vec<_>>());
        disk.join().unwrap();
    }
}
