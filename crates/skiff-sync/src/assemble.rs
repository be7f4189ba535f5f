//! The receiver's half of a delta: the new file built from its old copy
//! and the sender's recipe ([`crate::recipe`]), checked against the
//! whole-file BLAKE3 before anyone may commit it.
//!
//! Matched ranges are copied file to file inside the kernel
//! (`copy_file_range`, through `std::io::copy`) when both ends are files:
//! the bytes never pass through user space to be copied. The digest must
//! still cover every byte of the result, so once a range went that way the
//! result is hashed by reading back what the output holds, in large pieces
//! hashed on all cores. When the output is a file this runs on a thread of
//! its own that follows the assembly: each time a kernel copy has put
//! bytes in the file, the thread reads and hashes up to there, so the
//! hashing overlaps the rest of the transfer instead of following it (an
//! output that is not a file is read back at the end). What the output
//! holds is exactly what gets committed, so the check is as strong as
//! hashing each byte as it is written (stronger than hashing the old
//! copy's bytes, which could change between the hash and the copy). A file
//! made only of literals and short copies is hashed as it is written and
//! never read back.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::hash::Hash;

/// Copies at least this long go file to file in the kernel; shorter ones
/// are read and written (a syscall or two either way, and the bytes stay
/// hashed as they pass).
pub const KERNEL_COPY_MIN: u64 = 64 * 1024;
/// A long kernel copy is made in pieces of this size (see `copy_from`).
const KERNEL_PIECE: u64 = 16 * 1024 * 1024;
/// Pieces the output is read back in for hashing (two buffers of this).
const READ_BACK: usize = 4 * 1024 * 1024;
/// Buffered output of [`FileOutput`], and the piece a user-space copy
/// moves at once.
const OUT_BUFFER: usize = 1024 * 1024;
/// Data at least this large is hashed across cores.
const PARALLEL_HASH_MIN: usize = 128 * 1024;

/// Positioned reads from the old file (`pread`), so copies need no seek
/// state and the old file can be shared.
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// The file behind this reader, when it is one: copies from it can
    /// then stay in the kernel.
    fn as_file(&self) -> Option<&File> {
        None
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }

    fn as_file(&self) -> Option<&File> {
        Some(self)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }

    fn as_file(&self) -> Option<&File> {
        (**self).as_file()
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Where a new file is assembled: appended to, and read back for its
/// digest when some of it never passed through user space.
pub trait Output {
    /// Appends `data`.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;

    /// Appends `len` bytes at `offset` of `from` without passing them
    /// through user space; `Ok(false)` when this output cannot (then the
    /// caller reads and appends them). Fewer bytes than `len` is an
    /// `UnexpectedEof` error.
    fn append_from_file(&mut self, _from: &File, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }

    /// Reads back up to `buf.len()` bytes of what was appended, at `offset`.
    fn read_back(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Makes everything appended reach the output.
    fn flush(&mut self) -> io::Result<()>;

    /// A second handle on the output file for reading it back from
    /// another thread, when the output is a file.
    fn reader(&self) -> Option<File> {
        None
    }
}

impl Output for Vec<u8> {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }

    fn read_back(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A new, empty file being assembled: small appends are buffered, copies
/// from another file go through the kernel.
pub struct FileOutput {
    file: File,
    buf: Vec<u8>,
}

impl FileOutput {
    /// Assembles into `file`, which must be empty and positioned at 0.
    pub fn new(file: File) -> FileOutput {
        FileOutput {
            file,
            buf: Vec::new(),
        }
    }

    fn drain(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            (&self.file).write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Output for FileOutput {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if self.buf.len() + data.len() > OUT_BUFFER {
            self.drain()?;
        }
        if data.len() >= OUT_BUFFER {
            return (&self.file).write_all(data);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(OUT_BUFFER);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn append_from_file(&mut self, from: &File, offset: u64, len: u64) -> io::Result<bool> {
        self.drain()?;
        let mut from = from;
        from.seek(SeekFrom::Start(offset))?;
        // std turns a copy between two files into copy_file_range (with
        // its own fallbacks where the kernel or file system lacks it).
        let n = io::copy(&mut from.take(len), &mut &self.file)?;
        if n != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the old file ended after {n} of {len} bytes"),
            ));
        }
        Ok(true)
    }

    fn read_back(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.drain()?;
        self.file.read_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain()
    }

    fn reader(&self) -> Option<File> {
        self.file.try_clone().ok()
    }
}

/// What the assembly and its read-back thread share.
#[derive(Default)]
struct Progress {
    /// Bytes of the output file that are written and may be hashed.
    ready: u64,
    /// Nothing more will be written (`ready` is the end).
    done: bool,
    /// The assembly was abandoned: stop at once.
    abandoned: bool,
}

/// The thread that hashes the output file behind the assembly (module
/// docs). Dropped without [`BackHasher::finish`], it tells the thread to
/// stop.
struct BackHasher {
    shared: Arc<(Mutex<Progress>, Condvar)>,
    thread: Option<JoinHandle<io::Result<blake3::Hasher>>>,
}

impl BackHasher {
    /// Starts hashing `file` from `from` on, into `hasher`.
    fn start(file: File, hasher: blake3::Hasher, from: u64) -> BackHasher {
        let shared = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::spawn(move || {
            let mut hasher = hasher;
            let mut at = from;
            let mut bufs = ReadBack::new();
            loop {
                let (ready, done) = {
                    let (lock, cv) = &*theirs;
                    let mut p = lock.lock().map_err(|_| io::Error::other("poisoned"))?;
                    while p.ready <= at && !p.done && !p.abandoned {
                        p = cv.wait(p).map_err(|_| io::Error::other("poisoned"))?;
                    }
                    if p.abandoned {
                        return Err(io::Error::other("the assembly was abandoned"));
                    }
                    (p.ready, p.done)
                };
                if ready > at {
                    bufs.hash(&mut hasher, at, ready, |buf, off| file.read_at(buf, off))?;
                    at = ready;
                } else if done {
                    return Ok(hasher);
                }
            }
        });
        BackHasher {
            shared,
            thread: Some(thread),
        }
    }

    fn publish(&self, ready: u64, done: bool) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut p) = lock.lock() {
            p.ready = ready;
            p.done |= done;
        }
        cv.notify_one();
    }

    /// Hashes up to `end` and hands back the hasher.
    fn finish(mut self, end: u64) -> io::Result<blake3::Hasher> {
        self.publish(end, true);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(io::Error::other("the read-back thread ended")),
        }
    }
}

impl Drop for BackHasher {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let (lock, cv) = &*self.shared;
            if let Ok(mut p) = lock.lock() {
                p.abandoned = true;
            }
            cv.notify_one();
        }
    }
}

/// The two buffers a read-back alternates between: the next piece is
/// read while one is hashed on all cores.
struct ReadBack {
    cur: Vec<u8>,
    next: Vec<u8>,
}

impl ReadBack {
    fn new() -> ReadBack {
        ReadBack {
            cur: vec![0u8; READ_BACK],
            next: vec![0u8; READ_BACK],
        }
    }

    /// Feeds bytes `from..end` of the output, read with `read_at`, to
    /// `hasher`.
    fn hash<F>(
        &mut self,
        hasher: &mut blake3::Hasher,
        from: u64,
        end: u64,
        read_at: F,
    ) -> io::Result<()>
    where
        F: Fn(&mut [u8], u64) -> io::Result<usize> + Sync,
    {
        let want = |at: u64| (end - at).min(READ_BACK as u64) as usize;
        let (cur, next) = (&mut self.cur, &mut self.next);
        let mut at = from;
        let mut n = read_full(&read_at, &mut cur[..want(at)], at)?;
        while at < end {
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the assembled file is shorter than what was written",
                ));
            }
            let after = at + n as u64;
            let ((), read) = rayon::join(
                || {
                    hasher.update_rayon(&cur[..n]);
                },
                || {
                    if after < end {
                        read_full(&read_at, &mut next[..want(after)], after)
                    } else {
                        Ok(0)
                    }
                },
            );
            at = after;
            n = read?;
            std::mem::swap(cur, next);
        }
        Ok(())
    }
}

/// Why an assembly failed. Nothing is committed after any of these.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// Reading the old file or writing the new one failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A copy names bytes beyond the old file's end (or the old file
    /// shrank meanwhile).
    #[error("copy of {len} bytes at {offset} is outside the old file ({old_size} bytes)")]
    CopyOutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The old file's size when the assembly started.
        old_size: u64,
    },
    /// More bytes than the announced size.
    #[error("recipe produces more than the announced {0} bytes")]
    TooLong(u64),
    /// Fewer bytes than the announced size.
    #[error("recipe produced {got} bytes, {want} announced")]
    SizeMismatch {
        /// Produced.
        got: u64,
        /// Announced.
        want: u64,
    },
    /// The result is not the file the sender read (the old copy changed
    /// since its signature was made, or the data was damaged).
    #[error("assembled file does not match its BLAKE3 (expected {expected}, got {got})")]
    HashMismatch {
        /// From the sender.
        expected: Hash,
        /// Of what was written.
        got: Hash,
    },
}

/// Builds the new file from the old one and the recipe, and checks its
/// BLAKE3 (see the module docs). Output is bounded by the announced size,
/// so a sender cannot make the receiver write more than it announced.
pub struct Assembler<O: ReadAt, W: Output> {
    old: Option<O>,
    old_size: u64,
    out: W,
    hasher: blake3::Hasher,
    /// The first `hashed` bytes of the output are in `hasher`; while
    /// `hashed == written`, appends are hashed as they pass.
    hashed: u64,
    written: u64,
    size: u64,
    buf: Vec<u8>,
    /// Hashing the output behind the assembly, once a kernel copy made
    /// it necessary; it then owns the digest.
    back: Option<BackHasher>,
}

impl<O: ReadAt, W: Output + Send> Assembler<O, W> {
    /// Assembles into `out` a file announced as `size` bytes, copying from
    /// `old` (`old_size` bytes, or `None`).
    pub fn new(old: Option<(O, u64)>, out: W, size: u64) -> Self {
        let old_size = old.as_ref().map_or(0, |(_, s)| *s);
        Assembler {
            old: old.map(|(o, _)| o),
            old_size,
            out,
            hasher: blake3::Hasher::new(),
            hashed: 0,
            written: 0,
            size,
            buf: Vec::new(),
            back: None,
        }
    }

    fn put(&mut self, data: &[u8]) -> Result<(), AssembleError> {
        if self.written + data.len() as u64 > self.size {
            return Err(AssembleError::TooLong(self.size));
        }
        if self.hashed == self.written {
            if data.len() >= PARALLEL_HASH_MIN {
                self.hasher.update_rayon(data);
            } else {
                self.hasher.update(data);
            }
            self.hashed += data.len() as u64;
        }
        self.out.append(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Applies a copy step.
    pub fn copy(&mut self, offset: u64, len: u64) -> Result<(), AssembleError> {
        let old = self.old.take();
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.copy_from(old.as_ref(), &mut buf, offset, len);
        self.old = old;
        self.buf = buf;
        r
    }

    fn copy_from(
        &mut self,
        old: Option<&O>,
        buf: &mut Vec<u8>,
        offset: u64,
        len: u64,
    ) -> Result<(), AssembleError> {
        let old_size = self.old_size;
        let out_of_range = || AssembleError::CopyOutOfRange {
            offset,
            len,
            old_size,
        };
        let Some(old) = old else {
            return Err(out_of_range());
        };
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.old_size)
        {
            return Err(out_of_range());
        }
        if self.written + len > self.size {
            return Err(AssembleError::TooLong(self.size));
        }
        if let Some(file) = old.as_file().filter(|_| len >= KERNEL_COPY_MIN) {
            // In pieces, so that the read-back hashes each piece while the
            // next is copied.
            let mut done = 0;
            while done < len {
                let n = (len - done).min(KERNEL_PIECE);
                match self.out.append_from_file(file, offset + done, n) {
                    Ok(true) => {
                        self.written += n;
                        done += n;
                        self.behind();
                    }
                    Ok(false) if done == 0 => break,
                    Ok(false) => {
                        return Err(
                            io::Error::other("the output stopped taking kernel copies").into()
                        )
                    }
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(out_of_range())
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if done == len {
                return Ok(());
            }
        }
        buf.resize(OUT_BUFFER, 0);
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let want = (end - at).min(buf.len() as u64) as usize;
            let n = old.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return Err(out_of_range());
            }
            self.put(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Applies a literal step.
    pub fn literal(&mut self, data: &[u8]) -> Result<(), AssembleError> {
        self.put(data)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The size the new file was announced with.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// After a kernel copy (the output holds everything written): hands
    /// the digest to the read-back thread, or tells it how far to go.
    fn behind(&mut self) {
        match &self.back {
            Some(b) => b.publish(self.written, false),
            None => {
                if let Some(file) = self.out.reader() {
                    let hasher = std::mem::take(&mut self.hasher);
                    let b = BackHasher::start(file, hasher, self.hashed);
                    b.publish(self.written, false);
                    self.back = Some(b);
                }
            }
        }
    }

    /// Hashes what the output holds from `hashed` to `written`.
    fn hash_back(&mut self) -> Result<(), AssembleError> {
        let end = self.written;
        match self.back.take() {
            Some(b) => self.hasher = b.finish(end)?,
            None => {
                let out = Mutex::new(&mut self.out);
                ReadBack::new().hash(&mut self.hasher, self.hashed, end, |buf, off| {
                    out.lock()
                        .map_err(|_| io::Error::other("poisoned"))?
                        .read_back(buf, off)
                })?;
            }
        }
        self.hashed = end;
        Ok(())
    }

    /// Checks size and BLAKE3 against what the sender announced and hands
    /// back the output (flushed) for committing.
    pub fn finish(mut self, expected: Hash) -> Result<W, AssembleError> {
        if self.written != self.size {
            return Err(AssembleError::SizeMismatch {
                got: self.written,
                want: self.size,
            });
        }
        self.out.flush()?;
        if self.hashed < self.written {
            self.hash_back()?;
        }
        let got: Hash = self.hasher.finalize().into();
        if got != expected {
            return Err(AssembleError::HashMismatch { expected, got });
        }
        Ok(self.out)
    }
}

/// Reads `buf.len()` bytes at `offset` (fewer only at the end).
fn read_full<F>(read_at: &F, buf: &mut [u8], offset: u64) -> io::Result<usize>
where
    F: Fn(&mut [u8], u64) -> io::Result<usize>,
{
    let mut filled = 0;
    while filled < buf.len() {
        match read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::pseudo_random;

    /// `dir/old` holding `old`, opened, and a new empty `dir/new` to
    /// assemble into.
    fn old_and_new(dir: &std::path::Path, old: &[u8]) -> (File, File) {
        std::fs::write(dir.join("old"), old).unwrap();
        let old_f = File::open(dir.join("old")).unwrap();
        let out = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join("new"))
            .unwrap();
        (old_f, out)
    }

    /// Assembles `steps` from `old` into a real file; returns its bytes.
    fn into_file(old: &[u8], steps: &[(u64, u64)], tail: &[u8]) -> (Vec<u8>, Hash) {
        let t = tempfile::tempdir().unwrap();
        let (old_f, out) = old_and_new(t.path(), old);
        let size = steps.iter().map(|s| s.1).sum::<u64>() + tail.len() as u64;
        let mut want = Vec::new();
        for &(o, l) in steps {
            want.extend_from_slice(&old[o as usize..][..l as usize]);
        }
        want.extend_from_slice(tail);
        let mut a = Assembler::new(Some((old_f, old.len() as u64)), FileOutput::new(out), size);
        for &(o, l) in steps {
            a.copy(o, l).unwrap();
        }
        a.literal(tail).unwrap();
        a.finish(Hash::of(&want)).unwrap();
        (
            std::fs::read(t.path().join("new")).unwrap(),
            Hash::of(&want),
        )
    }

    /// Kernel copies, short copies and literals in any mix give the file
    /// the recipe describes, and the read-back digest is the file's.
    #[test]
    fn kernel_copies_and_literals_build_the_file() {
        let old = pseudo_random(9 << 20, 1);
        let steps = [
            (5 << 20, 3 << 20),
            (17, 100),
            (0, 1 << 20),
            (1000, KERNEL_COPY_MIN),
        ];
        let (got, hash) = into_file(&old, &steps, b"tail");
        assert_eq!(Hash::of(&got), hash);
        assert_eq!(got.len() as u64, (4 << 20) + 100 + KERNEL_COPY_MIN + 4);
        assert_eq!(&got[..3 << 20], &old[5 << 20..8 << 20]);
    }

    /// An assembly abandoned after a kernel copy stops its read-back
    /// thread (dropping it returns; nothing waits forever).
    #[test]
    fn an_abandoned_assembly_stops_hashing() {
        let t = tempfile::tempdir().unwrap();
        let old = pseudo_random(2 << 20, 3);
        let (old_f, out) = old_and_new(t.path(), &old);
        let mut a = Assembler::new(Some((&old_f, 2 << 20)), FileOutput::new(out), 4 << 20);
        a.copy(0, 1 << 20).unwrap();
        a.literal(&old[..1000]).unwrap();
        assert!(a.back.is_some());
        drop(a);
    }

    /// A wrong digest is caught after kernel copies too, and a copy past
    /// the old file's end is refused before anything is copied.
    #[test]
    fn kernel_copies_are_checked() {
        let t = tempfile::tempdir().unwrap();
        let old = pseudo_random(1 << 20, 2);
        std::fs::write(t.path().join("old"), &old).unwrap();
        let open_out = |name: &str| {
            File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(t.path().join(name))
                .unwrap()
        };
        let old_f = File::open(t.path().join("old")).unwrap();
        let mut a = Assembler::new(
            Some((&old_f, 1 << 20)),
            FileOutput::new(open_out("a")),
            1 << 20,
        );
        a.copy(0, 1 << 20).unwrap();
        let mut wrong = old.clone();
        wrong[12345] ^= 1;
        assert!(matches!(
            a.finish(Hash::of(&wrong)),
            Err(AssembleError::HashMismatch { .. })
        ));
        let mut a = Assembler::new(
            Some((&old_f, 1 << 20)),
            FileOutput::new(open_out("b")),
            2 << 20,
        );
        assert!(matches!(
            a.copy(1 << 19, 1 << 20),
            Err(AssembleError::CopyOutOfRange { .. })
        ));
        // The old file shrank after its size was taken.
        let mut a = Assembler::new(
            Some((&old_f, 2 << 20)),
            FileOutput::new(open_out("c")),
            2 << 20,
        );
        assert!(matches!(
            a.copy(1 << 19, 1 << 20),
            Err(AssembleError::CopyOutOfRange { .. })
        ));
    }
}
