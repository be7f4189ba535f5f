//! `ls` and `stat`: metadata as [`Entry`] values. Symlinks are described,
//! never followed (except by a directory `ls` whose path itself passes
//! through in-root links).

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;
use skiff_wire::message::files::{Entries, Entry, EntryKind, Ls, Stat, StatReply};
use skiff_wire::{ErrorCode, ErrorMsg, Message};
use tokio::sync::mpsc;

use super::confine;
use crate::session::{Session, SessionError};
use crate::transfer::{errors, glob, meta};

/// Most serialized bytes in one `entries` body.
const BATCH_BYTES: usize = 256 * 1024;

/// Describes one path (a final symlink is described, not followed).
pub fn stat(root: &Dir, req: &Stat) -> Result<StatReply, ErrorMsg> {
    let comps = confine::components(&req.path)?;
    if comps.is_empty() {
        let md = root.dir_metadata().map_err(|e| errors::to_msg(&e, "/"))?;
        return Ok(StatReply {
            entry: meta::entry("/".into(), &md, None),
        });
    }
    if req.path.ends_with('/') {
        // As in POSIX, a trailing `/` asks for a directory (a final link
        // to one is followed, beneath the root).
        let md = root
            .metadata(comps.join("/"))
            .map_err(|e| errors::to_msg(&e, &req.path))?;
        if !md.is_dir() {
            return Err(ErrorMsg::new(
                ErrorCode::NotFound,
                format!("{}: not a directory", req.path),
            ));
        }
        return Ok(StatReply {
            entry: meta::entry(comps.join("/"), &md, None),
        });
    }
    let loc = confine::locate(root, &req.path, Stat::OP)?;
    Ok(StatReply {
        entry: describe(&loc.parent, &loc.name, loc.name.clone())
            .map_err(|e| errors::to_msg(&e, &req.path))?,
    })
}

/// lstat of `name` in `dir`, with the link target for symlinks.
fn describe(dir: &Dir, name: &str, path: String) -> std::io::Result<Entry> {
    let md = dir.symlink_metadata(name)?;
    let target = if md.file_type().is_symlink() {
        Some(dir.read_link_contents(name)?.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(meta::entry(path, &md, target))
}

/// Lists a directory (or the tree beneath it), streaming `entries` batches.
pub async fn ls(session: &mut Session<'_>, root: &Dir, req: Ls) -> Result<(), SessionError> {
    let start = match open_listing(root, &req) {
        Ok(s) => s,
        Err(m) => return session.queue(&m, &[]),
    };
    let pattern = match req.pattern.as_deref().map(glob::Pattern::new) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            let code = match e {
                glob::PatternError::Escape(_) => ErrorCode::PathEscape,
                glob::PatternError::Syntax(..) => ErrorCode::NotFound,
            };
            return session.queue(&ErrorMsg::new(code, e.to_string()), &[]);
        }
    };
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(2);
    let recursive = req.recursive;
    let walker = tokio::task::spawn_blocking(move || match (start, pattern) {
        (Listing::Dir(d), Some(p)) => walk_matching(d, &p, &tx),
        // A pattern beneath a non-directory matches nothing.
        (Listing::Single(_), Some(_)) => {}
        (Listing::Single(e), None) => {
            let _ = tx.blocking_send(Ok(batch_json(&[e])));
        }
        (Listing::Dir(d), None) => walk(d, recursive, &tx),
    });
    // Batches are sent with `more: true`; the final frame is empty.
    while let Some(batch) = rx.recv().await {
        match batch {
            Ok(body) => {
                session.write(&Entries { more: true }, &body).await?;
            }
            Err(e) => {
                drop(rx);
                let _ = walker.await;
                return session.queue(&errors::to_msg(&e, &req.path), &[]);
            }
        }
    }
    let _ = walker.await;
    session.queue(&Entries { more: false }, b"[]")
}

/// What `ls` starts from.
enum Listing {
    /// A non-directory: listed as itself.
    Single(Entry),
    /// A directory to read.
    Dir(Dir),
}

fn open_listing(root: &Dir, req: &Ls) -> Result<Listing, ErrorMsg> {
    let comps = confine::components(&req.path)?;
    let io = |e: std::io::Error| errors::to_msg(&e, &req.path);
    if comps.is_empty() {
        return Ok(Listing::Dir(root.try_clone().map_err(io)?));
    }
    let loc = confine::locate(root, &req.path, Ls::OP)?;
    let entry = describe(&loc.parent, &loc.name, loc.name.clone()).map_err(io)?;
    if entry.kind == EntryKind::Dir {
        Ok(Listing::Dir(
            loc.parent.open_dir_nofollow(&loc.name).map_err(io)?,
        ))
    } else if entry.kind == EntryKind::Symlink {
        // `ls link/` style: a link to a directory inside the root is listed.
        match loc.parent.open_dir(&loc.name) {
            Ok(d) => Ok(Listing::Dir(d)),
            Err(e) if errors::code_for(&e) == skiff_wire::ErrorCode::PathEscape => Err(io(e)),
            Err(_) => Ok(Listing::Single(entry)),
        }
    } else {
        Ok(Listing::Single(entry))
    }
}

fn batch_json(entries: &[Entry]) -> Vec<u8> {
    serde_json::to_vec(entries).unwrap_or_else(|_| b"[]".to_vec())
}

/// Reads directories (sorted by name), parents before their contents,
/// sending bounded batches. Subdirectories are opened without following
/// symlinks, so a walk never leaves the tree.
fn walk(top: Dir, recursive: bool, tx: &mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let mut stack = vec![(top, String::new())];
    let mut batch: Vec<Entry> = Vec::new();
    let mut batch_bytes = 0usize;
    while let Some((dir, prefix)) = stack.pop() {
        let mut names = Vec::new();
        let entries = match dir.entries() {
            Ok(e) => e,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        for ent in entries.flatten() {
            match ent.file_name().into_string() {
                Ok(n) => names.push(n),
                Err(n) => tracing::warn!(name = ?n, "skipping a file name that is not UTF-8"),
            }
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let Ok(entry) = describe(&dir, &name, path.clone()) else {
                continue;
            };
            if recursive && entry.kind == EntryKind::Dir {
                if let Ok(d) = dir.open_dir_nofollow(&name) {
                    subdirs.push((d, path));
                }
            }
            batch_bytes += entry.path.len() + 128;
            batch.push(entry);
            if batch_bytes >= BATCH_BYTES {
                if tx.blocking_send(Ok(batch_json(&batch))).is_err() {
                    return;
                }
                batch.clear();
                batch_bytes = 0;
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch_json(&batch)));
    }
}

/// A glob walk: at each depth only the names matching that component of
/// `pattern` are kept, and only matching directories (opened without
/// following links) are entered, so the walk is as deep as the pattern and
/// never leaves the tree. Entries of full depth are sent.
fn walk_matching(top: Dir, pattern: &glob::Pattern, tx: &mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let mut stack = vec![(top, String::new(), 0usize)];
    let mut batch: Vec<Entry> = Vec::new();
    let mut batch_bytes = 0usize;
    while let Some((dir, prefix, depth)) = stack.pop() {
        let Ok(entries) = dir.entries() else { continue };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| pattern.matches_at(depth, n))
            .collect();
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if depth + 1 < pattern.depth() {
                if let Ok(d) = dir.open_dir_nofollow(&name) {
                    subdirs.push((d, path, depth + 1));
                }
                continue;
            }
            let Ok(entry) = describe(&dir, &name, path) else {
                continue;
            };
            batch_bytes += entry.path.len() + 128;
            batch.push(entry);
            if batch_bytes >= BATCH_BYTES {
                if tx.blocking_send(Ok(batch_json(&batch))).is_err() {
                    return;
                }
                batch.clear();
                batch_bytes = 0;
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch_json(&batch)));
    }
}
