//! The receiver's signature cache: the chunk list of a large file the
//! receiver described or committed itself, kept on disk so that the next
//! sync of that file need not read and cut the old copy again (for a
//! 1 GiB file that is a second of both cores).
//!
//! An entry is keyed by the file's device and inode and records the
//! file's size, mtime and ctime (nanoseconds) as they were when the chunk
//! list was known to describe it. It is used only while all five are
//! unchanged and its parameters are the ones the receiver picks for that
//! size; any write, truncation, `touch`, chmod or rename changes the
//! ctime, which no user can set back, so a file changed behind the
//! cache's back (even with its size and mtime restored) is cut again.
//! Entries are written to a temporary name and renamed, read with every
//! length bounded, and whatever cannot be read or does not match is
//! treated as absent.
//!
//! Two limits of the rule are accepted and harmless: a change made within
//! the file system's timestamp granularity right after the entry was
//! recorded can keep the ctime, and an entry recorded after a commit
//! stamps the file as it is just after the rename. Either can only make
//! the sender's recipe wrong for that file, and the receiver's check of
//! the whole-file BLAKE3 then refuses the result (`checksum_mismatch`,
//! the old file kept) and drops the entry, so the next run cuts the file
//! again. A cache entry never makes a wrong file.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use skiff_sync::{ChunkParams, Hash, Signature};
use skiff_wire::MAX_BODY_LEN;

/// Files smaller than this are not cached: cutting them costs little, and
/// a tree of small files would fill the cache.
pub const CACHE_MIN: u64 = 16 << 20;

/// Entries kept; past this the least recently written are removed.
const MAX_ENTRIES: usize = 256;

const MAGIC: &[u8; 12] = b"skiff-sig 1\n";
/// Magic, stamp (5 × u64), parameters (3 × u32), chunk count (u64).
const HEADER: usize = 12 + 5 * 8 + 3 * 4 + 8;
/// Bytes per chunk record (u32 length + BLAKE3), as in a `sync_sig` body.
const RECORD: usize = 36;

/// What identifies one state of a file (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    /// The stamp of a file as `md` describes it.
    pub fn of(md: &Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec(),
            ctime_ns: md.ctime().saturating_mul(1_000_000_000) + md.ctime_nsec(),
        }
    }

    fn name(&self) -> String {
        format!("{:x}-{:x}.sig", self.dev, self.ino)
    }
}

/// A directory of cached signatures (the server's `STATE_DIR/sigcache`).
#[derive(Debug)]
pub struct SigCache {
    dir: PathBuf,
}

impl SigCache {
    /// Opens (creating it, mode 0700) the cache directory at `dir`.
    pub fn open(dir: &Path) -> io::Result<SigCache> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(SigCache {
            dir: dir.to_path_buf(),
        })
    }

    /// The cached signature of the file `stamp` describes, if there is a
    /// valid one (module docs).
    pub fn get(&self, stamp: &Stamp) -> Option<Signature> {
        let mut f = File::open(self.dir.join(stamp.name())).ok()?;
        let mut head = [0u8; HEADER];
        f.read_exact(&mut head).ok()?;
        let (magic, rest) = head.split_at(12);
        if magic != MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[i * 8..i * 8 + 8]);
            u64::from_be_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&rest[at..at + 4]);
            u32::from_be_bytes(b)
        };
        let recorded = Stamp {
            dev: u64_at(0),
            ino: u64_at(1),
            size: u64_at(2),
            mtime_ns: u64_at(3) as i64,
            ctime_ns: u64_at(4) as i64,
        };
        let params = ChunkParams {
            min: u32_at(40),
            avg: u32_at(44),
            max: u32_at(48),
        };
        let mut count = [0u8; 8];
        count.copy_from_slice(&rest[52..60]);
        let count = u64::from_be_bytes(count);
        if recorded != *stamp || params != ChunkParams::for_size(stamp.size) {
            return None;
        }
        if count.checked_mul(RECORD as u64)? > MAX_BODY_LEN as u64 {
            return None;
        }
        let mut body = vec![0u8; count as usize * RECORD];
        f.read_exact(&mut body).ok()?;
        let chunks: Vec<(u32, Hash)> = body
            .chunks_exact(RECORD)
            .map(|r| {
                let mut len = [0u8; 4];
                len.copy_from_slice(&r[..4]);
                let mut h = [0u8; 32];
                h.copy_from_slice(&r[4..]);
                (u32::from_be_bytes(len), Hash(h))
            })
            .collect();
        let total: u64 = chunks.iter().map(|&(n, _)| u64::from(n)).sum();
        (total == stamp.size).then_some(Signature {
            params,
            size: stamp.size,
            chunks,
        })
    }

    /// Records `sig` as the signature of the file in the state `stamp`
    /// describes. Failures are ignored: the cache only saves work.
    pub fn put(&self, stamp: &Stamp, sig: &Signature) {
        if stamp.size < CACHE_MIN || sig.size != stamp.size {
            return;
        }
        let mut data = Vec::with_capacity(HEADER + sig.chunks.len() * RECORD);
        data.extend_from_slice(MAGIC);
        for v in [
            stamp.dev,
            stamp.ino,
            stamp.size,
            stamp.mtime_ns as u64,
            stamp.ctime_ns as u64,
        ] {
            data.extend_from_slice(&v.to_be_bytes());
        }
        for v in [sig.params.min, sig.params.avg, sig.params.max] {
            data.extend_from_slice(&v.to_be_bytes());
        }
        data.extend_from_slice(&(sig.chunks.len() as u64).to_be_bytes());
        for (len, h) in &sig.chunks {
            data.extend_from_slice(&len.to_be_bytes());
            data.extend_from_slice(&h.0);
        }
        let tmp = self
            .dir
            .join(format!(".{}.{:016x}", stamp.name(), rand::random::<u64>()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&data))
            .and_then(|()| fs::rename(&tmp, self.dir.join(stamp.name())));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
            return;
        }
        self.trim();
    }

    /// Drops the entry of the file `stamp` names (whatever state it
    /// recorded): after a failed check its list is not to be trusted.
    pub fn forget(&self, stamp: &Stamp) {
        let _ = fs::remove_file(self.dir.join(stamp.name()));
    }

    /// Removes the least recently written entries past [`MAX_ENTRIES`].
    fn trim(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = rd
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if entries.len() <= MAX_ENTRIES {
            return;
        }
        entries.sort();
        for (_, p) in &entries[..entries.len() - MAX_ENTRIES] {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp_of(p: &Path) -> Stamp {
        Stamp::of(&fs::metadata(p).unwrap())
    }

    /// An entry is found while the file is unchanged, and not once it was
    /// rewritten with its size and mtime put back (the ctime moved).
    #[test]
    fn a_file_changed_behind_the_cache_is_not_described_by_it() {
        let t = tempfile::tempdir().unwrap();
        let cache = SigCache::open(&t.path().join("cache")).unwrap();
        let p = t.path().join("f");
        let data: Vec<u8> = (0..CACHE_MIN + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        fs::write(&p, &data).unwrap();
        let sig = Signature::of_reader(&data[..], data.len() as u64).unwrap();
        let stamp = stamp_of(&p);
        cache.put(&stamp, &sig);
        assert_eq!(cache.get(&stamp), Some(sig.clone()));
        assert_eq!(cache.get(&stamp_of(&p)), Some(sig));

        let before = fs::metadata(&p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"changed", 1000).unwrap();
        f.flush().unwrap();
        let times = fs::FileTimes::new().set_modified(before.modified().unwrap());
        f.set_times(times).unwrap();
        drop(f);
        let now = stamp_of(&p);
        assert_eq!((now.size, now.mtime_ns), (stamp.size, stamp.mtime_ns));
        assert!(cache.get(&now).is_none());

        cache.forget(&stamp);
        assert!(cache.get(&stamp).is_none());
    }

    /// Small files are not cached, damaged entries read as absent, and
    /// the cache keeps at most its bound of entries.
    #[test]
    fn small_files_damaged_entries_and_the_bound() {
        let t = tempfile::tempdir().unwrap();
        let cache = SigCache::open(&t.path().join("cache")).unwrap();
        let mut stamp = Stamp {
            dev: 1,
            ino: 2,
            size: 100,
            mtime_ns: 3,
            ctime_ns: 4,
        };
        let small = Signature {
            params: ChunkParams::for_size(100),
            size: 100,
            chunks: vec![(100, Hash([0; 32]))],
        };
        cache.put(&stamp, &small);
        assert!(cache.get(&stamp).is_none());
        stamp.size = CACHE_MIN;
        let big = Signature {
            params: ChunkParams::for_size(CACHE_MIN),
            size: CACHE_MIN,
            chunks: vec![(CACHE_MIN as u32 / 2, Hash([1; 32])); 2],
        };
        cache.put(&stamp, &big);
        assert_eq!(cache.get(&stamp), Some(big.clone()));
        let path = t.path().join("cache").join(stamp.name());
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        fs::write(&path, &bytes).unwrap();
        assert!(cache.get(&stamp).is_none());
        for ino in 0..(MAX_ENTRIES as u64 + 5) {
            stamp.ino = 1000 + ino;
            cache.put(&stamp, &big);
        }
        assert!(fs::read_dir(t.path().join("cache")).unwrap().count() <= MAX_ENTRIES);
    }
}
