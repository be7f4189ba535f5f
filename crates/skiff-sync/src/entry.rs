//! One line of a file list: what a tree holds at one path, and the order
//! in which lists are streamed.

use cap_std::fs::{Metadata, MetadataExt};
use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// What kind of thing is at a path. Other file types (FIFOs, sockets,
/// devices) are never listed: a walker reports them as skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
}

/// A path in a tree and its metadata, relative to the tree's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `/`-separated, relative, UTF-8; every component a plain name.
    pub path: String,
    /// File, directory or symlink.
    pub kind: Kind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Length of a file or of a symlink's target; 0 for a directory.
    pub size: u64,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// BLAKE3 of a file's content, when the list was made with checksums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash>,
}

impl Entry {
    /// Describes `meta` (from `symlink_metadata`, never followed) at
    /// `path`; `None` for file types sync does not carry.
    pub fn from_metadata(path: String, meta: &Metadata, target: Option<String>) -> Option<Entry> {
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            return None;
        };
        let size = match kind {
            Kind::File => meta.len(),
            Kind::Dir => 0,
            Kind::Symlink => target.as_ref().map_or(0, |t| t.len() as u64),
        };
        Some(Entry {
            path,
            kind,
            mode: meta.mode() & 0o7777,
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            size,
            target: if kind == Kind::Symlink { target } else { None },
            hash: None,
        })
    }

    /// The last component of the path.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// The order of every file list: component by component, so that a
/// directory comes right before its contents and after everything that
/// sorts before its name (`a`, `a/x`, `a.txt`). This is the order of a
/// depth-first walk that visits each directory's names in byte order, so
/// a walker can stream it while holding one directory at a time.
pub fn path_cmp(a: &str, b: &str) -> Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    a.bytes().map(key).cmp(b.bytes().map(key))
}

/// Whether `path` lies strictly inside directory `dir` (`""` is the root).
pub fn is_within(path: &str, dir: &str) -> bool {
    if dir.is_empty() {
        return !path.is_empty();
    }
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// Why a path from a peer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// Empty path, or an empty, `.` or `..` component, or a leading `/`.
    #[error("not a plain relative path: {0:?}")]
    NotPlain(String),
    /// A NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
}

/// Checks a path received from a peer: relative, plain components only.
/// Confinement on disk is still enforced where paths are opened; this
/// keeps names that mean something else out of the merge.
pub fn check_path(path: &str) -> Result<(), BadPath> {
    if path.contains('\0') {
        return Err(BadPath::Nul);
    }
    let plain = !path.is_empty()
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if plain {
        Ok(())
    } else {
        Err(BadPath::NotPlain(path.chars().take(200).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_depth_first() {
        let mut v = vec!["a.txt", "a/x", "a", "b", "a/x/y", "a-b", "a/y", ""];
        v.sort_by(|a, b| path_cmp(a, b));
        assert_eq!(v, ["", "a", "a/x", "a/x/y", "a/y", "a-b", "a.txt", "b"]);
    }

    #[test]
    fn within() {
        assert!(is_within("a/b", "a"));
        assert!(!is_within("ab", "a"));
        assert!(!is_within("a", "a"));
        assert!(is_within("a", ""));
        assert!(!is_within("", ""));
    }

    #[test]
    fn peer_paths() {
        for ok in ["a", "a/b", ".hidden", "a..b"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", ".", "a/../b", "..", "a/."] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        assert_eq!(check_path("a\0b"), Err(BadPath::Nul));
    }

    #[test]
    fn wire_form() {
        let e = Entry {
            path: "d/l".into(),
            kind: Kind::Symlink,
            mode: 0o777,
            mtime_ns: 5,
            size: 3,
            target: Some("../x".into()),
            hash: None,
        };
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(
            j,
            r#"{"path":"d/l","kind":"symlink","mode":511,"mtime_ns":5,"size":3,"target":"../x"}"#
        );
        assert_eq!(serde_json::from_str::<Entry>(&j).unwrap(), e);
    }
}
