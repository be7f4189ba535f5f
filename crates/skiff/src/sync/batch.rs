//! The receiver's commit batch: verified files and metadata changes that
//! are made durable and put in place together, so a tree of small files
//! costs one `syncfs` per batch instead of an `fsync` per file and per
//! directory (`transfer::durable`, as `put -r`'s tree stream does).
//!
//! Order matters. A directory's final mode and mtime arrive after
//! everything in it, and renaming a file into a directory changes the
//! directory's mtime. So each commit is one durability pass
//! ([`durable::sync_pass`]) that makes durable both the data of this
//! batch's files and the directory entries the previous commit made;
//! then it puts this batch's files in place (an unnamed file by
//! `linkat`, which never replaces a name; a staged one by rename, by
//! identity: `transfer::commit`) and applies its metadata in arrival
//! order. A file therefore counts as committed one pass after it was
//! placed, once its entry is durable too, and [`Batch::flush`] runs the
//! last pass. Only committed files are counted in the summary the
//! receiver sends at the end: a file the summary reports survives a
//! crash (docs/FILES.md, "Durability"). One pass per batch instead of a
//! pass for the data and another for the entries halves the flushes a
//! tree costs on a disk.

use cap_std::fs::Dir;
use skiff_wire::{ErrorCode, ErrorMsg};

use std::sync::Arc;

use super::apply::{self, Verified};
use super::sigcache::{SigCache, Stamp};
use crate::transfer::{durable, errors};

/// Files per batch. Each holds at most three descriptors until its
/// commit (a staged file, its directory, the destination directory; an
/// unnamed file holds one, its directory being shared), and a placed
/// file keeps them until the next pass: this keeps a client under the
/// usual soft limit of 1024.
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
    /// Files the last commit put in place: the next pass makes their
    /// entries durable.
    placed: Vec<Verified>,
    /// Directories whose metadata the last commit set (the next pass
    /// makes that durable).
    touched: Vec<Dir>,
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
            placed: Vec::new(),
            touched: Vec::new(),
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

    /// Whether there is nothing to commit (nor a pass owed to what the
    /// last commit placed).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.metas.is_empty()
            && self.placed.is_empty()
            && self.touched.is_empty()
    }

    /// One durability pass (module docs): the data of the batch's files
    /// and the entries the previous commit made become durable, the
    /// previous commit's files count as committed, and this batch's
    /// files are put in place and its metadata applied. Blocking.
    pub fn commit(&mut self) -> Committed {
        let mut out = Committed::default();
        let files = std::mem::take(&mut self.files);
        let metas = std::mem::take(&mut self.metas);
        let placed = std::mem::take(&mut self.placed);
        let touched = std::mem::take(&mut self.touched);
        self.bytes = 0;
        let handles: Vec<&std::fs::File> = files.iter().map(|v| v.file()).collect();
        let files_dev = files
            .first()
            .map(Verified::dev)
            .filter(|dev| files.iter().all(|v| v.dev() == *dev));
        let entries = placed.iter().map(Verified::dir).chain(touched.iter());
        let (synced, entries_synced) = durable::sync_pass(&handles, files_dev, entries);
        drop(handles);
        for v in placed {
            match &entries_synced {
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
        for (v, synced) in files.into_iter().zip(synced) {
            let r = synced
                .map_err(|e| errors::to_msg(&e, &v.path))
                .and_then(|()| v.place());
            match r {
                Ok(()) => self.placed.push(v),
                Err(e) => out.failed_files.push((v.path.clone(), e)),
            }
        }
        for m in metas {
            match apply::set_meta(&self.root, &m.path, m.mode, m.mtime_ns) {
                Ok((d, changed)) => {
                    out.metas_changed += u64::from(changed);
                    self.touched.extend(d);
                }
                Err(e) => out.failed_metas.push((m.path, e)),
            }
        }
        out
    }

    /// Commits everything the batch holds, including the last pass that
    /// makes the entries of its files durable. Blocking.
    pub fn flush(&mut self) -> Committed {
        let mut out = self.commit();
        while !self.is_empty() {
            out.add(self.commit());
        }
        out
    }
}

impl Committed {
    /// Adds what a later commit did.
    fn add(&mut self, later: Committed) {
        self.files += later.files;
        self.failed_files.extend(later.failed_files);
        self.failed_metas.extend(later.failed_metas);
        self.metas_changed += later.metas_changed;
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
        // The first pass makes the data durable and puts the files in
        // place; they count once the next pass has made their entries
        // durable too.
        let c = b.commit();
        assert_eq!(c.files, 0);
        assert!(c.failed_files.is_empty() && c.failed_metas.is_empty());
        assert!(!b.is_empty());
        assert!(names(&t.path().join("d"))
            .iter()
            .all(|n| n.starts_with('f')));
        let c = b.flush();
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
