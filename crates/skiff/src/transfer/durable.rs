//! Durability paid once per batch instead of once per file.
//!
//! A file is durable when its data, its metadata and the directory entry
//! naming it have reached stable storage. Doing that with an `fsync` per
//! file and per directory costs a journal commit (and a device cache
//! flush) each; for a tree of small files that dominates everything else.
//! The batch method (git's `core.fsyncMethod=batch` is the model):
//!
//! 1. while writing a large file, [`start_writeback`] hands its dirty
//!    pages to the device (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which
//!    does not wait), so the later sync finds little left to do. Ranges
//!    below [`WRITEBACK_MIN`] are left to the batch's sync: starting
//!    writeback of each small file on its own allocates its blocks and
//!    submits one small write per file, where the sync writes them all
//!    out together (on ext4 this alone took a tree of 4 KiB files from
//!    about 4,500 to 1,400 files a second);
//! 2. [`sync_files_known`] makes a whole batch durable in one pass: one
//!    `syncfs` of their file system for a batch of [`SYNCFS_MIN`] files or
//!    more, an `fsync` per file below that (or when `syncfs` reports an
//!    error, so each file's own error is found);
//! 3. the caller renames (or links) the files into place, and a later
//!    pass makes their directories' entries durable: one `fsync` per
//!    distinct directory, or one `syncfs` when there are several on one
//!    file system (each directory `fsync` would be a journal commit of
//!    its own). [`sync_pass`] does step 2 for one batch and step 3 for
//!    the batch placed before it in a single `syncfs`.
//!
//! Only after step 3 may a file be reported as stored.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use super::staging::FileId;

/// From this many files on, one `syncfs` replaces their `fsync`s.
pub const SYNCFS_MIN: usize = 8;

/// Writes shorter than this are not handed to the device early (module
/// docs, step 1).
pub const WRITEBACK_MIN: u64 = 256 * 1024;

/// Starts writeback of `file[offset..offset+len)` without waiting for it,
/// when the range is at least [`WRITEBACK_MIN`] long. Best effort: errors
/// surface in the sync that follows.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    if len < WRITEBACK_MIN {
        return;
    }
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the
    // descriptor is valid for the lifetime of `file`.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Hands a large file being written to the device as it grows (step 1 of
/// the module docs), each time [`Writeback::STEP`] more has been written:
/// the disk then writes while the rest arrives, and the final sync finds
/// little left to do.
#[derive(Debug, Default)]
pub struct Writeback {
    /// Written up to here and handed to the device.
    handed: u64,
}

impl Writeback {
    /// What gathers before it is handed over.
    pub const STEP: u64 = 8 * 1024 * 1024;

    /// A file whose first `offset` bytes need no handing over (a resumed
    /// upload's prefix, already synced).
    pub fn from(offset: u64) -> Writeback {
        Writeback { handed: offset }
    }

    /// The file now holds `end` bytes.
    pub fn wrote(&mut self, file: &File, end: u64) {
        if end >= self.handed.saturating_add(Self::STEP) {
            start_writeback(file, self.handed, end - self.handed);
            self.handed = end;
        }
    }
}

/// Makes every file's data and metadata durable (step 2 of the module
/// docs); one result per file, in order. The caller says whether all
/// `files` are on one file system (`one_fs`): a receiver knows it from
/// the directories it holds, without an `fstat` per file.
pub fn sync_files_known(files: &[&File], one_fs: bool) -> Vec<io::Result<()>> {
    if one_fs && files.len() >= SYNCFS_MIN {
        if let Some(first) = files.first() {
            if nix::unistd::syncfs(first.as_raw_fd()).is_ok() {
                return files.iter().map(|_| Ok(())).collect();
            }
        }
    }
    files.iter().map(|f| f.sync_all()).collect()
}

/// From this many distinct directories on one file system, one `syncfs`
/// replaces their `fsync`s.
pub const DIRS_SYNCFS_MIN: usize = 2;

/// Makes the entries of each directory durable (step 3); the first
/// error. A batch names the same few directories hundreds of times, so
/// repeats are recognised first (`distinct_dirs`). On most file systems
/// each directory `fsync` is a journal commit of its own, so from
/// [`DIRS_SYNCFS_MIN`] directories on one file system one `syncfs`
/// covers them all; an `fsync` per directory otherwise, or when the
/// `syncfs` reports an error (so each directory's own error is found).
fn sync_distinct(distinct: &[DevDir<'_>]) -> io::Result<()> {
    if let Some(dev) = one_dev(distinct) {
        if distinct.len() >= DIRS_SYNCFS_MIN && syncfs_of(distinct, None, dev).is_ok() {
            return Ok(());
        }
    }
    fsync_dirs(distinct)
}

/// One durability pass of a tree receiver: makes `files` durable (step 2)
/// and, in the same pass, the entries of `dirs` (step 3), which the
/// caller changed before calling. `files_dev` is the device all `files`
/// are on, when they share one. One result per file, in order, and the
/// first directory error.
///
/// When everything is on one file system and a `syncfs` is due for
/// either part ([`SYNCFS_MIN`] files or [`DIRS_SYNCFS_MIN`]
/// directories), that one `syncfs` covers both: it returns once every
/// change made to the file system before the call is on stable storage,
/// the data of the files and the entries already made in the directories
/// alike (no file-system-specific ordering is assumed). Otherwise, or
/// when it reports an error, each part is synced on its own: the files
/// as [`sync_files_known`] does, the directories as step 3 says.
pub fn sync_pass<'a>(
    files: &[&File],
    files_dev: Option<u64>,
    dirs: impl IntoIterator<Item = &'a cap_std::fs::Dir>,
) -> (Vec<io::Result<()>>, io::Result<()>) {
    let distinct = distinct_dirs(dirs);
    let dirs_dev = one_dev(&distinct);
    let dev = match (files.is_empty(), files_dev, distinct.is_empty(), dirs_dev) {
        (true, _, _, d) => d,
        (false, f, true, _) => f,
        (false, Some(f), false, Some(d)) if f == d => Some(f),
        _ => None,
    };
    if let Some(dev) = dev {
        let due = files.len() >= SYNCFS_MIN || distinct.len() >= DIRS_SYNCFS_MIN;
        if due && syncfs_of(&distinct, files.first().copied(), dev).is_ok() {
            return (files.iter().map(|_| Ok(())).collect(), Ok(()));
        }
    }
    (
        sync_files_known(files, files_dev.is_some()),
        sync_distinct(&distinct),
    )
}

/// A directory handle and its device (`None`: its `fstat` failed).
type DevDir<'a> = (&'a cap_std::fs::Dir, Option<u64>);

/// The distinct directories among `dirs` (by descriptor, then identity).
fn distinct_dirs<'a>(dirs: impl IntoIterator<Item = &'a cap_std::fs::Dir>) -> Vec<DevDir<'a>> {
    use cap_std::fs::MetadataExt as _;
    use std::os::fd::AsFd;
    let mut seen = std::collections::HashSet::new();
    // Every handle is borrowed for the whole loop, so equal descriptor
    // numbers are the same open directory.
    let mut seen_fds = std::collections::HashSet::new();
    let mut distinct = Vec::new();
    for d in dirs {
        if !seen_fds.insert(d.as_fd().as_raw_fd()) {
            continue;
        }
        match d.dir_metadata() {
            Ok(md) => {
                let id = FileId {
                    dev: md.dev(),
                    ino: md.ino(),
                };
                if seen.insert(id) {
                    distinct.push((d, Some(id.dev)));
                }
            }
            Err(_) => distinct.push((d, None)),
        }
    }
    distinct
}

/// The device every directory is on, if they share one (and there is
/// one).
fn one_dev(distinct: &[DevDir<'_>]) -> Option<u64> {
    let dev = distinct.first()?.1?;
    distinct.iter().all(|(_, d)| *d == Some(dev)).then_some(dev)
}

/// One `syncfs` of device `dev`, through `file` or the first directory.
/// A directory capability may be an `O_PATH` handle, which `syncfs`
/// refuses (`EBADF`): it is given one opened for reading.
fn syncfs_of(distinct: &[DevDir<'_>], file: Option<&File>, dev: u64) -> io::Result<()> {
    if let Some(f) = file {
        return nix::unistd::syncfs(f.as_raw_fd()).map_err(io::Error::from);
    }
    match distinct.iter().find(|(_, d)| *d == Some(dev)) {
        Some((d, _)) => {
            let f = super::meta::open_self(d)?;
            nix::unistd::syncfs(f.as_raw_fd()).map_err(io::Error::from)
        }
        None => Err(io::Error::other("no handle on the file system")),
    }
}

/// An `fsync` per directory; the first error.
fn fsync_dirs(distinct: &[DevDir<'_>]) -> io::Result<()> {
    let mut first_err = None;
    for (d, _) in distinct {
        let synced = super::meta::open_self(d).and_then(|f| f.sync_all());
        if let Err(e) = synced {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn syncs_small_and_large_batches() {
        let t = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for i in 0..(SYNCFS_MIN + 1) {
            let mut f = File::create(t.path().join(format!("f{i}"))).unwrap();
            f.write_all(&[7u8; WRITEBACK_MIN as usize]).unwrap();
            start_writeback(&f, 0, WRITEBACK_MIN);
            files.push(f);
        }
        let refs: Vec<&File> = files.iter().collect();
        assert!(sync_files_known(&refs[..2], true).iter().all(|r| r.is_ok()));
        assert!(sync_files_known(&refs, true).iter().all(|r| r.is_ok()));
        assert!(sync_files_known(&refs, false).iter().all(|r| r.is_ok()));
        let dir =
            cap_std::fs::Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let (files_ok, dirs_ok) = sync_pass(&refs, None, [&dir, &dir]);
        assert!(files_ok.iter().all(|r| r.is_ok()));
        dirs_ok.unwrap();
    }
}
