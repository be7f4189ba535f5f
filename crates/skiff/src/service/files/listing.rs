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
        (Listing::Dir(d), None) => {
            let mut out = Batcher {
                tx: &tx,
                batch: Vec::new(),
                bytes: 0,
            };
            if let Err(e) = walk(d, recursive, &mut out) {
                let _ = tx.blocking_send(Err(e));
            }
        }
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
pub(super) enum Listing {
    /// A non-directory: listed as itself.
    Single(Entry),
    /// A directory to read.
    Dir(Dir),
}

/// Opens what `req` names: a directory (a final link to one inside the
/// root is followed) or a single entry.
pub(super) fn open_listing(root: &Dir, req: &Ls) -> Result<Listing, ErrorMsg> {
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

/// Most directories a recursive listing holds open at once. The first
/// levels of the current path keep their handle; a directory deeper than
/// that is reopened, one component at a time from the deepest open
/// ancestor (never following a symlink), when its next subdirectory is
/// entered. So a walk holds at most this many directory descriptors, plus
/// two while it reopens and one while it reads a directory, whatever the
/// width or depth of the tree.
pub const MAX_OPEN_DIRS: usize = 16;

/// One directory of the current path of a walk.
struct Level {
    /// Its handle, for the first [`MAX_OPEN_DIRS`] levels.
    dir: Option<Dir>,
    /// Its path relative to the top of the listing (`""` for the top).
    prefix: String,
    /// Subdirectories still to enter, last first.
    pending: Vec<String>,
}

/// Collects entries into bounded `entries` bodies and sends them.
struct Batcher<'t> {
    tx: &'t mpsc::Sender<std::io::Result<Vec<u8>>>,
    batch: Vec<Entry>,
    bytes: usize,
}

/// What a [`walk`] tells its visitor. Each method returns `false` to stop
/// the walk (the receiver is gone).
pub(super) trait Visit {
    /// An entry of `dir` (named `name` there).
    fn entry(&mut self, dir: &Dir, name: &str, entry: Entry) -> bool;
    /// Every entry beneath the directory `prefix` (relative to the top;
    /// never the top itself) was visited.
    fn leave(&mut self, _prefix: &str) -> bool {
        true
    }
    /// The directory `path` could not be opened (it was removed or
    /// replaced since it was listed, or is not readable): its entry
    /// stands, its contents are skipped.
    fn skipped(&mut self, _path: &str, _err: std::io::Error) -> bool {
        true
    }
    /// The directory `path` could not be read.
    fn error(&mut self, path: &str, err: std::io::Error) -> bool;
    /// The walk is over.
    fn finish(&mut self) -> bool {
        true
    }
}

impl Visit for Batcher<'_> {
    fn entry(&mut self, _dir: &Dir, _name: &str, entry: Entry) -> bool {
        self.push(entry)
    }
    fn error(&mut self, _path: &str, err: std::io::Error) -> bool {
        // As for the top: the listing ends with the error.
        let _ = self.tx.blocking_send(Err(err));
        false
    }
    fn finish(&mut self) -> bool {
        self.flush()
    }
}

impl Batcher<'_> {
    /// Adds one entry; `false` once the receiver is gone (stop walking).
    fn push(&mut self, entry: Entry) -> bool {
        self.bytes += entry.path.len() + 128;
        self.batch.push(entry);
        if self.bytes < BATCH_BYTES {
            return true;
        }
        self.flush()
    }

    fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let body = batch_json(&self.batch);
        self.batch.clear();
        self.bytes = 0;
        self.tx.blocking_send(Ok(body)).is_ok()
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Lists one directory (sorted by name) into `out`; returns its
/// subdirectories (by lstat, so never a symlink), or `None` when the
/// receiver is gone.
fn list_one(
    dir: &Dir,
    prefix: &str,
    recursive: bool,
    out: &mut impl Visit,
) -> std::io::Result<Option<Vec<String>>> {
    let mut names = Vec::new();
    for ent in dir.entries()?.flatten() {
        match ent.file_name().into_string() {
            Ok(n) => names.push(n),
            Err(n) => tracing::warn!(name = ?n, "skipping a file name that is not UTF-8"),
        }
    }
    names.sort();
    let mut subdirs = Vec::new();
    for name in names {
        let Ok(entry) = describe(dir, &name, join(prefix, &name)) else {
            continue;
        };
        let is_dir = entry.kind == EntryKind::Dir;
        if !out.entry(dir, &name, entry) {
            return Ok(None);
        }
        if recursive && is_dir {
            subdirs.push(name);
        }
    }
    subdirs.reverse();
    Ok(Some(subdirs))
}

/// Opens subdirectory `name` of the last level of `stack`: through its
/// handle, or, when it has none, component by component from the deepest
/// level that has one (each step refusing symlinks).
fn open_child(stack: &[Level], name: &str) -> std::io::Result<Dir> {
    let Some(anchor) = stack.iter().rposition(|l| l.dir.is_some()) else {
        return Err(std::io::Error::other("no open directory in the walk"));
    };
    let first = stack[anchor]
        .dir
        .as_ref()
        .ok_or_else(|| std::io::Error::other("walk"))?;
    let base = &stack[anchor].prefix;
    let parent = &stack[stack.len() - 1].prefix;
    let rest = parent
        .strip_prefix(base.as_str())
        .unwrap_or(parent)
        .trim_start_matches('/');
    let mut comps: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();
    comps.push(name);
    let mut cur = first.open_dir_nofollow(comps[0])?;
    for c in &comps[1..] {
        cur = cur.open_dir_nofollow(c)?;
    }
    Ok(cur)
}

/// Reads directories (sorted by name), parents before their contents,
/// telling `out` about each entry, depth first with a bounded number of
/// open directories ([`MAX_OPEN_DIRS`]). Subdirectories are opened without
/// following symlinks, so a walk never leaves the tree. An error reading
/// the top is returned; a subdirectory that cannot be read is skipped.
pub(super) fn walk(top: Dir, recursive: bool, out: &mut impl Visit) -> std::io::Result<()> {
    descend(top, out, |dir, prefix, _depth, out| {
        list_one(dir, prefix, recursive, out)
    })
}

/// A glob walk: at each depth only the names matching that component of
/// `pattern` are kept, and only matching directories (opened without
/// following links) are entered, so the walk is as deep as the pattern and
/// never leaves the tree. Entries of full depth are sent. It holds as few
/// directories open as [`walk`] does; one that cannot be read matches
/// nothing.
fn walk_matching(top: Dir, pattern: &glob::Pattern, tx: &mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let mut out = Batcher {
        tx,
        batch: Vec::new(),
        bytes: 0,
    };
    let _ = descend(top, &mut out, |dir, prefix, depth, out| {
        Ok(list_matching(dir, prefix, depth, pattern, out).unwrap_or(Some(Vec::new())))
    });
}

/// The names in `dir` matching component `depth` of `pattern` (sorted):
/// at full depth their entries go to `out`, above it they are returned as
/// the subdirectories to enter, last first (a name that is not a directory
/// fails to open as one and is skipped). `None` when the receiver is gone.
fn list_matching(
    dir: &Dir,
    prefix: &str,
    depth: usize,
    pattern: &glob::Pattern,
    out: &mut impl Visit,
) -> std::io::Result<Option<Vec<String>>> {
    let mut names: Vec<String> = dir
        .entries()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| pattern.matches_at(depth, n))
        .collect();
    names.sort();
    if depth + 1 < pattern.depth() {
        names.reverse();
        return Ok(Some(names));
    }
    for name in names {
        let Ok(entry) = describe(dir, &name, join(prefix, &name)) else {
            continue;
        };
        if !out.entry(dir, &name, entry) {
            return Ok(None);
        }
    }
    Ok(Some(Vec::new()))
}

/// The depth-first walk under [`walk`] and [`walk_matching`]: `list`
/// reads one directory (given its path below the top and its depth,
/// telling `out` about its entries) and returns the subdirectories to
/// enter, last first, or `None` to stop. The first [`MAX_OPEN_DIRS`]
/// levels of the current path keep their handle; deeper ones are reopened
/// from the deepest open one.
fn descend<V: Visit>(
    top: Dir,
    out: &mut V,
    mut list: impl FnMut(&Dir, &str, usize, &mut V) -> std::io::Result<Option<Vec<String>>>,
) -> std::io::Result<()> {
    let pending = match list(&top, "", 0, out)? {
        Some(p) => p,
        None => return Ok(()),
    };
    let mut stack = vec![Level {
        dir: Some(top),
        prefix: String::new(),
        pending,
    }];
    while let Some(level) = stack.last_mut() {
        let Some(name) = level.pending.pop() else {
            if let Some(done) = stack.pop() {
                if !done.prefix.is_empty() && !out.leave(&done.prefix) {
                    return Ok(());
                }
            }
            continue;
        };
        let path = join(&level.prefix, &name);
        let child = match open_child(&stack, &name) {
            Ok(c) => c,
            Err(e) => {
                if !out.skipped(&path, e) || !out.leave(&path) {
                    return Ok(());
                }
                continue;
            }
        };
        let pending = match list(&child, &path, stack.len(), out) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            Err(e) => {
                if !out.error(&path, e) || !out.leave(&path) {
                    return Ok(());
                }
                continue;
            }
        };
        let keep = stack.len() < MAX_OPEN_DIRS;
        stack.push(Level {
            dir: keep.then_some(child),
            prefix: path,
            pending,
        });
    }
    out.finish();
    Ok(())
}
