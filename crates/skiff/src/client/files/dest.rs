//! Where a copy goes, with cp/scp semantics on both sides.
//!
//! - A destination ending in `/` (or `.`, or the root) is a directory:
//!   created when only its last component is missing, "not a directory"
//!   (exit 1) when it names something else.
//! - Several sources need a directory destination.
//! - A source goes *into* a destination that is a directory (as
//!   `DEST/BASENAME`), else it *becomes* the destination, for files and
//!   trees (`-r`) alike.

use std::path::{Path, PathBuf};

use skiff_wire::message::files::EntryKind;
use skiff_wire::{ErrorCode, ErrorMsg};

use super::remote;
use crate::client::ClientError;
use crate::session::Session;
use crate::transfer::names::base_name;

/// Whether `path` (as the user wrote it) insists on being a directory.
pub fn wants_dir(path: &str) -> bool {
    path.is_empty() || path == "." || path == "/" || path.ends_with('/') || path.ends_with("/.")
}

/// Where one source lands, given whether the destination is a directory
/// (`/` for the root).
pub fn remote_place(dest: &str, dest_is_dir: bool, source_name: Option<&str>) -> String {
    let placed = match source_name {
        Some(n) if dest_is_dir && !n.is_empty() => super::remote_join(dest, n),
        _ => dest.trim_end_matches('/').to_string(),
    };
    if placed.is_empty() {
        "/".to_string()
    } else {
        placed
    }
}

/// Where one remote source lands locally, given whether LOCAL is a directory.
pub fn local_place(dest: &Path, dest_is_dir: bool, remote_source: &str) -> PathBuf {
    let name = base_name(remote_source);
    if dest_is_dir && !name.is_empty() {
        dest.join(name)
    } else {
        dest.to_path_buf()
    }
}

fn not_a_directory(path: &str) -> ClientError {
    ClientError::Remote(ErrorMsg::new(
        ErrorCode::NotFound,
        format!("{path}: not a directory"),
    ))
}

fn several_need_a_dir(path: &str) -> String {
    format!(
        "{path}: no such directory (several sources need a directory destination; write {}/ to create it)",
        path.trim_end_matches('/')
    )
}

/// Prepares a remote destination: whether it is (now) a directory.
/// `several` says more than one source goes there.
pub async fn remote_destination(
    session: &mut Session<'_>,
    path: &str,
    several: bool,
) -> Result<bool, ClientError> {
    let want_dir = wants_dir(path);
    let trimmed = path.trim_end_matches('/');
    let kind =
        match remote::stat_opt(session, if trimmed.is_empty() { "/" } else { trimmed }).await? {
            // A link to a directory counts as the directory, as in cp(1).
            Some(e) if e.kind == EntryKind::Symlink => {
                match remote::stat_opt(session, &format!("{trimmed}/")).await {
                    Ok(Some(d)) => Some(d.kind),
                    _ => Some(EntryKind::Symlink),
                }
            }
            other => other.map(|e| e.kind),
        };
    match kind {
        Some(EntryKind::Dir) => Ok(true),
        Some(_) if want_dir || several => Err(not_a_directory(path)),
        Some(_) => Ok(false),
        None if want_dir => {
            remote::mkdir(session, trimmed, false)
                .await
                .map_err(|e| match e {
                    ClientError::Remote(m) if m.code == ErrorCode::NotFound => {
                        ClientError::Remote(ErrorMsg::new(
                            ErrorCode::NotFound,
                            format!(
                                "{path}: its parent directory does not exist (only the last component of a destination directory is created; create the rest with `skiff mkdir -p`)"
                            ),
                        ))
                    }
                    e => e,
                })?;
            Ok(true)
        }
        None if several => Err(ClientError::Remote(ErrorMsg::new(
            ErrorCode::NotFound,
            several_need_a_dir(path),
        ))),
        None => Ok(false),
    }
}

/// Prepares a local destination: whether it is (now) a directory.
pub fn local_destination(path: &Path, several: bool) -> Result<bool, ClientError> {
    let written = path.to_string_lossy();
    let want_dir = wants_dir(&written);
    let local = ClientError::Local;
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) if want_dir || several => Err(local(format!("{written}: not a directory"))),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && want_dir => {
            std::fs::create_dir(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    local(format!(
                        "{written}: its parent directory does not exist (only the last component of a destination directory is created; run `mkdir -p` first)"
                    ))
                } else {
                    local(format!("{written}: {e}"))
                }
            })?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && several => {
            Err(local(several_need_a_dir(&written)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        // ENOTDIR: a component of the path is a file.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            Err(local(format!("{written}: not a directory")))
        }
        Err(e) => Err(local(format!("{written}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_destinations() {
        assert!(wants_dir("a/"));
        assert!(wants_dir("."));
        assert!(wants_dir("a/."));
        assert!(wants_dir(""));
        assert!(!wants_dir("a"));
        let dir = tempfile::tempdir().unwrap();
        let new = PathBuf::from(format!("{}/new/", dir.path().display()));
        assert!(local_destination(&new, false).unwrap());
        assert!(new.is_dir());
        let deep = PathBuf::from(format!("{}/x/y/", dir.path().display()));
        let err = local_destination(&deep, false).unwrap_err().to_string();
        assert!(err.contains("mkdir -p"), "{err}");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(!local_destination(&file, false).unwrap());
        let slash = PathBuf::from(format!("{}/", file.display()));
        let err = local_destination(&slash, false).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        assert!(local_destination(&file, true).is_err());
        assert!(!local_destination(&dir.path().join("absent"), false).unwrap());
        assert!(local_destination(&dir.path().join("absent"), true).is_err());
    }

    #[test]
    fn places() {
        assert_eq!(remote_place("www", true, Some("site")), "www/site");
        assert_eq!(remote_place("www/", true, Some("site")), "www/site");
        assert_eq!(remote_place("www", false, Some("site")), "www");
        assert_eq!(remote_place("/", true, Some("f")), "/f");
        assert_eq!(remote_place("/", true, None), "/");
        assert_eq!(remote_place("d/", true, None), "d");
        let d = Path::new("out");
        assert_eq!(local_place(d, true, "logs/a.log"), d.join("a.log"));
        assert_eq!(local_place(d, false, "logs/a.log"), d.to_path_buf());
        assert_eq!(local_place(d, true, "/"), d.to_path_buf());
    }
}
