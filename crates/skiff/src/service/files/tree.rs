//! `put_tree`: a tree upload as one stream.
//!
//! Two pipelines per transfer and no thread per file: the session task
//! reads entries and hands them to one disk thread (through a channel of
//! at most [`JOBS`] frames), and writes the answers that thread sends back
//! (through a channel of at most [`ACKS`] batches). The disk thread checks
//! each file's whole-file digest before anything is written under its
//! name, writes it to its own staged file (as `put` does), starts its
//! writeback, and collects it into a batch; a batch is committed when it
//! is full or the input pauses: one durability pass for all its files
//! (`transfer::durable`), the renames by identity (`transfer::commit`),
//! one fsync per directory, and only then one `tree_ack` for all of them.
//! A file answered `done` therefore survives a crash, as after `put`.
//!
//! A peer that stops reading stalls the answers, then the disk thread,
//! then the reading of its input (memory stays bounded); a peer that goes
//! away mid-tree leaves nothing at any path it did not get a `done` for
//! (its staged files are removed).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cap_std::fs::Dir;
use skiff_wire::message::files::{Done, End, EntryKind, HashAlg, Mkdir, Put};
use skiff_wire::message::tree::{
    PutTree, TreeAck, TreeDir, TreeDone, TreeFailure, TreeFile, TreeInput, TreeLink, TreeReady,
};
use skiff_wire::{ErrorCode, ErrorMsg, Message};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::put::{commit_msg, make_symlink};
use super::{confine, manage, Change};
use crate::service::ServiceContext;
use crate::session::{Session, SessionError, WRITE_STALL_TIMEOUT};
use crate::transfer::checksum::{digests_match, Checksum};
use crate::transfer::commit::{self, CommitError, Destination, Observed};
use crate::transfer::staging::{StageKey, Staged};
use crate::transfer::{durable, errors, meta};

/// Bytes (file sizes plus [`TreeAck::ENTRY_COST`] per entry) a client may
/// have unanswered: far more than a bandwidth-delay product of loopback
/// or a LAN, so the round-trip time does not limit the speed.
pub const WINDOW_BYTES: u64 = 64 * 1024 * 1024;

/// Frames queued between the network task and the disk thread (each at
/// most one 8 MiB body).
const JOBS: usize = 4;
/// Answer batches queued between the disk thread and the network task.
const ACKS: usize = 4;
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
/// Parent directories kept open for the files that follow.
const PARENTS_MAX: usize = 1024;

/// What the disk thread hands the network task to send.
enum Out {
    Ack(TreeAck),
    Done(TreeDone),
    /// A protocol violation: sent as an error, and the session ends.
    Fatal(ErrorMsg),
}

/// Handles a `put_tree` and everything up to its `tree_done`.
pub async fn receive(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    root: &Dir,
    req: PutTree,
) -> Result<(), SessionError> {
    let root = match root.try_clone() {
        Ok(r) => r,
        Err(e) => return session.queue(&errors::to_msg(&e, "/"), &[]),
    };
    session.queue(
        &TreeReady {
            window: WINDOW_BYTES,
        },
        &[],
    )?;
    session.flush().await?;
    let (job_tx, job_rx) = mpsc::channel::<TreeInput>(JOBS);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(ACKS);
    let worker = Worker::new(ctx.clone(), root, &req);
    let rt = Handle::current();
    let disk = tokio::task::spawn_blocking(move || worker.run(job_rx, out_tx, rt));
    let (reader, writer) = session.split();
    let read = async move {
        loop {
            let msg = ctx.next_input::<TreeInput>(reader).await?;
            let last = matches!(msg, TreeInput::Finish(_));
            if job_tx.send(msg).await.is_err() {
                // The disk thread stopped; the writer reports why.
                return Ok(());
            }
            if last {
                return Ok(());
            }
        }
    };
    let write = async {
        while let Some(out) = out_rx.recv().await {
            match out {
                Out::Ack(a) => writer.queue(&a, &[])?,
                Out::Done(d) => writer.queue(&d, &[])?,
                Out::Fatal(m) => {
                    writer.queue(&m, &[])?;
                    let _ = tokio::time::timeout(WRITE_STALL_TIMEOUT, writer.flush()).await;
                    return Err(SessionError::Unexpected {
                        expected: "a tree entry",
                        got: m.message,
                    });
                }
            }
            if out_rx.is_empty() {
                match tokio::time::timeout(WRITE_STALL_TIMEOUT, writer.flush()).await {
                    Ok(r) => r?,
                    Err(_) => return Err(SessionError::Timeout(WRITE_STALL_TIMEOUT)),
                }
            }
        }
        Ok(())
    };
    let result = tokio::try_join!(read, write);
    // On an error both halves are dropped, so the disk thread sees its
    // channels closed, removes what it had staged and ends.
    let _ = disk.await;
    match result {
        Ok(_) => Ok(()),
        Err(e @ (SessionError::Message(_) | SessionError::Frame(_))) => {
            let _ = session.send_error(e.code(), e.to_string()).await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// A verified file waiting for its batch to be committed.
struct Pending {
    id: u64,
    path: String,
    staged: Staged,
    dest: Destination,
    observed: Observed,
    mode: u32,
    mtime_ns: Option<i64>,
    size: u64,
    digest: String,
}

/// A large file being received in `data` frames.
struct Big {
    head: TreeFile,
    received: u64,
    sum: Checksum,
    /// Where it goes; `None` once it failed (the rest of its data is
    /// discarded up to its `end`).
    target: Option<(Staged, Destination, Observed)>,
}

/// The disk thread of one tree upload.
struct Worker {
    ctx: ServiceContext,
    root: Dir,
    force: bool,
    hash: HashAlg,
    scope: String,
    /// The user's staging directory, opened at the first file.
    staging: Option<Dir>,
    /// Parent directories by path, held open (see `confine::Located`).
    parents: HashMap<String, Dir>,
    batch: Vec<Pending>,
    batch_bytes: u64,
    /// When the last entry arrived.
    last_input: Instant,
    /// How long the last commit took.
    last_commit: Duration,
    /// Entries answered but not yet sent (made durable by the next commit).
    done: Vec<u64>,
    failed: Vec<TreeFailure>,
    /// Directories whose entries changed outside the batch (new
    /// directories, links): fsynced with the next commit.
    dirty_dirs: Vec<Dir>,
    big: Option<Big>,
    totals: TreeDone,
}

impl Worker {
    fn new(ctx: ServiceContext, root: Dir, req: &PutTree) -> Worker {
        let scope = ctx.root.to_string_lossy().into_owned();
        Worker {
            ctx,
            root,
            force: req.force,
            hash: req.hash,
            scope,
            staging: None,
            parents: HashMap::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            last_input: Instant::now(),
            last_commit: Duration::ZERO,
            done: Vec::new(),
            failed: Vec::new(),
            dirty_dirs: Vec::new(),
            big: None,
            totals: TreeDone::default(),
        }
    }

    /// Processes entries until `tree_end` (then commits, answers
    /// `tree_done` and returns) or until either channel closes (then
    /// removes everything staged and returns).
    fn run(mut self, mut rx: mpsc::Receiver<TreeInput>, tx: mpsc::Sender<Out>, rt: Handle) {
        loop {
            let job = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => match self.linger_left() {
                    None => rt.block_on(rx.recv()),
                    Some(left) => match rt.block_on(tokio::time::timeout(left, rx.recv())) {
                        Ok(j) => j,
                        Err(_) => {
                            if !self.commit(&tx) {
                                return self.abort();
                            }
                            continue;
                        }
                    },
                },
            };
            let Some(job) = job else {
                return self.abort();
            };
            self.last_input = Instant::now();
            let before_meta =
                matches!(&job, TreeInput::Dir(d) if d.mode.is_some() || d.mtime_ns.is_some());
            if before_meta && !self.commit(&tx) {
                return self.abort();
            }
            let finish = matches!(job, TreeInput::Finish(_));
            if let Err(m) = self.process(job) {
                let _ = tx.blocking_send(Out::Fatal(m));
                return self.abort();
            }
            if (finish || self.batch_full()) && !self.commit(&tx) {
                return self.abort();
            }
            if finish {
                let _ = tx.blocking_send(Out::Done(std::mem::take(&mut self.totals)));
                return;
            }
        }
    }

    /// How long to wait for more input before committing what is pending:
    /// `None` when nothing is pending.
    fn linger_left(&self) -> Option<Duration> {
        if self.batch.is_empty() && self.done.is_empty() && self.failed.is_empty() {
            return None;
        }
        let linger = (self.last_commit * 2).clamp(LINGER_MIN, LINGER_MAX);
        Some(linger.saturating_sub(self.last_input.elapsed()))
    }

    fn batch_full(&self) -> bool {
        self.batch.len() >= BATCH_FILES
            || self.batch_bytes >= BATCH_BYTES
            || self.done.len() + self.failed.len() >= BATCH_FILES * 4
    }

    /// One entry; `Err` for a protocol violation.
    fn process(&mut self, job: TreeInput) -> Result<(), ErrorMsg> {
        if self.big.is_some() && !matches!(job, TreeInput::Data(_) | TreeInput::End(_)) {
            return Err(bad(
                "a large file's data must end with `end` before the next entry",
            ));
        }
        match job {
            TreeInput::Dir(d) => self.dir(d),
            TreeInput::Files((files, body)) => return self.small_files(files.files, body),
            TreeInput::File(head) => self.big_head(head),
            TreeInput::Data(chunk) => return self.big_data(chunk),
            TreeInput::End(end) => return self.big_end(end),
            TreeInput::Link(l) => self.link(l),
            TreeInput::Finish(_) => {}
        }
        Ok(())
    }

    fn dir(&mut self, d: TreeDir) {
        let req = Mkdir {
            path: d.path.clone(),
            exist_ok: true,
            mode: d.mode,
            mtime_ns: d.mtime_ns,
            ..Default::default()
        };
        let r = manage::mkdir(&self.root, &req).map(|_| ());
        self.record(Mkdir::OP, d.id, &d.path, None, r);
        if let Ok((parent, _)) = self.parent_of(&d.path) {
            if let Ok(p) = parent.try_clone() {
                self.dirty_dirs.push(p);
            }
        }
    }

    fn link(&mut self, l: TreeLink) {
        let req = Put {
            path: l.path.clone(),
            kind: EntryKind::Symlink,
            target: Some(l.target.clone()),
            force: self.force,
            ..Default::default()
        };
        let r = make_symlink(&self.root, &req);
        self.record("symlink", l.id, &l.path, None, r);
        if let Ok((parent, _)) = self.parent_of(&l.path) {
            if let Ok(p) = parent.try_clone() {
                self.dirty_dirs.push(p);
            }
        }
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
                Err(m) => self.record(Put::OP, f.id, &f.path, None, Err(m)),
            }
        }
        Ok(())
    }

    /// Verifies a whole small file and writes it to a staged file.
    fn store_small(&mut self, f: &TreeFile, bytes: &[u8]) -> Result<Pending, ErrorMsg> {
        let mut sum = Checksum::new(self.hash);
        sum.update(bytes);
        let digest = sum.finish_hex();
        if !digests_match(&digest, &f.digest) {
            return Err(mismatch(&f.path, &f.digest, &digest));
        }
        let (dest, observed) = self.destination(&f.path)?;
        let staged = self.stage(&f.path)?;
        let io = |e: std::io::Error| errors::to_msg(&e, &f.path);
        let mode = f.mode.unwrap_or(0o644);
        let written = staged
            .file()
            .write_all_at(bytes, 0)
            .and_then(|()| meta::apply(staged.file(), Some(mode), f.mtime_ns));
        if let Err(e) = written {
            staged.discard();
            return Err(io(e));
        }
        durable::start_writeback(staged.file(), 0, bytes.len() as u64);
        Ok(Pending {
            id: f.id,
            path: f.path.clone(),
            staged,
            dest,
            observed,
            mode,
            mtime_ns: f.mtime_ns,
            size: f.size,
            digest,
        })
    }

    fn big_head(&mut self, head: TreeFile) {
        let target = self.destination(&head.path).and_then(|(dest, observed)| {
            let staged = self.stage(&head.path)?;
            Ok((staged, dest, observed))
        });
        let target = match target {
            Ok(t) => Some(t),
            Err(m) => {
                self.record(Put::OP, head.id, &head.path, None, Err(m));
                None
            }
        };
        self.big = Some(Big {
            head,
            received: 0,
            sum: Checksum::new(self.hash),
            target,
        });
    }

    fn big_data(&mut self, chunk: Bytes) -> Result<(), ErrorMsg> {
        let Some(big) = self.big.as_mut() else {
            return Err(bad("`data` outside a large file"));
        };
        let Some((staged, _, _)) = &big.target else {
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
            match staged.file().write_all_at(&chunk, big.received) {
                Ok(()) => {
                    durable::start_writeback(staged.file(), big.received, len);
                    big.sum.update(&chunk);
                    big.received += len;
                    None
                }
                Err(e) => Some(errors::to_msg(&e, &big.head.path)),
            }
        };
        if let Some(m) = failure {
            if let Some((staged, _, _)) = big.target.take() {
                staged.discard();
            }
            let (id, path) = (big.head.id, big.head.path.clone());
            self.record(Put::OP, id, &path, None, Err(m));
        }
        Ok(())
    }

    fn big_end(&mut self, end: End) -> Result<(), ErrorMsg> {
        let Some(big) = self.big.take() else {
            return Err(bad("`end` outside a large file"));
        };
        let Some((staged, dest, observed)) = big.target else {
            return Ok(());
        };
        let head = big.head;
        let digest = big.sum.finish_hex();
        let mode = head.mode.unwrap_or(0o644);
        let check = if end.abort {
            Err(ErrorMsg::new(
                ErrorCode::Internal,
                format!("{}: upload aborted by the client", head.path),
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
            meta::apply(staged.file(), Some(mode), head.mtime_ns)
                .map_err(|e| errors::to_msg(&e, &head.path))
        };
        match check {
            Ok(()) => self.push(Pending {
                id: head.id,
                path: head.path,
                staged,
                dest,
                observed,
                mode,
                mtime_ns: head.mtime_ns,
                size: head.size,
                digest,
            }),
            Err(m) => {
                staged.discard();
                self.record(Put::OP, head.id, &head.path, None, Err(m));
            }
        }
        Ok(())
    }

    fn push(&mut self, p: Pending) {
        self.batch_bytes += p.size;
        self.batch.push(p);
    }

    /// The parent directory of `path` (held open, cached) and its last
    /// component.
    fn parent_of(&mut self, path: &str) -> Result<(&Dir, String), ErrorMsg> {
        let comps = confine::components(path)?;
        let Some((name, dirs)) = comps.split_last() else {
            return Err(ErrorMsg::new(
                ErrorCode::Permission,
                format!("{}: the path names the server root itself", Put::OP),
            ));
        };
        let key = dirs.join("/");
        let name = (*name).to_string();
        if !self.parents.contains_key(&key) {
            let dir = confine::open_dir(&self.root, dirs).map_err(|e| errors::to_msg(&e, path))?;
            if self.parents.len() >= PARENTS_MAX {
                self.parents.clear();
            }
            self.parents.insert(key.clone(), dir);
        }
        match self.parents.get(&key) {
            Some(d) => Ok((d, name)),
            None => Err(ErrorMsg::new(ErrorCode::Internal, "parent cache")),
        }
    }

    /// Where `path` goes and what is there now (refused without `force`).
    fn destination(&mut self, path: &str) -> Result<(Destination, Observed), ErrorMsg> {
        let force = self.force;
        let (parent, name) = self.parent_of(path)?;
        let dest = Destination {
            dir: parent.try_clone().map_err(|e| errors::to_msg(&e, path))?,
            name,
        };
        let observed = dest.observe(force).map_err(|e| commit_msg(e, path))?;
        Ok((dest, observed))
    }

    /// A new staged file for `path`.
    fn stage(&mut self, path: &str) -> Result<Staged, ErrorMsg> {
        let io = |e: std::io::Error| errors::to_msg(&e, path);
        let comps = confine::components(path)?;
        let key = StageKey::new(&self.scope, &self.ctx.user, &comps.join("/"));
        if self.staging.is_none() {
            self.staging = Some(self.ctx.staging.open_user_dir(&key).map_err(io)?);
        }
        match &self.staging {
            Some(dir) => self.ctx.staging.create_in(dir, &key).map_err(io),
            None => Err(ErrorMsg::new(ErrorCode::Internal, "staging directory")),
        }
    }

    /// Makes the batch durable and in place, then sends the answers
    /// (module docs); `false` when the answers can no longer be sent.
    fn commit(&mut self, tx: &mpsc::Sender<Out>) -> bool {
        let started = Instant::now();
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let files: Vec<&std::fs::File> = batch.iter().map(|p| p.staged.file()).collect();
        let synced = durable::sync_files(&files);
        drop(files);
        let mut renamed = Vec::with_capacity(batch.len());
        for (p, synced) in batch.into_iter().zip(synced) {
            let r = synced.map_err(CommitError::Io).and_then(|()| {
                match commit::rename_into_place(&p.staged, &p.dest, p.observed) {
                    // The staging area is on another file system: copy.
                    Err(CommitError::Io(e)) if e.raw_os_error() == Some(libc::EXDEV) => {
                        commit::commit(&p.staged, &p.dest, p.observed, Some(p.mode), p.mtime_ns)
                    }
                    other => other,
                }
            });
            match r {
                Ok(()) => renamed.push(p),
                Err(e) => {
                    let m = commit_msg(e, &p.path);
                    p.staged.discard();
                    self.record(Put::OP, p.id, &p.path, None, Err(m));
                }
            }
        }
        let dirty = std::mem::take(&mut self.dirty_dirs);
        let dirs = durable::sync_dirs(renamed.iter().map(|p| &p.dest.dir).chain(dirty.iter()));
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
            }
            self.record(Put::OP, p.id, &p.path, Some(&done), r);
        }
        self.last_commit = started.elapsed();
        self.send_answers(tx)
    }

    /// Sends every answer collected, in frames of bounded size.
    fn send_answers(&mut self, tx: &mpsc::Sender<Out>) -> bool {
        let mut done = std::mem::take(&mut self.done);
        let mut failed = std::mem::take(&mut self.failed);
        while !done.is_empty() || !failed.is_empty() {
            let ack = TreeAck {
                done: done.drain(..done.len().min(ACK_IDS)).collect(),
                failed: failed.drain(..failed.len().min(ACK_FAILURES)).collect(),
            };
            if tx.blocking_send(Out::Ack(ack)).is_err() {
                return false;
            }
        }
        true
    }

    /// Notes an entry's outcome for the next `tree_ack` and the audit log.
    fn record(
        &mut self,
        op: &'static str,
        id: u64,
        path: &str,
        done: Option<&Done>,
        r: Result<(), ErrorMsg>,
    ) {
        let change = Change {
            op,
            path: path.to_string(),
            to: None,
        };
        change.record(&self.ctx, done, r.as_ref().map(|_| ()));
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

    /// The client is gone or broke the protocol: nothing staged is kept.
    fn abort(mut self) {
        for p in self.batch.drain(..) {
            p.staged.discard();
        }
        if let Some(Big {
            target: Some((staged, _, _)),
            ..
        }) = self.big.take()
        {
            staged.discard();
        }
    }
}

fn bad(what: &str) -> ErrorMsg {
    ErrorMsg::new(ErrorCode::BadFrame, format!("put_tree: {what}"))
}

fn mismatch(path: &str, sent: &str, computed: &str) -> ErrorMsg {
    errors::msg(
        ErrorCode::ChecksumMismatch,
        path,
        &format!("client sent {sent}, server computed {computed}"),
    )
}
