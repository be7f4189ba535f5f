//! Disk and checksum work on blocking threads, joined to the network by
//! bounded channels: the network task never waits for a disk write or a
//! hash, and no more than [`WINDOW`] chunks are ever buffered.
//!
//! A large file is hashed on a thread of its own (`Hashing`), so reading
//! or writing the file, hashing it and the network's encryption run on
//! three threads at once instead of two.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::mpsc as std_mpsc;

use bytes::Bytes;
use skiff_wire::message::files::HashAlg;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::checksum::Checksum;
use super::chunk_pool::ChunkPool;
use super::durable::Writeback;
use super::{CHUNK, WINDOW};

/// Hashes `file[0..len)` (the prefix a resumed transfer already holds), so
/// the final digest still covers the whole file.
pub(crate) fn hash_prefix(file: &File, len: u64, sum: &mut Checksum) -> io::Result<()> {
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

/// Chunks hashed inline before the hash moves to a thread of its own: a
/// small file is not worth a thread.
const INLINE_CHUNKS: u64 = 4;

/// The whole-file checksum of a pipeline: computed inline for the first
/// [`INLINE_CHUNKS`] chunks, then on a dedicated thread fed through a
/// channel of [`WINDOW`] chunks (the chunks are shared `Bytes`, never
/// copied), so the pipeline thread only does disk I/O.
enum Hashing {
    Inline(Checksum, u64),
    Thread {
        tx: std_mpsc::SyncSender<Bytes>,
        handle: std::thread::JoinHandle<Checksum>,
    },
    /// The thread could not be started or died: the error `finish` reports.
    Failed(io::Error),
}

impl Hashing {
    fn new(sum: Checksum) -> Hashing {
        Hashing::Inline(sum, 0)
    }

    /// Adds a chunk (waits while the hash thread is [`WINDOW`] chunks behind).
    fn update(&mut self, chunk: &Bytes) {
        let interrupted = Hashing::Failed(io::ErrorKind::Interrupted.into());
        *self = match std::mem::replace(self, interrupted) {
            Hashing::Inline(mut sum, n) if n < INLINE_CHUNKS => {
                sum.update(chunk);
                Hashing::Inline(sum, n + 1)
            }
            Hashing::Inline(sum, _) => Self::start_thread(sum).sent(chunk),
            thread @ Hashing::Thread { .. } => thread.sent(chunk),
            failed @ Hashing::Failed(_) => failed,
        };
    }

    /// Hands `chunk` to the hash thread (if there is one).
    fn sent(self, chunk: &Bytes) -> Hashing {
        match self {
            Hashing::Thread { tx, handle } => match tx.send(chunk.clone()) {
                Ok(()) => Hashing::Thread { tx, handle },
                Err(_) => Hashing::Failed(io::Error::other("the hash thread stopped")),
            },
            other => other,
        }
    }

    fn start_thread(mut sum: Checksum) -> Hashing {
        let (tx, rx) = std_mpsc::sync_channel::<Bytes>(WINDOW);
        let spawned = std::thread::Builder::new()
            .name("skiff-hash".into())
            .spawn(move || {
                while let Ok(chunk) = rx.recv() {
                    sum.update(&chunk);
                }
                sum
            });
        match spawned {
            Ok(handle) => Hashing::Thread { tx, handle },
            Err(e) => Hashing::Failed(e),
        }
    }

    /// The hex digest of every chunk added.
    fn finish(self) -> io::Result<String> {
        match self {
            Hashing::Inline(sum, _) => Ok(sum.finish_hex()),
            Hashing::Thread { tx, handle } => {
                drop(tx);
                handle
                    .join()
                    .map(Checksum::finish_hex)
                    .map_err(|_| io::Error::other("hash thread panicked"))
            }
            Hashing::Failed(e) => Err(e),
        }
    }
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
/// the whole file (the skipped prefix too). Chunks are read into recycled
/// buffers ([`ChunkPool`]), without zeroing them first.
pub struct Source {
    rx: mpsc::Receiver<Bytes>,
    task: JoinHandle<io::Result<SourceDone>>,
}

impl Source {
    /// Starts reading `file` from `offset` to its end.
    pub fn spawn(file: File, offset: u64, alg: HashAlg) -> Source {
        Source::spawn_upto(file, offset, u64::MAX, alg)
    }

    /// Starts reading `file` from `offset`, stopping at `size` bytes even
    /// if it grew: a `get` sends the size it announced and not a byte more,
    /// so a client can refuse anything past it.
    pub fn spawn_upto(file: File, offset: u64, size: u64, alg: HashAlg) -> Source {
        let (tx, rx) = mpsc::channel(WINDOW);
        let task = tokio::task::spawn_blocking(move || {
            let mut sum = Checksum::new(alg);
            hash_prefix(&file, offset, &mut sum)?;
            let mut sum = Hashing::new(sum);
            (&file).seek(SeekFrom::Start(offset))?;
            let mut pos = offset;
            let mut index = 0u64;
            let mut pool = ChunkPool::new();
            loop {
                let want = size.saturating_sub(pos).min(CHUNK as u64) as usize;
                if want == 0 {
                    break;
                }
                let buf = pool.read(&file, want)?;
                let filled = buf.len();
                if filled == 0 {
                    break;
                }
                sum.update(&buf);
                pos += filled as u64;
                let chunk = super::fault::maybe_corrupt(index, buf);
                index += 1;
                if tx.blocking_send(chunk).is_err() {
                    // The network side gave up; nothing more to do.
                    break;
                }
                if filled < want {
                    break;
                }
            }
            Ok(SourceDone {
                size: pos,
                digest: sum.finish()?,
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
/// whole file and starting its writeback as it goes. Every path through it
/// ends in an fsync, so what a resume later finds in the partial file was
/// really stored.
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
            let mut sum = Hashing::new(sum);
            let mut pos = offset;
            let mut writeback = Writeback::from(offset);
            let mut result = Ok(());
            while let Some(chunk) = rx.blocking_recv() {
                sum.update(&chunk);
                if let Err(e) = file.write_all_at(&chunk, pos) {
                    result = Err(e);
                    break;
                }
                pos += chunk.len() as u64;
                writeback.wrote(&file, pos);
            }
            drop(rx);
            let digest = sum.finish();
            result?;
            file.sync_all()?;
            Ok(SinkDone {
                size: pos,
                digest: digest?,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` bytes of a fixed pattern, and its BLAKE3 digest.
    fn pattern(len: usize) -> (Vec<u8>, String) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4093) as u8).collect();
        let mut sum = Checksum::new(HashAlg::Blake3);
        sum.update(&data);
        (data, sum.finish_hex())
    }

    /// Sizes around the chunk size and past the point where hashing moves
    /// to its own thread: the digest and the bytes must not change.
    const SIZES: [usize; 6] = [0, 1, CHUNK, CHUNK + 1, 6 * CHUNK + 12_345, 9 * CHUNK];

    #[tokio::test]
    async fn source_reads_every_byte_and_hashes_the_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        for len in SIZES {
            let (data, digest) = pattern(len);
            let path = dir.path().join(format!("src{len}"));
            std::fs::write(&path, &data).expect("write");
            for offset in [0, len as u64 / 2] {
                let file = File::open(&path).expect("open");
                let mut source = Source::spawn(file, offset, HashAlg::Blake3);
                let mut got = Vec::new();
                while let Some(chunk) = source.next().await {
                    assert!(chunk.len() <= CHUNK);
                    got.extend_from_slice(&chunk);
                }
                let done = source.finish().await.expect("finish");
                assert_eq!(got, data[offset as usize..], "len {len} offset {offset}");
                assert_eq!(done.size, len as u64);
                assert_eq!(done.digest, digest, "len {len} offset {offset}");
            }
        }
    }

    #[tokio::test]
    async fn a_bounded_source_stops_at_its_size_however_long_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, _) = pattern(6 * CHUNK + 12_345);
        let path = dir.path().join("grown");
        std::fs::write(&path, &data).expect("write");
        for size in [0, 1, CHUNK as u64, 3 * CHUNK as u64 + 7] {
            let (_, digest) = pattern(size as usize);
            let file = File::open(&path).expect("open");
            let mut source = Source::spawn_upto(file, 0, size, HashAlg::Blake3);
            let mut got = Vec::new();
            while let Some(chunk) = source.next().await {
                got.extend_from_slice(&chunk);
            }
            let done = source.finish().await.expect("finish");
            assert_eq!(got, data[..size as usize], "size {size}");
            assert_eq!((done.size, done.digest), (size, digest), "size {size}");
        }
    }

    #[tokio::test]
    async fn sink_writes_every_byte_and_hashes_the_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        for len in SIZES {
            let (data, digest) = pattern(len);
            let path = dir.path().join(format!("dst{len}"));
            let offset = len / 3;
            std::fs::write(&path, &data[..offset]).expect("write prefix");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .expect("open");
            let mut sink = Sink::spawn(file, offset as u64, HashAlg::Blake3);
            // Uneven pieces, as frames of another sender might be.
            for piece in data[offset..].chunks(CHUNK / 3 + 1) {
                assert!(sink.write(Bytes::copy_from_slice(piece)).await);
            }
            let done = sink.finish().await.expect("finish");
            assert_eq!(done.size, len as u64);
            assert_eq!(done.digest, digest, "len {len}");
            assert_eq!(std::fs::read(&path).expect("read back"), data);
        }
    }
}
