//! `put -r` as one stream (`put_tree`, PROTOCOL.md section 7).
//!
//! One reader pipeline and one writer pipeline per transfer, no thread
//! per file: a single blocking thread walks the planned jobs, reads and
//! hashes each file and packs small files whole into `tree_files` frames
//! (large ones go as a head, `data` chunks and an `end`); the session task
//! writes those frames as long as the window the server granted has room,
//! while a second task reads the server's `tree_ack`s, which answer files
//! in batches, asynchronously, and give the window back. Nothing waits
//! for a per-file answer, so the speed does not depend on the round trip.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use skiff_wire::message::files::{Data, End, HashAlg};
use skiff_wire::message::tree::{
    PutTree, TreeAck, TreeDir, TreeEnd, TreeFile, TreeFiles, TreeLink, TreeOutput,
};
use skiff_wire::ErrorCode;
use tokio::sync::{mpsc, Semaphore};

use super::progress::Progress;
use super::upload::{local_failure, FileJob, Job};
use super::{recv_msg, Failure, Options, Summary};
use crate::client::ClientError;
use crate::session::{Session, SessionError, SessionWriter};
use crate::transfer::checksum::Checksum;
use crate::transfer::{fault, CHUNK};

/// Files up to this size travel whole inside a `tree_files` batch.
const SMALL_MAX: usize = 256 * 1024;
/// A batch is sent at this many bytes of file data ...
const BATCH_BODY: usize = 1024 * 1024;
/// ... or this many files ...
const BATCH_FILES: usize = 256;
/// ... or when its header would pass this size (headers are limited to
/// 64 KiB).
const BATCH_HEADER: usize = 48 * 1024;
/// Frames queued between the reading thread and the network task.
const QUEUE: usize = 8;
/// The largest window the client uses, whatever the server grants.
const WINDOW_MAX: u64 = 1 << 30;

/// How the server answered `put_tree`.
pub(super) enum Start {
    /// Go ahead, with this window in bytes.
    Ready(u64),
    /// The server refused the tree as a whole.
    Refused(Failure),
    /// The server does not know `put_tree`: use one `put` per file.
    Unsupported,
}

/// Asks the server for a tree upload.
pub(super) async fn start(session: &mut Session<'_>, opts: &Options) -> Result<Start, ClientError> {
    let req = PutTree {
        force: opts.force,
        hash: opts.hash,
    };
    session.send(&req, &[]).await?;
    let (reader, _) = session.split();
    match recv_msg::<TreeOutput>(reader).await? {
        TreeOutput::Ready(r) => Ok(Start::Ready(r.window.clamp(1, WINDOW_MAX))),
        TreeOutput::Error(m) if m.code == ErrorCode::Unsupported => Ok(Start::Unsupported),
        TreeOutput::Error(m) => Ok(Start::Refused(m.into())),
        other => Err(unexpected("tree_ready", other.op())),
    }
}

/// One frame for the writer, with what it costs in the window and the
/// entries it starts.
struct Outgoing {
    frame: Frame,
    /// Window bytes to hold until its entries are answered.
    cost: u64,
    /// File bytes it carries (for the progress bar).
    bytes: u64,
    entries: Vec<(u64, Sent)>,
}

enum Frame {
    Dir(TreeDir),
    Files(TreeFiles, Bytes),
    Head(TreeFile),
    Data(Bytes),
    End(End),
    Link(TreeLink),
    /// A local failure, reported with the others (nothing is sent).
    Local(Failure),
}

/// An entry sent and not yet answered.
struct Sent {
    label: String,
    cost: u64,
    size: u64,
    is_file: bool,
}

/// Streams every job; returns once the server answered them all.
pub(super) async fn stream(
    session: &mut Session<'_>,
    jobs: Vec<Job>,
    window: u64,
    opts: &Options,
    progress: &Progress,
    summary: &mut Summary,
) -> Result<(), ClientError> {
    let (reader, writer) = session.split();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(QUEUE);
    let hash = opts.hash;
    let head_cost = window / 2;
    let producer = tokio::task::spawn_blocking(move || produce(jobs, hash, head_cost, &tx));
    // Permits are window bytes; usize holds any window on the platforms
    // skiff runs on.
    let permits = Arc::new(Semaphore::new(
        usize::try_from(window).unwrap_or(usize::MAX >> 4),
    ));
    let outstanding = Mutex::new(HashMap::<u64, Sent>::new());
    let failures = Mutex::new(Vec::<Failure>::new());
    let fail = |f: Failure| {
        if let Ok(mut v) = failures.lock() {
            v.push(f);
        }
    };
    let send = async {
        while let Some(out) = rx.recv().await {
            if let Frame::Local(f) = out.frame {
                fail(f);
                continue;
            }
            take_window(writer, &permits, out.cost).await?;
            if let Ok(mut o) = outstanding.lock() {
                o.extend(out.entries);
            }
            fault::maybe_delay().await;
            write_frame(writer, out.frame).await?;
            progress.add(out.bytes);
            if rx.is_empty() {
                writer.flush().await?;
            }
        }
        writer.queue(&TreeEnd {}, &[])?;
        writer.flush().await?;
        Ok::<_, ClientError>(())
    };
    let receive = async {
        let (mut files, mut bytes) = (0u64, 0u64);
        loop {
            let ack: TreeAck = match recv_msg::<TreeOutput>(reader).await? {
                TreeOutput::Ack(a) => a,
                TreeOutput::Done(_) => break,
                TreeOutput::Error(m) => return Err(ClientError::Session(SessionError::Remote(m))),
                other => return Err(unexpected("tree_ack", other.op())),
            };
            let answered = |id: u64| {
                let sent = outstanding.lock().ok().and_then(|mut o| o.remove(&id));
                if let Some(s) = &sent {
                    permits.add_permits(usize::try_from(s.cost).unwrap_or(0));
                }
                sent
            };
            for id in ack.done {
                if let Some(s) = answered(id) {
                    if s.is_file {
                        files += 1;
                        bytes += s.size;
                        progress.file_done(&s.label);
                    }
                }
            }
            for f in ack.failed {
                let sent = answered(f.id);
                if let Some(s) = sent.as_ref().filter(|s| s.is_file) {
                    progress.file_done(&s.label);
                }
                let label = sent.map(|s| s.label).unwrap_or_default();
                let message = if label.is_empty() || f.message.contains(&label) {
                    f.message
                } else {
                    format!("{label}: {}", f.message)
                };
                fail(Failure {
                    code: f.code,
                    message,
                });
            }
        }
        Ok::<_, ClientError>((files, bytes))
    };
    let result = tokio::try_join!(send, receive);
    // On an error the channel is gone and the reading thread stops.
    drop(rx);
    let _ = producer.await;
    let ((), (files, bytes)) = result?;
    summary.files += files;
    summary.bytes += bytes;
    summary
        .failures
        .extend(failures.into_inner().unwrap_or_default());
    Ok(())
}

/// Waits for `cost` bytes of window; sends what is buffered first, since
/// the answers that give the window back may wait for it.
async fn take_window(
    writer: &mut SessionWriter<'_>,
    permits: &Semaphore,
    cost: u64,
) -> Result<(), ClientError> {
    let n = u32::try_from(cost).unwrap_or(u32::MAX);
    if n == 0 {
        return Ok(());
    }
    match permits.try_acquire_many(n) {
        Ok(p) => p.forget(),
        Err(_) => {
            writer.flush().await?;
            permits
                .acquire_many(n)
                .await
                .map_err(|_| ClientError::Session(SessionError::Closed))?
                .forget();
        }
    }
    Ok(())
}

async fn write_frame(writer: &mut SessionWriter<'_>, frame: Frame) -> Result<(), SessionError> {
    match frame {
        Frame::Dir(m) => writer.write(&m, &[]).await,
        Frame::Files(m, body) => writer.write(&m, &body).await,
        Frame::Head(m) => writer.write(&m, &[]).await,
        Frame::Data(body) => writer.write(&Data {}, &body).await,
        Frame::End(m) => writer.write(&m, &[]).await,
        Frame::Link(m) => writer.write(&m, &[]).await,
        Frame::Local(_) => Ok(()),
    }
}

fn unexpected(expected: &'static str, got: &str) -> ClientError {
    ClientError::Session(SessionError::Unexpected {
        expected,
        got: got.to_string(),
    })
}

/// The small files gathered for one `tree_files` frame.
#[derive(Default)]
struct Batch {
    files: Vec<TreeFile>,
    body: BytesMut,
    header: usize,
    entries: Vec<(u64, Sent)>,
}

/// The reading thread: turns jobs into frames, in order.
struct Producer<'a> {
    tx: &'a mpsc::Sender<Outgoing>,
    hash: HashAlg,
    /// What a large file holds of the window (half of it, so two can be
    /// in flight and one never waits for itself).
    head_cost: u64,
    batch: Batch,
}

/// Walks the jobs on a blocking thread; stops early when the network
/// side is gone.
fn produce(jobs: Vec<Job>, hash: HashAlg, head_cost: u64, tx: &mpsc::Sender<Outgoing>) {
    let mut p = Producer {
        tx,
        hash,
        head_cost,
        batch: Batch::default(),
    };
    for (id, job) in (0u64..).zip(jobs) {
        if !p.job(id, job) {
            return;
        }
    }
    p.flush_batch();
}

impl Producer<'_> {
    fn send(&self, out: Outgoing) -> bool {
        self.tx.blocking_send(out).is_ok()
    }

    fn one(&mut self, frame: Frame, cost: u64, bytes: u64, entries: Vec<(u64, Sent)>) -> bool {
        self.flush_batch()
            && self.send(Outgoing {
                frame,
                cost,
                bytes,
                entries,
            })
    }

    fn job(&mut self, id: u64, job: Job) -> bool {
        let entry = |label: &str, size: u64, is_file: bool, cost: u64| {
            vec![(
                id,
                Sent {
                    label: label.to_string(),
                    cost,
                    size,
                    is_file,
                },
            )]
        };
        match job {
            Job::Mkdir(m) => {
                let e = entry(&m.path, 0, false, TreeAck::ENTRY_COST);
                let dir = TreeDir {
                    id,
                    path: m.path,
                    mode: m.mode,
                    mtime_ns: m.mtime_ns,
                };
                self.one(Frame::Dir(dir), TreeAck::ENTRY_COST, 0, e)
            }
            Job::Symlink { remote, target } => {
                let e = entry(&remote, 0, false, TreeAck::ENTRY_COST);
                let link = TreeLink {
                    id,
                    path: remote,
                    target,
                };
                self.one(Frame::Link(link), TreeAck::ENTRY_COST, 0, e)
            }
            Job::File(f) => {
                let data = if f.size as usize <= SMALL_MAX {
                    match read_small(&f) {
                        Ok(d) => Some(d),
                        Err(e) => {
                            let failure = local_failure(&f.local, &e);
                            return self.one(Frame::Local(failure), 0, 0, Vec::new());
                        }
                    }
                } else {
                    None
                };
                match data {
                    Some(d) if d.len() <= SMALL_MAX => self.small(id, &f, d),
                    // Large, or a small file that grew since it was listed.
                    _ => self.large(id, &f),
                }
            }
        }
    }

    /// Adds a whole small file to the current batch.
    fn small(&mut self, id: u64, f: &FileJob, data: Vec<u8>) -> bool {
        let header = f.remote.len() + 160;
        let b = &self.batch;
        if !b.files.is_empty()
            && (b.body.len() + data.len() > BATCH_BODY
                || b.files.len() >= BATCH_FILES
                || b.header + header > BATCH_HEADER)
            && !self.flush_batch()
        {
            return false;
        }
        let mut sum = Checksum::new(self.hash);
        sum.update(&data);
        let data = fault::maybe_corrupt(0, Bytes::from(data));
        let size = data.len() as u64;
        let cost = size + TreeAck::ENTRY_COST;
        let b = &mut self.batch;
        b.files.push(TreeFile {
            id,
            path: f.remote.clone(),
            size,
            mode: Some(f.mode),
            mtime_ns: Some(f.mtime_ns),
            digest: sum.finish_hex(),
        });
        b.body.extend_from_slice(&data);
        b.header += header;
        b.entries.push((
            id,
            Sent {
                label: f.remote.clone(),
                cost,
                size,
                is_file: true,
            },
        ));
        true
    }

    /// Sends the current batch, if any.
    fn flush_batch(&mut self) -> bool {
        if self.batch.files.is_empty() {
            return true;
        }
        let b = std::mem::take(&mut self.batch);
        let cost = b.entries.iter().map(|(_, s)| s.cost).sum();
        let bytes = b.body.len() as u64;
        self.send(Outgoing {
            frame: Frame::Files(TreeFiles { files: b.files }, b.body.freeze()),
            cost,
            bytes,
            entries: b.entries,
        })
    }

    /// A large file: head, chunks, end.
    fn large(&mut self, id: u64, f: &FileJob) -> bool {
        let cost = f.size.min(self.head_cost) + TreeAck::ENTRY_COST;
        let head = TreeFile {
            id,
            path: f.remote.clone(),
            size: f.size,
            mode: Some(f.mode),
            mtime_ns: Some(f.mtime_ns),
            digest: String::new(),
        };
        let sent = Sent {
            label: f.remote.clone(),
            cost,
            size: f.size,
            is_file: true,
        };
        if !self.one(Frame::Head(head), cost, 0, vec![(id, sent)]) {
            return false;
        }
        let mut sum = Checksum::new(self.hash);
        let mut size = 0u64;
        let mut index = 0u64;
        let mut chunk_out = |p: &mut Self, chunk: Vec<u8>| {
            sum.update(&chunk);
            size += chunk.len() as u64;
            let chunk = fault::maybe_corrupt(index, Bytes::from(chunk));
            index += 1;
            let n = chunk.len() as u64;
            p.send(Outgoing {
                frame: Frame::Data(chunk),
                cost: 0,
                bytes: n,
                entries: Vec::new(),
            })
        };
        let end = match read_chunks(f, |chunk| chunk_out(self, chunk)) {
            Ok(true) => End {
                size,
                digest: sum.finish_hex(),
                abort: false,
            },
            Ok(false) => return false,
            Err(e) => {
                let failure = local_failure(&f.local, &e);
                if !self.one(Frame::Local(failure), 0, 0, Vec::new()) {
                    return false;
                }
                End {
                    abort: true,
                    ..Default::default()
                }
            }
        };
        self.one(Frame::End(end), 0, 0, Vec::new())
    }
}

fn open(f: &FileJob) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&f.local)
}

/// A small file's bytes (a little more than [`SMALL_MAX`] at most, when it
/// grew since it was listed).
fn read_small(f: &FileJob) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(f.size as usize);
    open(f)?.take(SMALL_MAX as u64 + 1).read_to_end(&mut data)?;
    Ok(data)
}

/// Reads a large file in [`CHUNK`]s, handing each to `out` (`false` from
/// `out` stops: the network side is gone).
fn read_chunks(f: &FileJob, mut out: impl FnMut(Vec<u8>) -> bool) -> std::io::Result<bool> {
    let mut file = open(f)?;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            let n = file.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(true);
        }
        buf.truncate(filled);
        if !out(buf) {
            return Ok(false);
        }
        if filled < CHUNK {
            return Ok(true);
        }
    }
}
