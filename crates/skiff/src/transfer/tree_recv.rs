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
//! batch. A batch is committed when it is full or the input pauses: one
//! durability pass for all its files ([`super::durable`]; for a full
//! batch on a helper thread, while the next batch is written), the renames,
//! the directory modes and times that were waiting for them, one fsync
//! per directory, and only then one `tree_ack` for all of them. A file
//! answered `done` therefore survives a crash.
//!
//! A peer that stops reading the answers stalls the disk thread, which
//! stops taking input (memory stays bounded); a peer that goes away
//! mid-tree leaves nothing at any path it did not get a `done` for: every
//! hidden file of the unfinished batch is removed.

use std::collections::HashMap;
use std::fs::File;
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
/// Files a batch may gather while the previous one is being synced.
const PENDING_WHILE_SYNCING: usize = BATCH_FILES / 2;
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

/// The disk thread of one tree transfer.
pub struct Receiver<P: Place> {
    place: P,
    hash: HashAlg,
    batch: Vec<Pending<P::Slot>>,
    batch_bytes: u64,
    /// Directory modes and times waiting for the renames of their batch
    /// (filling a directory changes its mtime).
    dir_meta: Vec<TreeDir>,
    /// When the last entry arrived.
    last_input: Instant,
    /// How long the last commit took.
    last_commit: Duration,
    /// Entries answered but not yet sent (made durable by the next commit).
    done: Vec<u64>,
    done_files: Vec<String>,
    failed: Vec<TreeFailure>,
    /// Directories whose entries changed outside the batch (new
    /// directories, links): fsynced with the next commit.
    dirty_dirs: Vec<Dir>,
    big: Option<Big<P::Slot>>,
    /// The batch being made durable, if any.
    syncing: Option<Syncing<P::Slot>>,
    totals: TreeDone,
}

/// A batch being made durable while the next one is written.
struct Syncing<S> {
    dir_meta: Vec<TreeDir>,
    started: Instant,
    synced: Synced<S>,
}

/// A batch and the result of its durability pass, per file.
type SyncedBatch<S> = (Vec<Pending<S>>, Vec<std::io::Result<()>>);

/// The durability pass of a batch: on its thread (which hands the batch
/// back), or already done.
enum Synced<S> {
    Running(
        std::thread::JoinHandle<()>,
        std::sync::mpsc::Receiver<SyncedBatch<S>>,
    ),
    Done(Vec<Pending<S>>, Vec<std::io::Result<()>>),
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
            done: Vec::new(),
            done_files: Vec::new(),
            failed: Vec::new(),
            dirty_dirs: Vec::new(),
            big: None,
            syncing: None,
            totals: TreeDone::default(),
        }
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
                    // While a batch is being synced, look in on it often.
                    let linger = self.linger_left();
                    let wait = match (&self.syncing, linger) {
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
                                    self.finish_if_synced(&tx)
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
            // While a batch is synced the next one grows, up to a bound
            // (every pending file holds a descriptor).
            let ok = if self.syncing.is_some() && self.batch.len() >= PENDING_WHILE_SYNCING {
                self.finish_sync(&tx)
            } else {
                self.finish_if_synced(&tx)
            };
            if !ok {
                return self.abort();
            }
            if self.batch_full() && self.syncing.is_none() {
                self.start_sync();
            }
        }
    }

    /// How long to wait for more input before committing what is pending:
    /// `None` when nothing is pending.
    fn linger_left(&self) -> Option<Duration> {
        if self.batch.is_empty()
            && self.done.is_empty()
            && self.failed.is_empty()
            && self.dir_meta.is_empty()
        {
            return None;
        }
        let linger = (self.last_commit * 2).clamp(LINGER_MIN, LINGER_MAX);
        Some(linger.saturating_sub(self.last_input.elapsed()))
    }

    fn batch_full(&self) -> bool {
        self.batch.len() >= BATCH_FILES
            || self.batch_bytes >= BATCH_BYTES
            || self.done.len() + self.failed.len() + self.dir_meta.len() >= BATCH_FILES * 4
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
        let total: u64 = files.iter().map(|f| f.size).sum();
        if total != body.len() as u64 {
            return Err(bad(&format!(
                "tree_files announces {total} bytes of files but carries {}",
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

    /// Commits everything pending (module docs) and waits for it; `false`
    /// when the answers can no longer be sent.
    fn commit(&mut self, tx: &mpsc::Sender<Out>) -> bool {
        if !self.finish_sync(tx) {
            return false;
        }
        self.start_sync();
        self.finish_sync(tx)
    }

    /// Starts making the current batch durable on a helper thread (one
    /// `syncfs`, [`durable::sync_files_known`]) while the next batch is
    /// written: on a busy disk a sync can take longer than writing a
    /// batch, and the next batch then simply grows until it is done.
    fn start_sync(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let dir_meta = std::mem::take(&mut self.dir_meta);
        let started = Instant::now();
        let names: Vec<(u64, String)> = batch.iter().map(|p| (p.id, p.path.clone())).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("tree-sync".into())
            .spawn(move || {
                let files: Vec<&File> = batch.iter().map(|p| p.slot.file()).collect();
                let one_fs = batch.windows(2).all(|w| w[0].slot.dev() == w[1].slot.dev());
                let results = durable::sync_files_known(&files, one_fs);
                drop(files);
                let _ = tx.send((batch, results));
            });
        let synced = match spawned {
            Ok(t) => Synced::Running(t, rx),
            Err(e) => {
                // The batch went with the thread that never started; its
                // staged copies are left for the expiry sweep.
                for (id, path) in names {
                    let m = errors::msg(ErrorCode::Internal, &path, &format!("not synced: {e}"));
                    self.record("put", id, &path, None, Err(m));
                }
                Synced::Done(Vec::new(), Vec::new())
            }
        };
        self.syncing = Some(Syncing {
            dir_meta,
            started,
            synced,
        });
    }

    /// [`finish_sync`](Self::finish_sync) if the sync in flight is over.
    fn finish_if_synced(&mut self, tx: &mpsc::Sender<Out>) -> bool {
        match &self.syncing {
            Some(Syncing {
                synced: Synced::Running(t, _),
                ..
            }) if !t.is_finished() => true,
            _ => self.finish_sync(tx),
        }
    }

    /// Waits for the batch being synced, renames its files into place,
    /// applies the directory modes and times that waited for them, fsyncs
    /// the directories and sends the answers; `false` when they can no
    /// longer be sent.
    fn finish_sync(&mut self, tx: &mpsc::Sender<Out>) -> bool {
        let Some(s) = self.syncing.take() else {
            return true;
        };
        let (batch, synced) = match s.synced {
            Synced::Done(b, r) => (b, r),
            Synced::Running(t, rx) => {
                let _ = t.join();
                // A thread that died took its batch with it; the files'
                // staged copies are then left for the expiry sweep.
                rx.recv().unwrap_or_default()
            }
        };
        let mut renamed = Vec::with_capacity(batch.len());
        for (p, synced) in batch.into_iter().zip(synced) {
            let r = synced
                .map_err(|e| errors::to_msg(&e, &p.path))
                .and_then(|()| self.place.place(&p.slot, &p.path, p.mode, p.mtime_ns));
            match r {
                Ok(()) => renamed.push(p),
                Err(m) => {
                    let (id, path) = (p.id, p.path.clone());
                    p.slot.discard();
                    self.record("put", id, &path, None, Err(m));
                }
            }
        }
        for d in s.dir_meta {
            let r = self.place.dir(&d);
            self.changed("mkdir", d.id, &d.path, r);
        }
        let dirty = std::mem::take(&mut self.dirty_dirs);
        let dirs = durable::sync_dirs(renamed.iter().map(|p| p.slot.dir()).chain(dirty.iter()));
        for p in renamed {
            let r = match &dirs {
                Ok(()) => Ok(()),
                Err(e) => Err(errors::msg(
                    ErrorCode::Internal,
                    &p.path,
                    &format!("stored, but its directory could not be synced: {e}"),
                )),
            };
            let done = Done {
                size: p.size,
                digest: p.digest.clone(),
            };
            if r.is_ok() {
                self.totals.files += 1;
                self.totals.bytes += p.size;
                self.done_files.push(p.path.clone());
            }
            self.record("put", p.id, &p.path, Some(&done), r);
        }
        self.last_commit = s.started.elapsed();
        self.send_answers(tx)
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
        if let Some(s) = self.syncing.take() {
            let batch = match s.synced {
                Synced::Running(t, rx) => {
                    let _ = t.join();
                    rx.recv().map(|d| d.0).unwrap_or_default()
                }
                Synced::Done(b, _) => b,
            };
            for p in batch {
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
