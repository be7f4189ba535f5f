//! Where incoming files are written until they are verified: a private
//! staging directory (the server's `STATE_DIR/partial`) that no client
//! path can name, that `ls`, `get` and globs inside the served root never
//! show, and that outlives a crash so an interrupted upload can resume.
//!
//! Every transfer gets its own file with an unpredictable name, created
//! with `O_EXCL` and held under an exclusive `flock` for as long as the
//! transfer runs. Two uploads of one path therefore never share bytes; a
//! `--resume` takes over a partial file only when no live transfer holds
//! it; and expiry never removes a file in use. Partial files are grouped
//! per user (`u-NAME/`) and found again by a key derived from the served
//! root, the user and the destination path ([`StageKey`]).
//!
//! The commit that moves a verified staged file to its destination is in
//! [`super::commit`].

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::ambient_authority;
use cap_std::fs::DirBuilderExt as _;
use cap_std::fs::{Dir, DirBuilder, MetadataExt, OpenOptions, OpenOptionsExt};

/// Suffix of every staged file.
const SUFFIX: &str = ".part";

/// The identity of a file: device and inode. Two names (or a name and an
/// open descriptor) with the same identity are the very same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file.
    pub fn of_file(file: &File) -> io::Result<FileId> {
        let md = file.metadata()?;
        Ok(FileId {
            dev: md.dev(),
            ino: md.ino(),
        })
    }

    /// The identity of what `name` in `dir` is (a final symlink is not
    /// followed).
    pub fn of_name(dir: &Dir, name: &str) -> io::Result<FileId> {
        let md = dir.symlink_metadata(name)?;
        Ok(FileId {
            dev: md.dev(),
            ino: md.ino(),
        })
    }
}

/// Which partial files belong to one destination of one user under one
/// served root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageKey {
    user_dir: String,
    prefix: String,
}

impl StageKey {
    /// The key for `dest` (a normalised path under the served root) as
    /// uploaded by `user`; `scope` names the served root, so two servers
    /// sharing a state directory never resume each other's files.
    pub fn new(scope: &str, user: &str, dest: &str) -> StageKey {
        let mut h = blake3::Hasher::new();
        for part in ["skiff partial v1", scope, user, dest] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let plain = !user.is_empty()
            && user.len() <= 64
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
        StageKey {
            user_dir: if plain {
                format!("u-{user}")
            } else {
                format!("x-{}", hex::encode(user.as_bytes()))
            },
            prefix: h.finalize().to_hex()[..32].to_string(),
        }
    }
}

/// A staged file: open, exclusively locked, and named in the staging
/// directory. Dropping it releases the lock and keeps the file (for a
/// later resume); [`discard`](Staged::discard) removes it.
#[derive(Debug)]
pub struct Staged {
    file: File,
    dir: Dir,
    name: String,
    id: FileId,
}

impl Staged {
    /// The open file (write and hash through a [`File::try_clone`] of it:
    /// the lock belongs to the open file description, which clones share).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Its identity, fixed when it was created or claimed.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// The directory it is named in.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Its name in [`dir`](Self::dir).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether its name still refers to this very file.
    pub fn still_named(&self) -> bool {
        FileId::of_name(&self.dir, &self.name).is_ok_and(|id| id == self.id)
    }

    /// Removes the staged file, if its name still refers to it.
    pub fn discard(self) {
        if self.still_named() {
            let _ = self.dir.remove_file(&self.name);
        }
    }
}

/// What a sweep found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Partial files kept (younger than the limit, or in use).
    pub kept: u64,
    /// Their bytes.
    pub kept_bytes: u64,
    /// Partial files removed because they were too old.
    pub removed: u64,
    /// Their bytes.
    pub removed_bytes: u64,
}

/// The staging directory.
#[derive(Debug)]
pub struct StagingArea {
    dir: Dir,
    path: PathBuf,
}

impl StagingArea {
    /// Opens (creating it, mode 0700) the staging directory at `path`.
    pub fn open(path: &Path) -> io::Result<StagingArea> {
        std::fs::DirBuilder::new().recursive(true).create(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        Ok(StagingArea {
            dir: Dir::open_ambient_dir(path, ambient_authority())?,
            path: path.to_path_buf(),
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device it lives on (a commit to another device copies).
    pub fn device(&self) -> io::Result<u64> {
        Ok(self.dir.dir_metadata()?.dev())
    }

    fn user_dir(&self, key: &StageKey) -> io::Result<Dir> {
        let mut b = DirBuilder::new();
        b.mode(0o700);
        match self.dir.create_dir_with(&key.user_dir, &b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        self.dir.open_dir_nofollow(&key.user_dir)
    }

    /// A new, empty staged file for `key`, under a fresh random name.
    pub fn create(&self, key: &StageKey) -> io::Result<Staged> {
        let dir = self.user_dir(key)?;
        create_unique(dir, &key.prefix)
    }

    /// The directory `key`'s staged files go in, opened once for the many
    /// files of a tree upload (see [`create_in`](Self::create_in)).
    pub fn open_user_dir(&self, key: &StageKey) -> io::Result<Dir> {
        self.user_dir(key)
    }

    /// [`create`](Self::create) in a directory from
    /// [`open_user_dir`](Self::open_user_dir) for the same user.
    pub fn create_in(&self, dir: &Dir, key: &StageKey) -> io::Result<Staged> {
        create_unique(dir.try_clone()?, &key.prefix)
    }

    /// Takes over the newest partial file of `key` that no live transfer
    /// holds, with its length. A partial file longer than `max_len`
    /// belongs to another version of the source and is removed. `None`
    /// when there is nothing to resume.
    pub fn resume(&self, key: &StageKey, max_len: u64) -> io::Result<Option<(Staged, u64)>> {
        let dir = self.user_dir(key)?;
        let want = format!("{}-", key.prefix);
        let mut found = Vec::new();
        for ent in dir.entries()?.flatten() {
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            if !(name.starts_with(&want) && name.ends_with(SUFFIX)) {
                continue;
            }
            if let Ok(md) = dir.symlink_metadata(&name) {
                if md.is_file() {
                    found.push((md.modified().ok(), name));
                }
            }
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (_, name) in found {
            let Some(staged) = claim(&dir, &name)? else {
                continue;
            };
            let len = staged.file.metadata()?.len();
            if len > max_len {
                staged.discard();
                continue;
            }
            return Ok(Some((staged, len)));
        }
        Ok(None)
    }

    /// Removes partial files not modified for `max_age` as of `now` (the
    /// caller's clock, so tests can move time), skipping any a live
    /// transfer holds, and counts what stays.
    pub fn sweep(&self, now: SystemTime, max_age: Duration) -> io::Result<SweepReport> {
        let mut report = SweepReport::default();
        for ent in self.dir.entries()?.flatten() {
            let Ok(sub) = ent.file_name().into_string() else {
                continue;
            };
            let Ok(dir) = self.dir.open_dir_nofollow(&sub) else {
                continue;
            };
            for f in dir.entries()?.flatten() {
                let Ok(name) = f.file_name().into_string() else {
                    continue;
                };
                let Ok(md) = dir.symlink_metadata(&name) else {
                    continue;
                };
                if !md.is_file() || !name.ends_with(SUFFIX) {
                    continue;
                }
                let age = md
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m.into_std()).ok())
                    .unwrap_or_default();
                if age <= max_age {
                    report.kept += 1;
                    report.kept_bytes += md.len();
                    continue;
                }
                match claim(&dir, &name)? {
                    Some(staged) => {
                        staged.discard();
                        report.removed += 1;
                        report.removed_bytes += md.len();
                    }
                    None => {
                        report.kept += 1;
                        report.kept_bytes += md.len();
                    }
                }
            }
        }
        Ok(report)
    }
}

/// Creates `PREFIX-RANDOM.part` in `dir` with `O_EXCL`, locked.
pub fn create_unique(dir: Dir, prefix: &str) -> io::Result<Staged> {
    let mut opts = OpenOptions::new();
    opts.read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .follow(FollowSymlinks::No);
    for _ in 0..16 {
        let name = format!("{prefix}-{:016x}{SUFFIX}", rand::random::<u64>());
        let file = match dir.open_with(&name, &opts) {
            Ok(f) => f.into_std(),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        if !try_lock(&file)? {
            // Nobody can hold a lock on a file we just created, unless it
            // is not ours after all.
            continue;
        }
        let id = FileId::of_file(&file)?;
        return Ok(Staged {
            file,
            dir,
            name,
            id,
        });
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not create a unique staging file",
    ))
}

/// Removes `name` in `dir` if it is a file no live transfer holds (one an
/// interrupted transfer left behind); `false` when it is busy or gone.
pub fn remove_abandoned(dir: &Dir, name: &str) -> io::Result<bool> {
    match claim(dir, name)? {
        Some(s) => {
            s.discard();
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Opens and locks `name` in `dir` if no one else holds it and the name
/// still refers to the file opened (it may have been committed or removed
/// meanwhile). `None` when it is busy or gone.
fn claim(dir: &Dir, name: &str) -> io::Result<Option<Staged>> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).follow(FollowSymlinks::No);
    let file = match dir.open_with(name, &opts) {
        Ok(f) => f.into_std(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() || !try_lock(&file)? {
        return Ok(None);
    }
    let staged = Staged {
        id: FileId::of_file(&file)?,
        file,
        dir: dir.try_clone()?,
        name: name.to_string(),
    };
    // Locked now; but the holder we waited out may have renamed it away.
    Ok(staged.still_named().then_some(staged))
}

/// `flock(LOCK_EX | LOCK_NB)`: `false` when another open file description
/// holds the lock.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn area() -> (tempfile::TempDir, StagingArea) {
        let t = tempfile::tempdir().unwrap();
        let a = StagingArea::open(&t.path().join("partial")).unwrap();
        (t, a)
    }

    #[test]
    fn each_transfer_gets_its_own_file() {
        let (_t, a) = area();
        let k = StageKey::new("/root", "alice", "f");
        let one = a.create(&k).unwrap();
        let two = a.create(&k).unwrap();
        assert_ne!(one.name(), two.name());
        assert_ne!(one.id(), two.id());
        // Both are held: nothing to resume.
        assert!(a.resume(&k, 100).unwrap().is_none());
        (&one.file).write_all(b"abc").unwrap();
        drop(one);
        let (r, len) = a.resume(&k, 100).unwrap().unwrap();
        assert_eq!(len, 3);
        // Another user, root or path never finds it.
        for other in [
            StageKey::new("/root", "bob", "f"),
            StageKey::new("/other", "alice", "f"),
            StageKey::new("/root", "alice", "g"),
        ] {
            assert!(a.resume(&other, 100).unwrap().is_none());
        }
        drop(r);
        // Longer than the announced size: removed, not resumed.
        assert!(a.resume(&k, 2).unwrap().is_none());
        drop(two);
    }

    #[test]
    fn odd_user_names_stay_inside() {
        let (_t, a) = area();
        for user in ["..", ".", "a/b", ""] {
            let s = a.create(&StageKey::new("/r", user, "f")).unwrap();
            assert!(s.still_named());
        }
        let subdirs: Vec<_> = std::fs::read_dir(a.path()).unwrap().flatten().collect();
        assert_eq!(subdirs.len(), 4);
    }

    #[test]
    fn sweep_removes_only_old_idle_files() {
        const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
        let (_t, a) = area();
        let k = StageKey::new("/r", "u", "f");
        let idle = a.create(&k).unwrap();
        (&idle.file).write_all(&[0; 10]).unwrap();
        let idle_name = idle.name().to_string();
        drop(idle);
        let busy = a.create(&k).unwrap();
        let now = SystemTime::now();
        let r = a.sweep(now, WEEK).unwrap();
        assert_eq!((r.kept, r.removed, r.kept_bytes), (2, 0, 10));
        // Eight days later (a faked clock): the idle one goes, the busy
        // one stays.
        let later = now + Duration::from_secs(8 * 24 * 3600);
        let r = a.sweep(later, WEEK).unwrap();
        assert_eq!((r.kept, r.removed, r.removed_bytes), (1, 1, 10));
        assert!(busy.still_named());
        let dir = busy.dir().try_clone().unwrap();
        assert!(dir.symlink_metadata(&idle_name).is_err());
    }
}
