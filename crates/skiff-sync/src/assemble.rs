//! The receiver's half of a delta: the new file built from its old copy
//! and the sender's recipe ([`crate::recipe`]), checked against the
//! whole-file BLAKE3 before anyone may commit it.
//!
//! Every byte passes through user space once, and is hashed from the very
//! buffer it is written from: the digest covers exactly what the output
//! holds, so the check is as strong as reading the result back (stronger
//! than trusting the old copy's chunk hashes, which may describe a file
//! that changed since). A matched range is read from the old file 1 MiB
//! at a time into one of two buffers; while one piece is hashed (on all
//! cores) and written, the next is read.
//!
//! Why not `copy_file_range`: the ranges a content-defined recipe copies
//! start and end anywhere, so no file system can share their blocks
//! (reflinks need block-aligned ranges); the kernel would copy the bytes
//! as `read` + `write` do, and the result would then have to be read back
//! for its digest, a third pass over every byte. Measured on tmpfs, the
//! kernel copy with its read-back took a quarter more of the receiver's
//! CPU for a 1 GiB delta (docs/BENCHMARKS.md).

use std::fs::File;
use std::io::{self, Write};

use crate::hash::{self, Hash};

/// Buffered output of [`FileOutput`], and the piece a copy moves at once.
const OUT_BUFFER: usize = 1024 * 1024;

/// Positioned reads from the old file (`pread`), so copies need no seek
/// state and the old file can be shared.
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Reads `buf.len()` bytes at `offset` (fewer only at the end).
    fn read_full_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
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

/// Where a new file is assembled: appended to, in order.
pub trait Output {
    /// Appends `data`.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;

    /// Makes everything appended reach the output.
    fn flush(&mut self) -> io::Result<()>;
}

impl Output for Vec<u8> {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A new, empty file being assembled: small appends are buffered, large
/// ones written as they come.
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

    fn flush(&mut self) -> io::Result<()> {
        self.drain()
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
    /// Every byte written so far, in order.
    hasher: blake3::Hasher,
    written: u64,
    size: u64,
    /// The two pieces a copy alternates between (read / hashed and
    /// written), allocated by the first copy.
    bufs: [Vec<u8>; 2],
}

impl<O: ReadAt + Sync, W: Output + Send> Assembler<O, W> {
    /// Assembles into `out` a file announced as `size` bytes, copying from
    /// `old` (`old_size` bytes, or `None`).
    pub fn new(old: Option<(O, u64)>, out: W, size: u64) -> Self {
        let old_size = old.as_ref().map_or(0, |(_, s)| *s);
        Assembler {
            old: old.map(|(o, _)| o),
            old_size,
            out,
            hasher: blake3::Hasher::new(),
            written: 0,
            size,
            bufs: [Vec::new(), Vec::new()],
        }
    }

    /// Applies a copy step.
    pub fn copy(&mut self, offset: u64, len: u64) -> Result<(), AssembleError> {
        let old_size = self.old_size;
        let out_of_range = || AssembleError::CopyOutOfRange {
            offset,
            len,
            old_size,
        };
        let Some(old) = self.old.as_ref() else {
            return Err(out_of_range());
        };
        if offset.checked_add(len).is_none_or(|end| end > old_size) {
            return Err(out_of_range());
        }
        if self.written + len > self.size {
            return Err(AssembleError::TooLong(self.size));
        }
        let end = offset + len;
        let want = |at: u64| (end - at).min(OUT_BUFFER as u64) as usize;
        let read = |buf: &mut Vec<u8>, at: u64| -> Result<usize, AssembleError> {
            if at == end {
                return Ok(0);
            }
            buf.resize(OUT_BUFFER, 0);
            match old.read_full_at(&mut buf[..want(at)], at)? {
                0 => Err(out_of_range()),
                n => Ok(n),
            }
        };
        let [cur, next] = &mut self.bufs;
        let mut at = offset;
        let mut n = read(cur, at)?;
        while at < end {
            let after = at + n as u64;
            let (hasher, out) = (&mut self.hasher, &mut self.out);
            let piece = &cur[..n];
            let (written, fetched) = rayon::join(
                || {
                    hash::update(hasher, piece);
                    out.append(piece)
                },
                || read(next, after),
            );
            written?;
            self.written += n as u64;
            at = after;
            n = fetched?;
            std::mem::swap(cur, next);
        }
        Ok(())
    }

    /// Applies a literal step.
    pub fn literal(&mut self, data: &[u8]) -> Result<(), AssembleError> {
        if self.written + data.len() as u64 > self.size {
            return Err(AssembleError::TooLong(self.size));
        }
        hash::update(&mut self.hasher, data);
        self.out.append(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The size the new file was announced with.
    pub fn size(&self) -> u64 {
        self.size
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
        let got: Hash = self.hasher.finalize().into();
        if got != expected {
            return Err(AssembleError::HashMismatch { expected, got });
        }
        Ok(self.out)
    }
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

    /// Copies of any length (within one piece, exactly one, across
    /// several) and literals in any mix give the file the recipe
    /// describes, and the digest is the file's.
    #[test]
    fn copies_and_literals_build_the_file() {
        let old = pseudo_random(9 << 20, 1);
        let piece = OUT_BUFFER as u64;
        let steps = [
            (5 << 20, 3 * piece + 12_345),
            (17, 100),
            (0, piece),
            (1000, piece + 1),
            (old.len() as u64 - 1, 1),
        ];
        let (got, hash) = into_file(&old, &steps, b"tail");
        assert_eq!(Hash::of(&got), hash);
        let len: u64 = steps.iter().map(|s| s.1).sum::<u64>() + 4;
        assert_eq!(got.len() as u64, len);
        assert_eq!(&got[..3 << 20], &old[5 << 20..8 << 20]);
    }

    /// A wrong digest is caught after copies, a copy past the old file's
    /// end is refused before anything is copied, and an old file that
    /// shrank under its announced size ends the copy with an error.
    #[test]
    fn copies_are_checked() {
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
