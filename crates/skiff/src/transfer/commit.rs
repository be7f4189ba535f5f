//! Committing a verified file by identity: the file whose bytes were
//! hashed is the file that appears at the destination, or the commit fails
//! and says why.
//!
//! A transfer first [`observe`](Destination::observe)s its destination
//! (absent, or which file is there), writes and verifies a [`Staged`] file,
//! then calls [`commit`]. The commit:
//!
//! 1. applies mode and mtime and fsyncs the staged file;
//! 2. under a process-wide lock (so two commits of one destination are
//!    ordered), checks that the staged name still refers to the verified
//!    file (device and inode), and that the destination is still what was
//!    observed;
//! 3. renames the staged file into place: without replacement
//!    (`RENAME_NOREPLACE`) when the destination was absent, over it when
//!    it was the observed file;
//! 4. checks that the destination now is the verified file, and fsyncs the
//!    directory.
//!
//! So of two concurrent uploads of one path the first to commit wins and
//! the second gets [`CommitError::Exists`] (it did not ask to replace) or
//! [`CommitError::Conflict`] (it asked to replace the file that was there
//! when it started, which is gone): `force` replaces what the transfer saw,
//! never another transfer's result. When the staging area is on another
//! file system than the destination, the staged file is first copied into
//! a new file beside the destination (hidden, randomly named, `O_EXCL`),
//! and that copy is committed the same way.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Mutex;

use cap_std::fs::{Dir, MetadataExt};
use thiserror::Error;

use super::meta;
use super::staging::{create_unique, FileId, Staged};

/// Serialises the check-and-rename step of every commit in the process.
static COMMIT_LOCK: Mutex<()> = Mutex::new(());

/// What was at the destination when the transfer started: nothing, or this
/// file (identity plus change time, so a file rewritten in place, or a new
/// file that reuses the inode number, counts as a different one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Nothing was there.
    Absent,
    /// Nothing was there, and the transfer asked to replace whatever it
    /// found (`force`): a file that appears meanwhile is another
    /// transfer's result, a conflict rather than a plain `exists`.
    AbsentForced,
    /// This object was there (a file, symlink or other non-directory).
    Present {
        /// Device and inode.
        id: FileId,
        /// `st_ctime` seconds.
        ctime: i64,
        /// `st_ctime` nanoseconds.
        ctime_nsec: i64,
    },
}

/// Why a commit did not happen. In every case the destination is
/// untouched (except [`CommitError::Lost`], which reports a race with
/// something outside skiff right after the rename).
#[derive(Debug, Error)]
pub enum CommitError {
    /// Something is at the destination and replacing it was not asked
    /// for (or a directory is in the way).
    #[error("{0}")]
    Exists(&'static str),
    /// The destination changed while the transfer ran: another transfer
    /// committed first.
    #[error("the destination changed while the transfer ran (another upload of it finished first); nothing was replaced")]
    Conflict,
    /// The staged file is no longer the verified one, or the destination
    /// is not the verified file right after the rename.
    #[error("the verified file was replaced or removed before it could be committed")]
    Lost,
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A destination: a name in a directory held open (renames happen in
/// *this* directory even if its path is swapped for a symlink meanwhile).
#[derive(Debug)]
pub struct Destination {
    /// The directory.
    pub dir: Dir,
    /// The final name.
    pub name: String,
}

impl Destination {
    /// What is at the destination now. Fails with [`CommitError::Exists`]
    /// when something is there and `force` is off, or a directory is
    /// there.
    pub fn observe(&self, force: bool) -> Result<Observed, CommitError> {
        let now = self.current()?;
        match now {
            Current::Dir => Err(CommitError::Exists("a directory is in the way")),
            Current::Is(Observed::Present { .. }) if !force => {
                Err(CommitError::Exists("file exists"))
            }
            Current::Is(Observed::Absent) if force => Ok(Observed::AbsentForced),
            Current::Is(o) => Ok(o),
        }
    }

    fn current(&self) -> io::Result<Current> {
        match self.dir.symlink_metadata(&self.name) {
            Ok(md) if md.is_dir() => Ok(Current::Dir),
            Ok(md) => Ok(Current::Is(Observed::Present {
                id: FileId {
                    dev: md.dev(),
                    ino: md.ino(),
                },
                ctime: md.ctime(),
                ctime_nsec: md.ctime_nsec(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Current::Is(Observed::Absent)),
            Err(e) => Err(e),
        }
    }
}

enum Current {
    Dir,
    Is(Observed),
}

/// Moves the verified `staged` file to `dest`, provided the destination
/// is still what `observed` recorded (see the module docs). `mode` and
/// `mtime_ns` are applied first. On failure the staged file is left for
/// the caller to keep or discard.
pub fn commit(
    staged: &Staged,
    dest: &Destination,
    observed: Observed,
    mode: Option<u32>,
    mtime_ns: Option<i64>,
) -> Result<(), CommitError> {
    meta::apply(staged.file(), mode, mtime_ns)?;
    staged.file().sync_all()?;
    let same_device = staged.dir().dir_metadata()?.dev() == dest.dir.dir_metadata()?.dev();
    if same_device {
        match rename_checked(staged, dest, observed) {
            Err(CommitError::Io(e)) if e.raw_os_error() == Some(libc::EXDEV) => {}
            other => return other,
        }
    }
    // Another file system: copy beside the destination, commit the copy.
    let copy = copy_beside(staged, dest)?;
    meta::apply(copy.file(), mode, mtime_ns)?;
    copy.file().sync_all()?;
    match rename_checked(&copy, dest, observed) {
        Ok(()) => {
            staged_done(staged);
            Ok(())
        }
        Err(e) => {
            copy.discard();
            Err(e)
        }
    }
}

/// After a copy was committed, the staged original is no longer needed.
fn staged_done(staged: &Staged) {
    if staged.still_named() {
        let _ = staged.dir().remove_file(staged.name());
    }
}

fn copy_beside(staged: &Staged, dest: &Destination) -> Result<Staged, CommitError> {
    let copy = create_unique(dest.dir.try_clone()?, ".skiff-commit")?;
    let mut from = staged.file().try_clone()?;
    use std::io::Seek;
    from.rewind()?;
    let mut to = copy.file().try_clone()?;
    if let Err(e) = io::copy(&mut from, &mut to) {
        copy.discard();
        return Err(e.into());
    }
    Ok(copy)
}

fn rename_checked(
    staged: &Staged,
    dest: &Destination,
    observed: Observed,
) -> Result<(), CommitError> {
    rename_into_place(staged, dest, observed)?;
    meta::open_self(&dest.dir)?.sync_all()?;
    Ok(())
}

/// Steps 2 and 3 of a commit, and the identity check of step 4, for one
/// file of a batch: the caller has already applied mode and mtime and
/// made the staged file durable (one sync for the whole batch), and
/// fsyncs each destination directory once after all the renames. The
/// staged file must be on the destination's file system (`EXDEV`
/// otherwise; use [`commit`] then).
pub fn rename_into_place(
    staged: &Staged,
    dest: &Destination,
    observed: Observed,
) -> Result<(), CommitError> {
    let _guard = COMMIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if !staged.still_named() {
        return Err(CommitError::Lost);
    }
    // Nothing was there: `RENAME_NOREPLACE` checks that atomically, so
    // the destination is looked at only when the rename finds
    // something in the way (to say what). A tree of small files saves
    // a lookup per file.
    let absent = matches!(observed, Observed::Absent | Observed::AbsentForced);
    if absent {
        match rename(staged, dest, true) {
            Ok(()) => return check_placed(staged, dest),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(CommitError::Io(e)),
        }
    }
    match (observed, dest.current()?) {
        (_, Current::Dir) => return Err(CommitError::Exists("a directory is in the way")),
        (Observed::Absent | Observed::AbsentForced, Current::Is(Observed::Absent)) => {
            rename(staged, dest, true).map_err(|e| {
                if e.raw_os_error() == Some(libc::EEXIST) {
                    taken(observed)
                } else {
                    CommitError::Io(e)
                }
            })?
        }
        (Observed::Absent | Observed::AbsentForced, Current::Is(_)) => {
            return Err(taken(observed));
        }
        (want, Current::Is(now)) if want == now => rename(staged, dest, false)?,
        _ => return Err(CommitError::Conflict),
    }
    check_placed(staged, dest)
}

/// Gives a verified, durable unnamed file ([`super::unnamed`]) its name
/// `name` in `dir`, the directory it was created in, for a destination
/// that was absent (`observed`, or not looked at: without `force` the
/// link itself finds what is in the way). `linkat` never replaces a
/// name, so no lock is needed: whatever took the name first, another
/// transfer's commit included, wins, and this commit says what is there.
pub fn link_into_place(
    file: &std::fs::File,
    dir: &Dir,
    name: &str,
    observed: Observed,
) -> Result<(), CommitError> {
    match super::unnamed::link(file, dir, name) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match dir.symlink_metadata(name) {
            Ok(md) if md.is_dir() => Err(CommitError::Exists("a directory is in the way")),
            _ => Err(taken(observed)),
        },
        Err(e) => Err(CommitError::Io(e)),
    }
}

/// After the rename: the destination name must now refer to the staged
/// file itself.
fn check_placed(staged: &Staged, dest: &Destination) -> Result<(), CommitError> {
    if FileId::of_name(&dest.dir, &dest.name)? != staged.id() {
        return Err(CommitError::Lost);
    }
    Ok(())
}

/// The answer when the destination was absent at the start and something
/// took the name since: `exists`, or with `force` a conflict (`force`
/// replaces what the transfer saw, never another transfer's result).
fn taken(observed: Observed) -> CommitError {
    if observed == Observed::AbsentForced {
        CommitError::Conflict
    } else {
        CommitError::Exists("file exists")
    }
}

/// `renameat2` from the staged name to the destination, optionally with
/// `RENAME_NOREPLACE`.
fn rename(staged: &Staged, dest: &Destination, no_replace: bool) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    let flags = if no_replace {
        RenameFlags::RENAME_NOREPLACE
    } else {
        RenameFlags::empty()
    };
    renameat2(
        Some(staged.dir().as_fd().as_raw_fd()),
        staged.name(),
        Some(dest.dir.as_fd().as_raw_fd()),
        dest.name.as_str(),
        flags,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::staging::{StageKey, StagingArea};
    use cap_std::ambient_authority;
    use std::io::Write;

    fn setup() -> (tempfile::TempDir, StagingArea, Destination) {
        let t = tempfile::tempdir().unwrap();
        let area = StagingArea::open(&t.path().join("state")).unwrap();
        std::fs::create_dir(t.path().join("root")).unwrap();
        let dir = Dir::open_ambient_dir(t.path().join("root"), ambient_authority()).unwrap();
        let dest = Destination {
            dir,
            name: "f".into(),
        };
        (t, area, dest)
    }

    fn staged_with(area: &StagingArea, bytes: &[u8]) -> Staged {
        let s = area.create(&StageKey::new("r", "u", "f")).unwrap();
        s.file().write_all(bytes).unwrap();
        s
    }

    #[test]
    fn first_commit_wins_the_second_is_told() {
        let (t, area, dest) = setup();
        let path = t.path().join("root/f");
        // Without force, both saw "absent".
        let a = staged_with(&area, b"aaaa");
        let b = staged_with(&area, b"bbbb");
        let seen_a = dest.observe(false).unwrap();
        let seen_b = dest.observe(false).unwrap();
        commit(&a, &dest, seen_a, None, None).unwrap();
        assert!(matches!(
            commit(&b, &dest, seen_b, None, None),
            Err(CommitError::Exists(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"aaaa");
        // With force, both saw `a`'s file: the first replaces it, the
        // second finds a different file and replaces nothing.
        let c = staged_with(&area, b"cccc");
        let d = staged_with(&area, b"dddd");
        let seen_c = dest.observe(true).unwrap();
        let seen_d = dest.observe(true).unwrap();
        commit(&d, &dest, seen_d, Some(0o640), None).unwrap();
        assert!(matches!(
            commit(&c, &dest, seen_c, None, None),
            Err(CommitError::Conflict)
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"dddd");
        c.discard();
        b.discard();
    }

    #[test]
    fn a_forced_upload_of_an_absent_path_loses_to_an_earlier_commit_with_a_conflict() {
        let (t, area, dest) = setup();
        let a = staged_with(&area, b"aaaa");
        let b = staged_with(&area, b"bbbb");
        let seen_a = dest.observe(true).unwrap();
        let seen_b = dest.observe(true).unwrap();
        commit(&a, &dest, seen_a, None, None).unwrap();
        assert!(matches!(
            commit(&b, &dest, seen_b, None, None),
            Err(CommitError::Conflict)
        ));
        assert_eq!(std::fs::read(t.path().join("root/f")).unwrap(), b"aaaa");
        b.discard();
    }

    #[test]
    fn a_swapped_staged_file_is_never_committed() {
        let (t, area, dest) = setup();
        let a = staged_with(&area, b"verified");
        // Someone replaces the staged name with other bytes.
        let staged_path = area.path().join("u-u").join(a.name());
        std::fs::remove_file(&staged_path).unwrap();
        std::fs::write(&staged_path, b"evil").unwrap();
        let seen = dest.observe(false).unwrap();
        assert!(matches!(
            commit(&a, &dest, seen, None, None),
            Err(CommitError::Lost)
        ));
        assert!(!t.path().join("root/f").exists());
    }

    #[test]
    fn directories_are_never_replaced() {
        let (t, area, dest) = setup();
        std::fs::create_dir(t.path().join("root/f")).unwrap();
        assert!(matches!(dest.observe(true), Err(CommitError::Exists(_))));
        let a = staged_with(&area, b"x");
        assert!(matches!(
            commit(&a, &dest, Observed::Absent, None, None),
            Err(CommitError::Exists(_))
        ));
    }
}
