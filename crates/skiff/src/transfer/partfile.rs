//! The hidden partial file an incoming transfer is written to, and its
//! atomic commit. Used by the server for `put` and by the client for `get`,
//! so both ends give the same guarantee: the destination name shows either
//! the old content or the complete, verified new file, never a prefix.

use std::fs::File;
use std::io;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

use super::meta;
use super::names::part_name;

/// A destination `name` inside the directory capability `dir`, and its
/// partial file `.NAME.skiff-part` next to it.
pub struct PartFile {
    /// The directory, held open: renames happen in *this* directory even
    /// if its path is swapped for a symlink meanwhile.
    pub dir: Dir,
    /// Final name.
    pub name: String,
    /// Hidden partial name.
    pub part: String,
}

impl PartFile {
    /// The partial file for `name` in `dir`.
    pub fn new(dir: Dir, name: &str) -> PartFile {
        PartFile {
            dir,
            name: name.to_string(),
            part: part_name(name),
        }
    }

    /// Fails with `AlreadyExists` when something is at the destination,
    /// unless `force` allows replacing it; a directory is never replaced.
    pub fn check_destination(&self, force: bool) -> io::Result<()> {
        match self.dir.symlink_metadata(&self.name) {
            Ok(md) if md.is_dir() => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a directory is in the way",
            )),
            Ok(_) if !force => Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists")),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Length of an existing partial file (0 when there is none): where a
    /// resumed transfer continues.
    pub fn resumable_len(&self) -> u64 {
        self.dir
            .symlink_metadata(&self.part)
            .ok()
            .filter(|m| m.is_file())
            .map_or(0, |m| m.len())
    }

    /// Opens the partial file for writing. With `resume`, an existing
    /// partial file is kept and its length returned (it is cut back to 0
    /// when longer than `max_len`); otherwise any stale one is replaced by
    /// a fresh, empty file. Symlinks at the partial name are never followed.
    pub fn open(&self, resume: bool, max_len: u64) -> io::Result<(File, u64)> {
        if resume {
            let mut opts = OpenOptions::new();
            opts.read(true).write(true).follow(FollowSymlinks::No);
            match self.dir.open_with(&self.part, &opts) {
                Ok(f) => {
                    let f = f.into_std();
                    let md = f.metadata()?;
                    if !md.is_file() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "the partial file is not a regular file",
                        ));
                    }
                    // Longer than the file: it belongs to another version.
                    let offset = if md.len() <= max_len { md.len() } else { 0 };
                    return Ok((f, offset));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.discard_checked()?;
        let mut opts = OpenOptions::new();
        opts.read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .follow(FollowSymlinks::No);
        Ok((self.dir.open_with(&self.part, &opts)?.into_std(), 0))
    }

    /// Gives the verified file its mode and mtime, fsyncs it, renames it
    /// into place and fsyncs the directory.
    pub fn commit(
        &self,
        file: &File,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
        force: bool,
    ) -> io::Result<()> {
        meta::apply(file, mode, mtime_ns)?;
        file.sync_all()?;
        self.check_destination(force)?;
        self.dir.rename(&self.part, &self.dir, &self.name)?;
        meta::open_self(&self.dir)?.sync_all()
    }

    /// Removes the partial file, if any.
    pub fn discard(&self) {
        let _ = self.discard_checked();
    }

    fn discard_checked(&self) -> io::Result<()> {
        match self.dir.remove_file(&self.part) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
