//! Disk and checksum work on blocking threads, joined to the network by
//! bounded channels: the network task never waits for a disk write or a
//! hash, and no more than [`WINDOW`] chunks are ever buffered.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};
use skiff_wire::message::files::HashAlg;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::checksum::Checksum;
use super::{CHUNK, WINDOW};

/// Hashes `file[0..len)` (the prefix a resumed transfer already holds), so
/// the final digest still covers the whole file.
fn hash_prefix(file: &File, len: u64, sum: &mut Checksum) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let want = ((len - pos) as usize).min(CHUNK);
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while its prefix was being hashed",
            ));
        }
        sum.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}

/// What a finished [`Source`] read.
#[derive(Debug)]
pub struct SourceDone {
    /// Total file length (prefix included).
    pub size: u64,
    /// Hex digest of the whole file.
    pub digest: String,
}

/// Reads a file from an offset in [`CHUNK`]s on a blocking thread, hashing
/// the whole file (the skipped prefix too).
pub struct Source {
    rx: mpsc::Receiver<Bytes>,
    task: JoinHandle<io::Result<SourceDone>>,
}

impl Source {
    /// Starts reading `file` from `offset`.
    pub fn spawn(file: File, offset: u64, alg: HashAlg) -> Source {
        let (tx, rx) = mpsc::channel(WINDOW);
        let task = tokio::task::spawn_blocking(move || {
            let mut sum = Checksum::new(alg);
            hash_prefix(&file, offset, &mut sum)?;
            let mut pos = offset;
            let mut index = 0u64;
            loop {
                let mut buf = BytesMut::zeroed(CHUNK);
                let mut filled = 0;
                while filled < CHUNK {
                    let n = file.read_at(&mut buf[filled..], pos + filled as u64)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                sum.update(&buf);
                pos += filled as u64;
                let chunk = super::fault::maybe_corrupt(index, buf.freeze());
                index += 1;
                if tx.blocking_send(chunk).is_err() {
                    // The network side gave up; nothing more to do.
                    break;
                }
                if filled < CHUNK {
                    break;
                }
            }
            Ok(SourceDone {
                size: pos,
                digest: sum.finish_hex(),
            })
        });
        Source { rx, task }
    }

    /// The next chunk; `None` at the end of the file (or on a read error,
    /// which [`finish`](Self::finish) reports).
    pub async fn next(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// Size and digest once every chunk was taken, or the read error.
    pub async fn finish(self) -> io::Result<SourceDone> {
        drop(self.rx);
        self.task
            .await
            .map_err(|e| io::Error::other(format!("reader thread failed: {e}")))?
    }
}

/// What a finished [`Sink`] wrote.
#[derive(Debug)]
pub struct SinkDone {
    /// Total length written (prefix included).
    pub size: u64,
    /// Hex digest of the whole file.
    pub digest: String,
    /// The file, fsynced, for the caller to finish (mode, mtime, rename).
    pub file: File,
}

/// Appends chunks to a (partial) file on a blocking thread, hashing the
/// whole file. Every path through it ends in an fsync, so what a resume
/// later finds in the partial file was really stored.
pub struct Sink {
    tx: Option<mpsc::Sender<Bytes>>,
    task: JoinHandle<io::Result<SinkDone>>,
}

impl Sink {
    /// Starts writing to `file` at `offset` (anything after it is cut).
    pub fn spawn(file: File, offset: u64, alg: HashAlg) -> Sink {
        let (tx, mut rx) = mpsc::channel::<Bytes>(WINDOW);
        let task = tokio::task::spawn_blocking(move || {
            let mut sum = Checksum::new(alg);
            file.set_len(offset)?;
            hash_prefix(&file, offset, &mut sum)?;
            let mut pos = offset;
            let mut result = Ok(());
            while let Some(chunk) = rx.blocking_recv() {
                if let Err(e) = file.write_all_at(&chunk, pos) {
                    result = Err(e);
                    break;
                }
                sum.update(&chunk);
                pos += chunk.len() as u64;
            }
            drop(rx);
            result?;
            file.sync_all()?;
            Ok(SinkDone {
                size: pos,
                digest: sum.finish_hex(),
                file,
            })
        });
        Sink { tx: Some(tx), task }
    }

    /// Queues a chunk; waits while [`WINDOW`] chunks are pending. `false`
    /// when the writer already stopped (its error comes from
    /// [`finish`](Self::finish)).
    pub async fn write(&mut self, chunk: Bytes) -> bool {
        match &self.tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        }
    }

    /// Waits for every queued chunk to be written and fsynced.
    pub async fn finish(mut self) -> io::Result<SinkDone> {
        self.tx = None;
        self.task
            .await
            .map_err(|e| io::Error::other(format!("writer thread failed: {e}")))?
    }
}
