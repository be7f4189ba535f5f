//! `sync --atomic`: the receiver builds the new tree in a hidden sibling of
//! DST (`.skiff-atomic-NAME`: every directory recreated, every file
//! hard-linked from the old tree, every link copied), the sync runs into
//! that sibling (a changed file is committed there by rename, which
//! replaces the link and leaves the old inode alone; a metadata change of
//! a linked file is made on a copy, `apply::set_meta`), and the two
//! directories are then exchanged with one `renameat2(RENAME_EXCHANGE)`.
//! A reader of DST sees the old tree or the new one, never a mix.
//!
//! Everything goes through the capability of DST's parent directory, so
//! the server (a push) and the client (a pull) share this code and the
//! server never leaves its root. DST's own directory is locked (`flock`)
//! while the sync runs, so two atomic syncs of one DST cannot build the
//! same sibling.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;

use cap_fs_ext::DirExt as _;
use cap_std::fs::{Dir, MetadataExt as _};

use super::apply::is_temp_name;
use crate::transfer::meta;

/// Prefix of the sibling the new tree is built in.
pub const SIBLING_PREFIX: &str = ".skiff-atomic-";

/// What an atomic sync did with DST, as the summary reports it.
pub mod outcome {
    /// The new tree replaced the old one in one exchange.
    pub const EXCHANGED: &str = "exchanged";
    /// Nothing differed: DST was left as it was, no exchange.
    pub const UNCHANGED: &str = "unchanged";
    /// Something failed: the new tree was discarded, DST is the old tree.
    pub const KEPT: &str = "kept";
}

/// A new tree being built beside DST.
pub struct Shadow {
    parent: Dir,
    name: String,
    sibling: String,
    /// DST's directory, `flock`ed until the shadow is gone.
    _lock: File,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow")
            .field("name", &self.name)
            .field("sibling", &self.sibling)
            .finish()
    }
}

/// Why `--atomic` cannot be done; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("--atomic: {0}")]
pub struct AtomicError(pub String);

fn err(what: impl std::fmt::Display) -> AtomicError {
    AtomicError(what.to_string())
}

impl Shadow {
    /// Checks what `--atomic` needs and builds the sibling of `name` (an
    /// existing directory, not a symlink) in `parent`: Linux
    /// (`renameat2`), DST on the same file system as its parent (not a
    /// mount point), no other atomic sync of DST running. A sibling left
    /// by a killed run is removed first. Every refusal comes before
    /// anything is written. Blocking (one hard link per file).
    pub fn prepare(parent: Dir, name: &str) -> Result<Shadow, AtomicError> {
        if !cfg!(target_os = "linux") {
            return Err(err(
                "needs Linux (renameat2 with RENAME_EXCHANGE); run without --atomic",
            ));
        }
        let md = parent
            .symlink_metadata(name)
            .map_err(|e| err(format!("{name}: {e}")))?;
        if md.file_type().is_symlink() {
            return Err(err(format!(
                "{name} is a symlink; name the directory itself (the exchange would swap the link)"
            )));
        }
        if !md.is_dir() {
            return Err(err(format!("{name}: not a directory")));
        }
        let pmd = parent.dir_metadata().map_err(err)?;
        if pmd.dev() != md.dev() {
            return Err(err(format!(
                "{name} is a mount point: the new tree is built beside it, in its parent \
                 directory, which must be on the same file system; sync into a directory \
                 inside the mount instead"
            )));
        }
        let dst = parent.open_dir_nofollow(name).map_err(err)?;
        let lock = meta::open_self(&dst).map_err(err)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(err(format!(
                "another --atomic sync of {name} is running; wait for it to finish"
            )));
        }
        let sibling = format!("{SIBLING_PREFIX}{name}");
        match parent.symlink_metadata(&sibling) {
            Ok(m) if m.is_dir() => parent.remove_dir_all(&sibling).map_err(|e| {
                err(format!(
                    "removing {sibling} left by an interrupted run: {e}"
                ))
            })?,
            Ok(_) => parent.remove_file(&sibling).map_err(err)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let shadow = Shadow {
            parent,
            name: name.to_string(),
            sibling,
            _lock: lock,
        };
        if let Err(e) = shadow.build(&dst) {
            let msg = format!("building {}: {e}", shadow.sibling);
            shadow.remove();
            return Err(err(msg));
        }
        Ok(shadow)
    }

    fn build(&self, dst: &Dir) -> io::Result<()> {
        self.parent.create_dir(&self.sibling)?;
        let to = self.parent.open_dir_nofollow(&self.sibling)?;
        clone_tree(dst, &to)
    }

    /// The directory the sync writes the new tree into.
    pub fn dir(&self) -> io::Result<Dir> {
        self.parent.open_dir_nofollow(&self.sibling)
    }

    /// Exchanges the new tree with DST (when `changed`; otherwise DST is
    /// left as it is), makes the exchange durable with an fsync of the
    /// parent, and removes the old tree, now at the sibling's name.
    /// Returns the [`outcome`]. Blocking.
    pub fn commit(self, changed: bool) -> Result<&'static str, AtomicError> {
        if !changed {
            self.remove();
            return Ok(outcome::UNCHANGED);
        }
        if let Err(e) = self.exchange() {
            let hint = match e.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::ENOSYS) => {
                    " (this file system does not support RENAME_EXCHANGE; run without --atomic)"
                }
                _ => "",
            };
            let msg = format!(
                "exchanging {} with {}: {e}{hint}; {} was left as it was",
                self.sibling, self.name, self.name
            );
            self.remove();
            return Err(err(msg));
        }
        self.remove();
        Ok(outcome::EXCHANGED)
    }

    #[cfg(target_os = "linux")]
    fn exchange(&self) -> io::Result<()> {
        use nix::fcntl::{renameat2, RenameFlags};
        let fd = self.parent.as_raw_fd();
        renameat2(
            Some(fd),
            self.sibling.as_str(),
            Some(fd),
            self.name.as_str(),
            RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(io::Error::from)?;
        meta::open_self(&self.parent)?.sync_all()
    }

    #[cfg(not(target_os = "linux"))]
    fn exchange(&self) -> io::Result<()> {
        Err(io::Error::other("renameat2 needs Linux"))
    }

    /// Discards the new tree: DST stays the old tree. Blocking.
    pub fn abort(self) {
        self.remove();
    }

    fn remove(&self) {
        let _ = self.parent.remove_dir_all(&self.sibling);
    }
}

/// Recreates `from` in `to`: directories with their modes (and, once
/// their contents are in, their mtimes), files hard-linked, symlinks
/// copied; other kinds and the receiver's temporary names are left out,
/// as the receiver's list leaves them out.
fn clone_tree(from: &Dir, to: &Dir) -> io::Result<()> {
    let md = from.dir_metadata()?;
    let mut names: Vec<String> = Vec::new();
    for e in from.entries()? {
        // Names that are not UTF-8 are not synced either.
        if let Ok(n) = e?.file_name().into_string() {
            if !is_temp_name(&n) {
                names.push(n);
            }
        }
    }
    names.sort();
    for n in names {
        let m = from.symlink_metadata(&n)?;
        let t = m.file_type();
        if t.is_dir() {
            to.create_dir(&n)?;
            clone_tree(&from.open_dir_nofollow(&n)?, &to.open_dir_nofollow(&n)?)?;
        } else if t.is_file() {
            from.hard_link(&n, to, &n)?;
        } else if t.is_symlink() {
            to.symlink(from.read_link(&n)?, &n)?;
        }
    }
    let mtime = md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec();
    meta::apply(&meta::open_self(to)?, Some(md.mode() & 0o7777), Some(mtime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;
    use std::os::unix::fs::MetadataExt as _;

    use crate::sync::batch::tests::names;

    #[test]
    fn the_shadow_links_files_and_the_exchange_swaps_the_trees() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/f"), b"old").unwrap();
        std::os::unix::fs::symlink("sub/f", d.join("l")).unwrap();
        let parent = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let s = Shadow::prepare(parent.try_clone().unwrap(), "d").unwrap();
        let sib = t.path().join(".skiff-atomic-d");
        assert_eq!(
            std::fs::metadata(sib.join("sub/f")).unwrap().ino(),
            std::fs::metadata(d.join("sub/f")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read_link(sib.join("l")).unwrap().to_str(),
            Some("sub/f")
        );
        // A second atomic sync of the same DST is refused while this runs.
        let e = Shadow::prepare(parent.try_clone().unwrap(), "d").unwrap_err();
        assert!(e.to_string().contains("another --atomic sync"), "{e}");
        std::fs::write(sib.join("new"), b"n").unwrap();
        assert_eq!(s.commit(true).unwrap(), outcome::EXCHANGED);
        assert_eq!(names(&d), ["l", "new", "sub"]);
        assert_eq!(names(t.path()), ["d"], "the old tree is removed");

        // Nothing changed: no exchange, the sibling is gone.
        let s = Shadow::prepare(parent.try_clone().unwrap(), "d").unwrap();
        let ino = std::fs::metadata(&d).unwrap().ino();
        assert_eq!(s.commit(false).unwrap(), outcome::UNCHANGED);
        assert_eq!(std::fs::metadata(&d).unwrap().ino(), ino);
        assert_eq!(names(t.path()), ["d"]);
    }

    #[test]
    fn a_leftover_sibling_is_replaced_and_bad_destinations_are_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("d")).unwrap();
        std::fs::create_dir_all(t.path().join(".skiff-atomic-d/stale")).unwrap();
        std::os::unix::fs::symlink("d", t.path().join("link")).unwrap();
        std::fs::write(t.path().join("file"), b"").unwrap();
        let parent = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let s = Shadow::prepare(parent.try_clone().unwrap(), "d").unwrap();
        assert!(names(&t.path().join(".skiff-atomic-d")).is_empty());
        s.abort();
        assert_eq!(names(t.path()), ["d", "file", "link"]);
        for (name, says) in [("link", "symlink"), ("file", "not a directory")] {
            let e = Shadow::prepare(parent.try_clone().unwrap(), name).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}
