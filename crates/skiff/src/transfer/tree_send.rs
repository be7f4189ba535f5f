//! The sending side of a tree stream (`put_tree` on the client, `get_tree`
//! on the server; PROTOCOL.md section 7).
//!
//! One blocking thread (the [`Packer`]) reads and hashes each file and
//! packs small files whole into `tree_files` frames (large ones go as a
//! head, `data` chunks and an `end`); the session task writes those frames
//! (`send_frames`) as long as the byte [`Window`] the receiver granted
//! has room, while another task reads the receiver's `tree_ack`s, which
//! answer entries in batches and give the window back. Nothing waits for
//! a per-file answer, so the speed does not depend on the round trip.
//!
//! A file is described by what `fstat` says of the opened file; if its
//! size, mtime or change time differ once it has been read, it changed
//! while being sent and is reported as failed instead (a large file's
//! data is then ended by a `tree_failure` in place of its `end`), so a
//! file that was
//! being written is never delivered as if it were a consistent copy.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff_wire::message::files::{Data, End, HashAlg};
use skiff_wire::message::tree::{
    TreeAck, TreeDir, TreeDone, TreeEnd, TreeFailure, TreeFile, TreeFiles, TreeLink, TreeOutput,
    TreeReady,
};
use skiff_wire::message::Phase;
use skiff_wire::{ErrorCode, ErrorMsg, Message};
use tokio::sync::{mpsc, Semaphore};

use super::checksum::Checksum;
use super::chunk_pool::ChunkPool;
use super::meta::mtime_ns;
use super::{errors, fault, CHUNK};
use crate::session::{SessionError, SessionReader, SessionWriter};

/// Files up to this size travel whole inside a `tree_files` batch.
pub const SMALL_MAX: usize = 256 * 1024;
/// A batch is sent at this many bytes of file data ...
const BATCH_BODY: usize = 1024 * 1024;
/// ... or this many files ...
const BATCH_FILES: usize = 256;
/// ... or when its header would pass this size (headers are limited to
/// 64 KiB).
const BATCH_HEADER: usize = 48 * 1024;
/// Frames queued between the reading thread and the network task.
pub const QUEUE: usize = 8;
/// The smallest window a sender works with: a full batch (1 MiB of data
/// plus [`TreeAck::ENTRY_COST`] per file) must fit, or it would wait for
/// itself.
pub const WINDOW_MIN: u64 = 4 * 1024 * 1024;
/// The largest window a sender uses, whatever the receiver grants.
pub const WINDOW_MAX: u64 = 1 << 30;

/// One frame for the writer, with what it costs in the window and the
/// entries it starts.
pub struct Outgoing {
    frame: Frame,
    /// Window bytes to hold until its entries are answered.
    cost: u64,
    /// File bytes it carries (for a progress display).
    pub bytes: u64,
    entries: Vec<(u64, Sent)>,
}

enum Frame {
    Dir(TreeDir),
    Files(TreeFiles, Bytes),
    Head(TreeFile),
    Data(Bytes),
    End(End),
    Link(TreeLink),
    Failure(TreeFailure),
}

/// An entry sent and not yet answered.
#[derive(Debug, Clone)]
pub struct Sent {
    /// What the user calls it (a local or remote path).
    pub label: String,
    cost: u64,
    /// The file's size (0 for directories and links).
    pub size: u64,
    /// Whether it is a file (counted as one when answered).
    pub is_file: bool,
}

/// The byte window of one transfer and the entries it holds.
pub struct Window {
    total: u64,
    permits: Semaphore,
    outstanding: Mutex<HashMap<u64, Sent>>,
    /// When a frame was last written (ms since `epoch`): a sender that is
    /// making progress is not a stalled peer.
    last_write: AtomicU64,
    epoch: Instant,
    /// How long the receiver may answer nothing while nothing is written
    /// either (`None`: as long as the connection stays up).
    idle: Option<Duration>,
}

impl Window {
    /// A window of `bytes` (clamped to [`WINDOW_MIN`]..=[`WINDOW_MAX`]);
    /// a receiver silent for `idle` (the session's idle timeout on a
    /// server, the I/O timeout on a client) while nothing could be written
    /// is given up on with [`SessionError::Stalled`].
    pub fn new(bytes: u64, idle: Option<Duration>) -> Window {
        let total = bytes.clamp(WINDOW_MIN, WINDOW_MAX);
        Window {
            total,
            // usize holds any window on the platforms skiff runs on.
            permits: Semaphore::new(usize::try_from(total).unwrap_or(usize::MAX >> 4)),
            outstanding: Mutex::new(HashMap::new()),
            last_write: AtomicU64::new(0),
            epoch: Instant::now(),
            idle,
        }
    }

    /// The window in bytes.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// What a large file holds of the window: half of it, so two can be
    /// in flight and one never waits for itself.
    pub fn head_cost(&self) -> u64 {
        self.total / 2
    }

    /// Entry `id` was answered: gives its bytes back.
    fn answered(&self, id: u64) -> Option<Sent> {
        let sent = self.outstanding.lock().ok().and_then(|mut o| o.remove(&id));
        if let Some(s) = &sent {
            self.permits
                .add_permits(usize::try_from(s.cost).unwrap_or(0));
        }
        sent
    }

    fn wrote(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_write.store(ms, Ordering::Relaxed);
    }

    fn writing_recently(&self, limit: Duration) -> bool {
        let now = self.epoch.elapsed().as_millis();
        let last = u128::from(self.last_write.load(Ordering::Relaxed));
        now.saturating_sub(last) < limit.as_millis()
    }

    /// Waits for `cost` bytes of window; sends what is buffered first,
    /// since the answers that give the window back may wait for it. A
    /// receiver that answers nothing for the idle limit is given up on.
    async fn take(&self, writer: &mut SessionWriter<'_>, cost: u64) -> Result<(), SessionError> {
        let n = u32::try_from(cost.min(self.total)).unwrap_or(u32::MAX);
        if n == 0 {
            return Ok(());
        }
        match self.permits.try_acquire_many(n) {
            Ok(p) => p.forget(),
            Err(_) => {
                writer.flush().await?;
                match crate::maybe::timeout(self.idle, self.permits.acquire_many(n)).await {
                    Ok(Ok(p)) => p.forget(),
                    Ok(Err(_)) => return Err(SessionError::Closed),
                    Err(d) => return Err(SessionError::Stalled(d)),
                }
            }
        }
        Ok(())
    }
}

/// Writes every frame the packer produces under the window, then
/// `tree_end`; `on_frame` is told each frame's file bytes once written.
async fn send_frames(
    writer: &mut SessionWriter<'_>,
    rx: &mut mpsc::Receiver<Outgoing>,
    window: &Window,
    on_frame: impl Fn(u64),
) -> Result<(), SessionError> {
    while let Some(out) = rx.recv().await {
        window.take(writer, out.cost).await?;
        if let Ok(mut o) = window.outstanding.lock() {
            o.extend(out.entries);
        }
        fault::maybe_delay().await;
        match out.frame {
            Frame::Dir(m) => writer.write(&m, &[]).await?,
            Frame::Files(m, body) => writer.write_shared(&m, body).await?,
            Frame::Head(m) => writer.write(&m, &[]).await?,
            Frame::Data(body) => writer.write_shared(&Data {}, body).await?,
            Frame::End(m) => writer.write(&m, &[]).await?,
            Frame::Link(m) => writer.write(&m, &[]).await?,
            Frame::Failure(m) => writer.write(&m, &[]).await?,
        }
        window.wrote();
        on_frame(out.bytes);
        if rx.is_empty() {
            writer.flush().await?;
        }
    }
    writer.queue(&TreeEnd {}, &[])?;
    writer.flush().await?;
    window.wrote();
    Ok(())
}

/// What the receiver answered, entry by entry.
pub struct Answered {
    /// Entries done.
    pub done: Vec<Sent>,
    /// Entries that failed: what was sent (when known) and why.
    pub failed: Vec<(Option<Sent>, TreeFailure)>,
}

/// Runs the network side of a sender: writes what the packer produces
/// (through `rx`) under `window` while reading the receiver's answers,
/// handing each batch to `on_answer`, until its `tree_done`.
pub async fn exchange(
    reader: &mut SessionReader<'_>,
    writer: &mut SessionWriter<'_>,
    rx: &mut mpsc::Receiver<Outgoing>,
    window: &Window,
    on_frame: impl Fn(u64),
    mut on_answer: impl FnMut(Answered),
) -> Result<TreeDone, SessionError> {
    let send = send_frames(writer, rx, window, on_frame);
    let receive = async {
        loop {
            match recv_answer::<TreeOutput>(reader, window).await? {
                TreeOutput::Ack(ack) => on_answer(apply_ack(window, ack)),
                TreeOutput::Done(d) => return Ok(d),
                TreeOutput::Error(m) => return Err(SessionError::Remote(m)),
                TreeOutput::Ready(_) => {
                    return Err(SessionError::Unexpected {
                        expected: "tree_ack",
                        got: TreeReady::OP.to_string(),
                    })
                }
            }
        }
    };
    let ((), done) = tokio::try_join!(send, receive)?;
    Ok(done)
}

/// The receiver's next answer. Answers come only once a batch is durable
/// and a large file may take long to send, so silence is a stalled peer
/// only when nothing was written for the window's idle limit either.
async fn recv_answer<P: Phase>(
    reader: &mut SessionReader<'_>,
    window: &Window,
) -> Result<P, SessionError> {
    loop {
        match crate::maybe::timeout(window.idle, reader.recv_msg::<P>()).await {
            Ok(r) => return r,
            Err(d) if window.writing_recently(d) => continue,
            Err(d) => return Err(SessionError::Stalled(d)),
        }
    }
}

/// Gives the window back for every entry `ack` answers.
fn apply_ack(window: &Window, ack: TreeAck) -> Answered {
    Answered {
        done: ack
            .done
            .into_iter()
            .filter_map(|id| window.answered(id))
            .collect(),
        failed: ack
            .failed
            .into_iter()
            .map(|f| (window.answered(f.id), f))
            .collect(),
    }
}

/// The small files gathered for one `tree_files` frame.
#[derive(Default)]
struct Batch {
    files: Vec<TreeFile>,
    /// The files' bytes, back to back, in a buffer from the packer's pool.
    body: Vec<u8>,
    header: usize,
    entries: Vec<(u64, Sent)>,
}

/// A file to send: opened by the caller (who decides how: no symlinks
/// followed, beneath which root), described by `fstat` here.
pub struct SendFile {
    /// The entry's number.
    pub id: u64,
    /// Its path as the receiver names it.
    pub path: String,
    /// What the user calls it.
    pub label: String,
    /// The opened file.
    pub file: File,
}

/// The reading thread: turns entries into frames, in order. Every method
/// returns `false` once the network side is gone (stop walking).
pub struct Packer {
    tx: mpsc::Sender<Outgoing>,
    hash: HashAlg,
    head_cost: u64,
    batch: Batch,
    /// Buffers for batch bodies and large files' chunks, recycled.
    pool: ChunkPool,
}

impl Packer {
    /// A packer sending to `tx`, hashing with `hash`, holding `head_cost`
    /// window bytes per large file (see [`Window::head_cost`]).
    pub fn new(tx: mpsc::Sender<Outgoing>, hash: HashAlg, head_cost: u64) -> Packer {
        Packer {
            tx,
            hash,
            head_cost,
            batch: Batch::default(),
            pool: ChunkPool::new(),
        }
    }

    fn send(&self, out: Outgoing) -> bool {
        self.tx.blocking_send(out).is_ok()
    }

    fn one(&mut self, frame: Frame, cost: u64, entries: Vec<(u64, Sent)>) -> bool {
        self.flush()
            && self.send(Outgoing {
                frame,
                cost,
                bytes: 0,
                entries,
            })
    }

    fn entry(id: u64, label: &str, size: u64, is_file: bool, cost: u64) -> Vec<(u64, Sent)> {
        vec![(
            id,
            Sent {
                label: label.to_string(),
                cost,
                size,
                is_file,
            },
        )]
    }

    /// A directory (create, or with mode/mtime: finish).
    pub fn dir(&mut self, d: TreeDir) -> bool {
        let e = Self::entry(d.id, &d.path, 0, false, TreeAck::ENTRY_COST);
        self.one(Frame::Dir(d), TreeAck::ENTRY_COST, e)
    }

    /// A symlink.
    pub fn link(&mut self, l: TreeLink) -> bool {
        let e = Self::entry(l.id, &l.path, 0, false, TreeAck::ENTRY_COST);
        self.one(Frame::Link(l), TreeAck::ENTRY_COST, e)
    }

    /// An entry that could not be read: the receiver answers it as failed.
    pub fn failure(&mut self, id: u64, label: &str, is_file: bool, err: ErrorMsg) -> bool {
        let e = Self::entry(id, label, 0, is_file, TreeAck::ENTRY_COST);
        let f = TreeFailure {
            id,
            code: err.code,
            message: err.message,
        };
        self.one(Frame::Failure(f), TreeAck::ENTRY_COST, e)
    }

    /// A file: whole in the current batch when small, else head, chunks
    /// and end.
    pub fn file(&mut self, f: SendFile) -> bool {
        let io = |e: &std::io::Error| errors::to_msg(e, &f.label);
        let before = match f.file.metadata() {
            Ok(md) => md,
            Err(e) => return self.failure(f.id, &f.label, true, io(&e)),
        };
        if !before.is_file() {
            let m = errors::msg(ErrorCode::Unsupported, &f.label, "not a regular file");
            return self.failure(f.id, &f.label, true, m);
        }
        if before.len() as usize > SMALL_MAX {
            return self.large(f, &before);
        }
        // Exactly the announced size: whether the file grew meanwhile is
        // for `changed`'s second look to say, not for a read that finds
        // its end (one system call per small file instead of two).
        let mut data = vec![0u8; before.len() as usize];
        let read = read_full(&f.file, &mut data).and_then(|got| {
            data.truncate(got);
            changed(&f.file, &before, got as u64)
        });
        match read {
            Ok(()) => self.small(f, &before, data),
            Err(e) => self.failure(f.id, &f.label, true, io(&e)),
        }
    }

    /// Adds a whole small file to the current batch.
    fn small(&mut self, f: SendFile, md: &std::fs::Metadata, data: Vec<u8>) -> bool {
        let header = f.path.len() + 160;
        let b = &self.batch;
        if !b.files.is_empty()
            && (b.body.len() + data.len() > BATCH_BODY
                || b.files.len() >= BATCH_FILES
                || b.header + header > BATCH_HEADER)
            && !self.flush()
        {
            return false;
        }
        let mut sum = Checksum::new(self.hash);
        sum.update(&data);
        let data = fault::maybe_corrupt(0, Bytes::from(data));
        let size = data.len() as u64;
        let cost = size + TreeAck::ENTRY_COST;
        if self.batch.body.capacity() == 0 {
            self.batch.body = self.pool.buffer(BATCH_BODY);
        }
        let b = &mut self.batch;
        b.files.push(TreeFile {
            id: f.id,
            path: f.path,
            size,
            mode: Some(md.mode()),
            mtime_ns: Some(mtime_ns(md)),
            digest: sum.finish_hex(),
        });
        b.body.extend_from_slice(&data);
        b.header += header;
        b.entries
            .extend(Self::entry(f.id, &f.label, size, true, cost));
        true
    }

    /// Sends the current batch, if any.
    fn flush(&mut self) -> bool {
        if self.batch.files.is_empty() {
            return true;
        }
        let b = std::mem::take(&mut self.batch);
        let cost = b.entries.iter().map(|(_, s)| s.cost).sum();
        let bytes = b.body.len() as u64;
        let body = self.pool.lend(b.body);
        self.send(Outgoing {
            frame: Frame::Files(TreeFiles { files: b.files }, body),
            cost,
            bytes,
            entries: b.entries,
        })
    }

    /// A large file: head, chunks, end.
    fn large(&mut self, f: SendFile, md: &std::fs::Metadata) -> bool {
        let size = md.len();
        let cost = size.min(self.head_cost) + TreeAck::ENTRY_COST;
        let head = TreeFile {
            id: f.id,
            path: f.path.clone(),
            size,
            mode: Some(md.mode()),
            mtime_ns: Some(mtime_ns(md)),
            digest: String::new(),
        };
        let e = Self::entry(f.id, &f.label, size, true, cost);
        if !self.one(Frame::Head(head), cost, e) {
            return false;
        }
        let mut sum = Checksum::new(self.hash);
        let mut sent = 0u64;
        let mut index = 0u64;
        let mut reader = (&f.file).take(size);
        let result = loop {
            let buf = match self.pool.read(&mut reader, CHUNK) {
                Ok(buf) => buf,
                Err(e) => return self.abort_large(&f, &e),
            };
            let filled = buf.len();
            if filled == 0 {
                break changed(&f.file, md, sent);
            }
            sum.update(&buf);
            sent += filled as u64;
            let chunk = fault::maybe_corrupt(index, buf);
            index += 1;
            let out = Outgoing {
                frame: Frame::Data(chunk),
                cost: 0,
                bytes: filled as u64,
                entries: Vec::new(),
            };
            if !self.send(out) {
                return false;
            }
        };
        match result {
            Ok(()) => {
                let end = End {
                    size: sent,
                    digest: sum.finish_hex(),
                    abort: false,
                };
                self.one(Frame::End(end), 0, Vec::new())
            }
            Err(e) => self.abort_large(&f, &e),
        }
    }

    /// Ends a large file's data early: a `tree_failure` for its id in
    /// place of its `end`; the receiver discards what it got and answers
    /// the file as failed, with this reason.
    fn abort_large(&mut self, f: &SendFile, e: &std::io::Error) -> bool {
        let m = errors::to_msg(e, &f.label);
        let failure = TreeFailure {
            id: f.id,
            code: m.code,
            message: m.message,
        };
        self.one(Frame::Failure(failure), 0, Vec::new())
    }

    /// Sends what is batched; call at the end of the walk.
    pub fn finish(&mut self) -> bool {
        self.flush()
    }
}

/// Reads into all of `buf` unless the file ends first; how much was read.
fn read_full(mut file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// `Err` when the file is no longer what `before` described (`got` bytes
/// were read): it changed while it was being sent.
fn changed(file: &File, before: &std::fs::Metadata, got: u64) -> std::io::Result<()> {
    let after = file.metadata()?;
    if got != before.len()
        || after.len() != before.len()
        || after.mtime() != before.mtime()
        || after.mtime_nsec() != before.mtime_nsec()
        || after.ctime() != before.ctime()
        || after.ctime_nsec() != before.ctime_nsec()
    {
        return Err(std::io::Error::other(
            "the file changed while it was being sent; not copied (run the command again)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_written_while_it_is_read_is_caught() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let file = File::open(&path).unwrap();
        let before = file.metadata().unwrap();
        assert!(changed(&file, &before, 3).is_ok());
        assert!(changed(&file, &before, 2).is_err(), "short read");
        std::thread::sleep(std::time::Duration::from_millis(10));
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        w.write_all(b"d").unwrap();
        assert!(changed(&file, &before, 3).is_err(), "grew");
    }
}
