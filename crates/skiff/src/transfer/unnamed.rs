//! Files received without a name until they are verified and durable:
//! created with `O_TMPFILE` in the very directory they will appear in,
//! and given their name with `linkat` only at the commit.
//!
//! For a tree of small files this is the cheapest way to keep the
//! guarantee that a destination name shows only a complete, verified
//! file. A named hidden file (the staging area's, or a partial file
//! beside the destination) costs a name to create, a lock, identity
//! checks that nobody swapped it, and a rename between directories; an
//! unnamed file cannot be swapped or seen by anyone, vanishes by itself
//! when the receiver dies (nothing is left to sweep), and `linkat` never
//! replaces an existing name, so a file that appeared at the destination
//! meanwhile is found atomically (`EEXIST`).
//!
//! Where the file system does not support `O_TMPFILE`, [`create`] says so
//! (`Ok(None)`) and the caller uses its named hidden file instead.
//! Unnamed files serve only destinations that are absent: replacing a
//! file (`force`) goes through the named path, which renames over it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};

use cap_std::fs::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::linkat;

/// A new, empty, unnamed regular file (mode 0600) on the file system of
/// `dir`, open for reading and writing; `Ok(None)` when that file system
/// (or kernel) cannot create unnamed files.
pub fn create(dir: &Dir) -> io::Result<Option<File>> {
    let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
    match openat(
        Some(dir.as_fd().as_raw_fd()),
        ".",
        flags,
        Mode::from_bits_truncate(0o600),
    ) {
        // SAFETY: `openat` just returned this descriptor, and nothing
        // else owns it.
        Ok(fd) => Ok(Some(unsafe { File::from_raw_fd(fd) })),
        // Kernels and file systems without O_TMPFILE answer one of these.
        Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Gives the unnamed `file` the name `name` in `dir`, which must be on
/// its file system. Never replaces anything: `AlreadyExists` when the
/// name is taken.
pub fn link(file: &File, dir: &Dir, name: &str) -> io::Result<()> {
    let to = Some(dir.as_fd().as_raw_fd());
    // `AT_EMPTY_PATH` links the descriptor itself; kernels that reserve
    // it for privileged callers refuse with ENOENT or EPERM, and the
    // descriptor's /proc link does the same for anyone.
    match linkat(
        Some(file.as_raw_fd()),
        "",
        to,
        name,
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    ) {
        Ok(()) => return Ok(()),
        Err(Errno::ENOENT | Errno::EPERM) => {}
        Err(e) => return Err(io::Error::from(e)),
    }
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    linkat(
        None,
        proc_path.as_str(),
        to,
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn dir() -> (tempfile::TempDir, Dir) {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        (t, d)
    }

    #[test]
    fn an_unnamed_file_appears_only_when_linked() {
        let (t, d) = dir();
        let Some(mut f) = create(&d).unwrap() else {
            return; // this file system has no O_TMPFILE: nothing to test
        };
        f.write_all(b"hello").unwrap();
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
        link(&f, &d, "a").unwrap();
        let mut s = String::new();
        File::open(t.path().join("a"))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn linking_never_replaces_a_name() {
        let (t, d) = dir();
        std::fs::write(t.path().join("a"), b"old").unwrap();
        let Some(mut f) = create(&d).unwrap() else {
            return;
        };
        f.write_all(b"new").unwrap();
        let e = link(&f, &d, "a").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"old");
        std::fs::create_dir(t.path().join("b")).unwrap();
        assert!(link(&f, &d, "b").is_err());
    }

    #[test]
    fn an_unnamed_file_that_is_dropped_leaves_nothing() {
        let (t, d) = dir();
        if let Some(mut f) = create(&d).unwrap() {
            f.write_all(&[1u8; 4096]).unwrap();
        }
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }
}
