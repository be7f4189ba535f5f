//! The receiver's commit batch: verified files and metadata changes that
//! are made durable and put in place together, so a tree of small files
//! costs one `syncfs` per batch instead of an `fsync` per file and per
//! directory (`transfer::durable`, as `put -r`'s tree stream does).
//!
//! Order matters. A directory's final mode and mtime arrive after
//! everything in it, and renaming a file into a directory changes the
//! directory's mtime; so a commit first makes the files durable, then
//! puts them in place (an unnamed file by `linkat`, which never replaces
//! a name; a staged one by rename, by identity: `transfer::commit`), then
//! applies the
//! metadata in arrival order, then fsyncs each directory that gained
//! entries or got new metadata once. Only after that does the batch count
//! as committed, and only committed files are counted in the summary the
//! receiver sends at the end: a file the summary reports survives a crash
//! (docs/FILES.md, "Durability").

use cap_std::fs::Dir;
use skiff_wire::{ErrorCode, ErrorMsg};

use std::sync::Arc;

use super::apply::{self, Verified};
use super::sigcache::{SigCache, Stamp};
use crate::transfer::{durable, errors};

/// Files per batch. Each holds at most three descriptors until its
/// commit (a staged file, its directory, the destination directory; an
/// unnamed file holds one, its directory being shared), so this keeps a
/// client under the usual soft limit of 1024.
pub const BATCH_FILES: usize = 128;

/// Bytes per batch: a large file is committed on its own.
pub const BATCH_BYTES: u64 = 64 * 1024 * 1024;

/// Metadata changes per batch (only paths are held until the commit).
pub const BATCH_METAS: usize = 1024;

/// A metadata change waiting for its batch.
struct Meta {
    path: String,
    mode: u32,
    mtime_ns: i64,
}

/// Verified files and metadata changes not yet committed. Dropping a
/// batch without committing it removes its staged files: their
/// destinations keep what they had.
pub struct Batch {
    root: Dir,
    files: Vec<Verified>,
    metas: Vec<Meta>,
    bytes: u64,
    sigcache: Option<Arc<SigCache>>,
}

/// What a commit did.
#[derive(Default)]
pub struct Committed {
    /// Files now in place and durable.
    pub files: u64,
    /// Files that are not (their destinations keep what they had, except
    /// after a failed directory sync, which the message says).
    pub failed_files: Vec<(String, ErrorMsg)>,
    /// Metadata changes that failed.
    pub failed_metas: Vec<(String, ErrorMsg)>,
    /// Metadata changes that changed something.
    pub metas_changed: u64,
}

impl Batch {
    /// An empty batch for the tree at `root`.
    pub fn new(root: Dir) -> Batch {
        Batch {
            root,
            files: Vec::new(),
            metas: Vec::new(),
            bytes: 0,
            sigcache: None,
        }
    }

    /// Records the signatures of committed files that carry one in
    /// `cache`, stamped as they are once in place.
    pub fn with_cache(mut self, cache: Option<Arc<SigCache>>) -> Batch {
        self.sigcache = cache;
        self
    }

    /// Adds a verified file.
    pub fn add_file(&mut self, v: Verified) {
        self.bytes += v.size;
        self.files.push(v);
    }

    /// Adds a mode and mtime change of `path` (`""`: the root).
    pub fn add_meta(&mut self, path: String, mode: u32, mtime_ns: i64) {
        self.metas.push(Meta {
            path,
            mode,
            mtime_ns,
        });
    }

    /// Whether the batch should be committed now.
    pub fn is_full(&self) -> bool {
        self.files.len() >= BATCH_FILES
            || self.bytes >= BATCH_BYTES
            || self.metas.len() >= BATCH_METAS
    }

    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.metas.is_empty()
    }

    /// Makes everything in the batch durable and in place (module docs)
    /// and empties it. Blocking.
    pub fn commit(&mut self) -> Committed {
        let mut out = Committed::default();
        let files = std::mem::take(&mut self.files);
        let metas = std::mem::take(&mut self.metas);
        self.bytes = 0;
        let handles: Vec<&std::fs::File> = files.iter().map(|v| v.file()).collect();
        let one_fs = files.windows(2).all(|w| w[0].dev() == w[1].dev());
        let synced = durable::sync_files_known(&handles, one_fs);
        drop(handles);
        let mut renamed = Vec::with_capacity(files.len());
        for (v, synced) in files.into_iter().zip(synced) {
            let r = synced
                .map_err(|e| errors::to_msg(&e, &v.path))
                .and_then(|()| v.place());
            match r {
                Ok(()) => renamed.push(v),
                Err(e) => out.failed_files.push((v.path.clone(), e)),
            }
        }
        let mut dirs = Vec::new();
        for m in metas {
            match apply::set_meta(&self.root, &m.path, m.mode, m.mtime_ns) {
                Ok((d, changed)) => {
                    out.metas_changed += u64::from(changed);
                    dirs.extend(d);
                }
                Err(e) => out.failed_metas.push((m.path, e)),
            }
        }
        let synced = durable::sync_dirs(renamed.iter().map(|v| v.dir()).chain(dirs.iter()));
        for v in renamed {
            match &synced {
                Ok(()) => {
                    out.files += 1;
                    if let (Some(c), Some(sig)) = (&self.sigcache, &v.signature) {
                        if let Ok(md) = v.file().metadata() {
                            c.put(&Stamp::of(&md), sig);
                        }
                    }
                }
                Err(e) => out.failed_files.push((
                    v.path.clone(),
                    errors::msg(
                        ErrorCode::Internal,
                        &v.path,
                        &format!("stored, but its directory could not be synced: {e}"),
                    ),
                )),
            }
        }
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::sync::apply::{Incoming, Stager, Step};
    use cap_std::ambient_authority;
    use skiff_sync::Hash;

    fn verified(root: &Dir, path: &str, bytes: &'static [u8]) -> Verified {
        let mut inc = Incoming::start(root, &Stager::Beside, path, false, bytes.len() as u64)
            .ok()
            .unwrap();
        inc.step(Step::Literal(bytes::Bytes::from_static(bytes)))
            .ok()
            .unwrap();
        inc.verify(Hash::of(bytes), 0o640, 1_500_000_000_000_000_000)
            .ok()
            .unwrap()
    }

    /// Names in `p`, sorted (also used by the other sync unit tests).
    pub(in crate::sync) fn names(p: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_batch_puts_files_in_place_then_sets_directory_times() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let root = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let mut b = Batch::new(root.try_clone().unwrap());
        for i in 0..(durable::SYNCFS_MIN + 2) {
            let name: &'static str = Box::leak(format!("d/f{i}").into_boxed_str());
            b.add_file(verified(&root, name, b"data"));
        }
        b.add_meta("d".into(), 0o750, 1_000_000_000);
        // Nothing is visible before the commit.
        assert!(names(&t.path().join("d"))
            .iter()
            .all(|n| apply::is_temp_name(n)));
        let c = b.commit();
        assert_eq!(c.files, durable::SYNCFS_MIN as u64 + 2);
        assert!(c.failed_files.is_empty() && c.failed_metas.is_empty());
        assert!(b.is_empty());
        let d = std::fs::metadata(t.path().join("d")).unwrap();
        use std::os::unix::fs::MetadataExt;
        // The directory's mtime was set after the renames into it.
        assert_eq!(d.mtime(), 1);
        assert_eq!(d.mode() & 0o777, 0o750);
        assert!(names(&t.path().join("d"))
            .iter()
            .all(|n| n.starts_with('f')));
        assert_eq!(std::fs::read(t.path().join("d/f0")).unwrap(), b"data");
    }

    #[test]
    fn a_dropped_batch_leaves_nothing_behind() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("old"), b"old").unwrap();
        let root = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let mut b = Batch::new(root.try_clone().unwrap());
        b.add_file(verified(&root, "new", b"new"));
        drop(b);
        assert_eq!(names(t.path()), ["old"]);
    }
}
