//! `put --streams N`: one large file over N connections, for links where
//! one TCP stream cannot fill the bandwidth (a long round trip).
//!
//! The session the command already has opens the upload (`put_open`) and
//! sends the first range; N-1 more connections, each authenticated with
//! the normal handshake, join it by the id the server returned
//! (`put_join`) and send one range each. The whole-file digest is computed
//! on a thread of its own while the ranges go out, and closes the upload
//! on the first connection only once every other range was answered; the
//! server then verifies the whole file and commits it as a single `put`
//! would. Any failed stream aborts the upload: nothing is committed.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use skiff_wire::message::files::{Data, Done, End, FilesReply, OkReply, Ready};
use skiff_wire::message::streams::{Opened, PutJoin, PutOpen};
use skiff_wire::{ErrorCode, Message};
use tokio::sync::{mpsc, oneshot, watch};

use super::progress::Progress;
use super::upload::{local_failure, FileJob};
use super::{failure_or_protocol, recv_msg, Failure, Options};
use crate::client::{Client, ClientError};
use crate::session::{Session, SessionReader, SessionWriter};
use crate::transfer::checksum::Checksum;
use crate::transfer::chunk_pool::ChunkPool;
use crate::transfer::pipeline::hash_prefix;
use crate::transfer::{CHUNK, WINDOW};

/// The service a server lists in `welcome` when it takes uploads over
/// several connections.
pub const SERVICE: &str = PutOpen::OP;

/// Most connections one upload uses (the server's limit too).
pub const MAX_STREAMS: u32 = 16;

/// No range is made smaller than this: below it another connection's
/// handshake costs more than it gains.
pub const MIN_RANGE: u64 = 8 * CHUNK as u64;

/// Opens one more authenticated connection to the same server.
pub type Connect =
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Client, ClientError>> + Send>> + Send + Sync;

/// How many connections a large upload may use, and how to open them.
#[derive(Clone)]
pub struct Streams {
    /// Connections per file, this session's included (2 to
    /// [`MAX_STREAMS`]).
    pub count: u32,
    /// Opens each further connection.
    pub connect: Arc<Connect>,
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// The ranges `(offset, length)` of a `size`-byte file for at most `n`
/// streams: whole chunks, equal but for the last, none below
/// [`MIN_RANGE`]. One range means: upload it the ordinary way.
pub fn ranges(size: u64, n: u32) -> Vec<(u64, u64)> {
    let n = u64::from(n.clamp(1, MAX_STREAMS))
        .min(size / MIN_RANGE)
        .max(1);
    let chunk = CHUNK as u64;
    let per = size.div_ceil(n).div_ceil(chunk) * chunk;
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < size {
        let len = per.min(size - offset);
        out.push((offset, len));
        offset += len;
    }
    if out.is_empty() {
        out.push((0, 0));
    }
    out
}

/// Uploads `job` over `ranges.len()` connections (this session opens
/// it); its size, or the failure that left nothing committed. Only an
/// error of this session is an `Err`.
pub(super) async fn put(
    session: &mut Session<'_>,
    streams: &Streams,
    job: &FileJob,
    ranges: &[(u64, u64)],
    opts: &Options,
    progress: &Progress,
) -> Result<Result<u64, Failure>, ClientError> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&job.local)
    {
        Ok(f) => Arc::new(f),
        Err(e) => {
            progress.skip(job.size);
            return Ok(Err(local_failure(&job.local, &e)));
        }
    };
    let failed = Arc::new(AtomicBool::new(false));
    let digest = spawn_hash(file.clone(), job.size, opts);
    let (id_tx, id_rx) = watch::channel(None::<Option<String>>);
    let (others_tx, others_rx) = oneshot::channel();
    let mut tasks = Vec::new();
    for &(offset, length) in &ranges[1..] {
        let join = Joiner {
            connect: streams.connect.clone(),
            file: file.clone(),
            id: id_rx.clone(),
            failed: failed.clone(),
            progress: progress.clone(),
            label: job.remote.clone(),
        };
        tasks.push(tokio::spawn(join.run(offset, length)));
    }
    drop(id_rx);
    let gather = {
        let failed = failed.clone();
        async move {
            let mut first = None;
            for t in tasks {
                let r = match t.await {
                    Ok(r) => r,
                    Err(e) => Err(failure(format!("a stream's task failed: {e}"))),
                };
                if let Err(f) = r {
                    failed.store(true, Ordering::SeqCst);
                    first.get_or_insert(f);
                }
            }
            let _ = others_tx.send(first.map_or(Ok(()), Err));
        }
    };
    let open = PutOpen {
        path: job.remote.clone(),
        size: job.size,
        length: ranges[0].1,
        streams: ranges.len() as u32,
        mode: Some(job.mode),
        mtime_ns: Some(job.mtime_ns),
        hash: opts.hash,
        force: opts.force,
    };
    let first = Opener {
        file,
        failed,
        progress: progress.clone(),
    };
    let (r, ()) = tokio::join!(first.run(session, open, id_tx, others_rx, digest), gather);
    r
}

/// A failure of the upload as a whole (not the server's word).
fn failure(message: String) -> Failure {
    Failure {
        code: ErrorCode::Internal,
        message,
    }
}

/// The whole-file digest, computed on a blocking thread while the ranges
/// are sent.
fn spawn_hash(
    file: Arc<File>,
    size: u64,
    opts: &Options,
) -> tokio::task::JoinHandle<io::Result<String>> {
    let alg = opts.hash;
    tokio::task::spawn_blocking(move || {
        let mut sum = Checksum::new(alg);
        hash_prefix(&file, size, &mut sum)?;
        Ok(sum.finish_hex())
    })
}

/// The connection that opens the upload, sends the first range and
/// closes it.
struct Opener {
    file: Arc<File>,
    failed: Arc<AtomicBool>,
    progress: Progress,
}

impl Opener {
    async fn run(
        self,
        session: &mut Session<'_>,
        open: PutOpen,
        id_tx: watch::Sender<Option<Option<String>>>,
        others: oneshot::Receiver<Result<(), Failure>>,
        digest: tokio::task::JoinHandle<io::Result<String>>,
    ) -> Result<Result<u64, Failure>, ClientError> {
        let label = open.path.clone();
        let length = open.length;
        let (reader, writer) = session.split();
        writer.queue(&open, &[])?;
        writer.flush().await?;
        let opened = async {
            let r = match recv_msg::<FilesReply>(reader).await {
                Ok(FilesReply::Opened(o)) => Ok(o.id),
                Ok(other) => match failure_or_protocol(other, Opened::OP) {
                    Ok(f) => Err(Ok(f)),
                    Err(e) => Err(Err(e)),
                },
                Err(e) => Err(Err(e)),
            };
            if r.is_err() {
                self.failed.store(true, Ordering::SeqCst);
            }
            let _ = id_tx.send(Some(r.as_ref().ok().cloned()));
            r
        };
        let sent = send_range(writer, &self.file, 0, length, &self.failed, &self.progress);
        let (opened, sent) = tokio::join!(opened, sent);
        let sent = sent?;
        let others = match (&opened, sent) {
            (Err(_), _) => Err(failure(String::new())),
            (Ok(_), false) => Err(failure(format!("{label}: the upload was abandoned"))),
            (Ok(_), true) => others
                .await
                .unwrap_or_else(|_| Err(failure(format!("{label}: a stream was lost")))),
        };
        let digest = match digest.await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(io::Error::other(format!("hash thread failed: {e}"))),
        };
        let end = match (&others, &digest) {
            (Ok(()), Ok(d)) => End {
                size: open.size,
                digest: d.clone(),
                abort: false,
            },
            _ => End {
                abort: true,
                ..Default::default()
            },
        };
        writer.queue(&end, &[])?;
        writer.flush().await?;
        match opened {
            Ok(_) => {}
            Err(Ok(refused)) => return Ok(Err(refused)),
            Err(Err(e)) => return Err(e),
        }
        // The server answers every `end` it did not discard.
        let answer = match recv_msg::<FilesReply>(reader).await? {
            FilesReply::Done(d) => Ok(d.size),
            other => Err(failure_or_protocol(other, Done::OP)?),
        };
        if let Err(e) = &digest {
            return Ok(Err(local_failure(std::path::Path::new(&label), e)));
        }
        // A failed stream's own error says more than the server's refusal
        // of an aborted upload.
        if let Err(f) = others {
            return Ok(Err(f));
        }
        Ok(answer)
    }
}

/// One further connection: connects, joins the upload, sends its range.
struct Joiner {
    connect: Arc<Connect>,
    file: Arc<File>,
    id: watch::Receiver<Option<Option<String>>>,
    failed: Arc<AtomicBool>,
    progress: Progress,
    label: String,
}

impl Joiner {
    async fn run(mut self, offset: u64, length: u64) -> Result<(), Failure> {
        let stream = format!("{}: the stream for bytes {offset}+{length}", self.label);
        let mut client = (self.connect)()
            .await
            .map_err(|e| failure(format!("{stream}: {e}")))?;
        let id = match self.id.wait_for(Option::is_some).await {
            Ok(v) => v.clone().flatten(),
            Err(_) => None,
        };
        let Some(id) = id else {
            // The upload was refused or failed on the first connection,
            // which reports why.
            return Err(failure(String::new()));
        };
        let r = self
            .send(&mut client.session, PutJoin { id, offset, length })
            .await;
        let _ = client.session.close().await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(Failure {
                code: f.code,
                message: format!("{stream}: {}", f.message),
            }),
            Err(e) => Err(failure(format!("{stream}: {e}"))),
        }
    }

    async fn send(
        &self,
        session: &mut Session<'_>,
        join: PutJoin,
    ) -> Result<Result<(), Failure>, ClientError> {
        let (offset, length) = (join.offset, join.length);
        let (reader, writer) = session.split();
        writer.queue(&join, &[])?;
        let ready = async {
            let r = ready(reader).await;
            if !matches!(r, Ok(Ok(()))) {
                self.failed.store(true, Ordering::SeqCst);
            }
            r
        };
        // The `end` goes without waiting for `ready`, which a server may
        // send only with its final answer.
        let send = async {
            let sent = send_range(
                writer,
                &self.file,
                offset,
                length,
                &self.failed,
                &self.progress,
            )
            .await?;
            let end = End {
                size: length,
                digest: String::new(),
                abort: !sent,
            };
            writer.queue(&end, &[])?;
            writer.flush().await?;
            Ok::<_, ClientError>(sent)
        };
        let (ready, sent) = tokio::join!(ready, send);
        let sent = sent?;
        if let Err(f) = ready? {
            return Ok(Err(f));
        }
        match recv_msg::<FilesReply>(reader).await? {
            FilesReply::Ok(_) if sent => Ok(Ok(())),
            FilesReply::Ok(_) => Ok(Err(failure("the upload was abandoned".into()))),
            other => Ok(Err(failure_or_protocol(other, OkReply::OP)?)),
        }
    }
}

/// The server's `ready` for a join, or its refusal.
async fn ready(reader: &mut SessionReader<'_>) -> Result<Result<(), Failure>, ClientError> {
    match recv_msg::<FilesReply>(reader).await? {
        FilesReply::Ready(_) => Ok(Ok(())),
        other => Ok(Err(failure_or_protocol(other, Ready::OP)?)),
    }
}

/// Sends `[offset, offset + length)` of `file` as `data` frames; `false`
/// when it stopped because some stream failed (or reading failed).
async fn send_range(
    writer: &mut SessionWriter<'_>,
    file: &Arc<File>,
    offset: u64,
    length: u64,
    failed: &AtomicBool,
    progress: &Progress,
) -> Result<bool, ClientError> {
    let mut chunks = read_range(file.clone(), offset, length);
    let mut sent = 0u64;
    while let Some(chunk) = chunks.rx.recv().await {
        if failed.load(Ordering::SeqCst) {
            return Ok(false);
        }
        crate::transfer::fault::maybe_delay().await;
        sent += chunk.len() as u64;
        progress.add(chunk.len() as u64);
        writer.write_shared(&Data {}, chunk).await?;
    }
    writer.flush().await?;
    let read = chunks
        .task
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
    if read.is_err() || sent != length {
        failed.store(true, Ordering::SeqCst);
        return Ok(false);
    }
    Ok(true)
}

/// A range being read on a blocking thread, at most [`WINDOW`] chunks
/// ahead of the network.
struct RangeChunks {
    rx: mpsc::Receiver<Bytes>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

fn read_range(file: Arc<File>, offset: u64, length: u64) -> RangeChunks {
    let (tx, rx) = mpsc::channel(WINDOW);
    let task = tokio::task::spawn_blocking(move || {
        let mut at = At {
            file: &file,
            pos: offset,
        };
        let end = offset + length;
        let mut pool = ChunkPool::new();
        while at.pos < end {
            let want = (end - at.pos).min(CHUNK as u64) as usize;
            let chunk = pool.read(&mut at, want)?;
            if chunk.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was sent",
                ));
            }
            if tx.blocking_send(chunk).is_err() {
                break;
            }
        }
        Ok(())
    });
    RangeChunks { rx, task }
}

/// Reads a shared file from a position of its own (clones of a `File`
/// share one offset).
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_file_in_whole_chunks() {
        let c = CHUNK as u64;
        assert_eq!(ranges(100, 4), vec![(0, 100)]);
        assert_eq!(ranges(0, 4), vec![(0, 0)]);
        assert_eq!(ranges(MIN_RANGE * 2, 8).len(), 2);
        let r = ranges(1024 * c + 5, 4);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0], (0, 257 * c));
        let mut next = 0;
        for &(o, l) in &r {
            assert_eq!(o, next);
            assert!(l > 0);
            next = o + l;
        }
        assert_eq!(next, 1024 * c + 5);
        assert_eq!(ranges(1 << 40, 99).len(), MAX_STREAMS as usize);
    }
}
