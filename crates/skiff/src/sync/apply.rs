//! The receiver's changes to the destination tree, all made through the
//! destination's directory capability: every component is opened without
//! following symlinks; a new file is assembled in a staged file
//! (`transfer::staging`) and committed by identity (`transfer::commit`),
//! exactly as `put` commits, only after its whole-file BLAKE3 matched; a
//! symlink is only created when `transfer::links` finds, by resolution,
//! that its target stays inside the tree.
//!
//! Every function answers a failure as the [`ErrorMsg`] the peer and the
//! user are told; the sync goes on with the next path.

use std::fs::File;
use std::io;
use std::sync::Arc;

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};
use skiff_sync::{AssembleError, Assembler, ChunkParams, Derive, FileOutput, Hash, Signature};
use skiff_wire::{ErrorCode, ErrorMsg};

use super::sigcache::{SigCache, Stamp, CACHE_MIN};
use super::signer::Signer;
use crate::transfer::commit::{self, CommitError, Destination, Observed};
use crate::transfer::staging::{self, create_unique, StageKey, Staged, StagingArea};
use crate::transfer::tree_recv::Parent;
use crate::transfer::{durable, errors, links, meta, unnamed};

/// Prefix of the files a receiver stages beside their destination (see
/// [`Stager::Beside`]) and of the links it creates before renaming them
/// into place; the receiver's own list never shows such names.
pub const TEMP_PREFIX: &str = ".skiff-sync";

/// Whether `name` is one of the receiver's files in progress (or the
/// commit's cross-device copy): never listed, never synced.
pub fn is_temp_name(name: &str) -> bool {
    (name.starts_with(TEMP_PREFIX) || name.starts_with(".skiff-commit-")) && name.len() > 20
}

/// Removes a file a killed receiver staged beside its destination
/// ([`Stager::Beside`]), unless a live sync still holds it.
pub fn remove_abandoned(root: &Dir, path: &str) {
    if let Ok((dir, name)) = open_parent(root, path) {
        if name.ends_with(".part") {
            let _ = staging::remove_abandoned(&dir, name);
        }
    }
}

/// Where a receiver writes a file until it is verified.
#[derive(Clone)]
pub enum Stager {
    /// The server's staging area, outside the served root: no client path
    /// can name a file in progress.
    Area {
        /// The area.
        area: Arc<StagingArea>,
        /// The served root (scopes the key, as for `put`).
        scope: String,
        /// The authenticated user.
        user: String,
        /// The destination directory, relative to the served root.
        base: String,
    },
    /// A hidden, randomly named file (`O_EXCL`, mode 0600) beside the
    /// destination: the client's own tree, as `get` does.
    Beside,
}

impl Stager {
    /// Stages a new file for `path`. `user_dir` keeps the staging area's
    /// directory of this user open for the files that follow (the same
    /// for every path of one sync).
    fn create(
        &self,
        dest: &Destination,
        path: &str,
        user_dir: &mut Option<Dir>,
    ) -> io::Result<Staged> {
        match self {
            Stager::Area {
                area,
                scope,
                user,
                base,
            } => {
                let full = if base.is_empty() {
                    path.to_string()
                } else {
                    format!("{base}/{path}")
                };
                let key = StageKey::new(scope, user, &full);
                let dir = match user_dir {
                    Some(d) => d,
                    None => user_dir.insert(area.open_user_dir(&key)?),
                };
                area.create_in(dir, &key)
            }
            Stager::Beside => create_unique(dest.dir.try_clone()?, TEMP_PREFIX),
        }
    }
}

fn fail(path: &str, e: &io::Error) -> ErrorMsg {
    errors::to_msg(e, path)
}

fn invalid(path: &str, why: &str) -> ErrorMsg {
    errors::msg(ErrorCode::Invalid, path, why)
}

/// The parent directory of `path` (opened component by component, never
/// through a symlink) and the last component.
pub fn open_parent<'a>(root: &Dir, path: &'a str) -> Result<(Dir, &'a str), ErrorMsg> {
    skiff_sync::entry::check_path(path).map_err(|e| invalid(path, &e.to_string()))?;
    let (parent, name) = match path.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, path),
    };
    let mut dir = root.try_clone().map_err(|e| fail(path, &e))?;
    if let Some(p) = parent {
        for comp in p.split('/') {
            dir = dir.open_dir_nofollow(comp).map_err(|e| fail(path, &e))?;
        }
    }
    Ok((dir, name))
}

/// Removes an empty directory at `name`, if one is there (a directory that
/// a file or link replaces has had its contents deleted first).
fn clear_dir(dir: &Dir, name: &str, path: &str) -> Result<(), ErrorMsg> {
    match dir.symlink_metadata(name) {
        Ok(m) if m.is_dir() => dir.remove_dir(name).map_err(|e| fail(path, &e)),
        _ => Ok(()),
    }
}

/// Creates directory `path` (replacing a file or link there when
/// `replace`). Its final mode comes with its `sync_meta`, after its
/// contents, so a read-only directory can still be filled.
pub fn mkdir(root: &Dir, path: &str, replace: bool) -> Result<(), ErrorMsg> {
    let (dir, name) = open_parent(root, path)?;
    if replace {
        if let Ok(m) = dir.symlink_metadata(name) {
            if !m.is_dir() {
                dir.remove_file(name).map_err(|e| fail(path, &e))?;
            }
        }
    }
    match dir.create_dir(name) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match dir.symlink_metadata(name) {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(errors::msg(
                ErrorCode::Exists,
                path,
                "something that is not a directory is in the way",
            )),
        },
        r => r.map_err(|e| fail(path, &e)),
    }
}

/// Makes `path` a symlink to `target`, replacing what is there in one
/// rename. The target is checked by resolution (`transfer::links`): a
/// link that would lead outside the tree is refused with `path_escape`.
pub fn symlink(root: &Dir, path: &str, target: &str) -> Result<(), ErrorMsg> {
    let (dir, name) = open_parent(root, path)?;
    let parent: Vec<&str> = path.split('/').collect();
    let parent = &parent[..parent.len() - 1];
    let physical = links::physical_path(root, parent).map_err(|e| fail(path, &e))?;
    if let Err(refused) = links::check(root, &physical, target) {
        return Err(errors::msg(
            ErrorCode::PathEscape,
            path,
            &refused.to_string(),
        ));
    }
    let tmp = format!("{TEMP_PREFIX}-{:016x}.link", rand::random::<u64>());
    dir.symlink(target, &tmp).map_err(|e| fail(path, &e))?;
    let placed = clear_dir(&dir, name, path)
        .and_then(|()| dir.rename(&tmp, &dir, name).map_err(|e| fail(path, &e)));
    if placed.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    placed
}

/// Sets mode and mtime of `path` (`""`: the root) without following a
/// final symlink. For a directory its handle is returned: the caller
/// fsyncs it (once per batch, `super::batch`), which makes its metadata
/// and the entries created in it durable. The flag says whether anything
/// differed (`--atomic` exchanges the trees only when something did).
///
/// A file with other hard links is never changed in place: its metadata
/// belongs to every name it has, and under `--atomic` the other name is
/// the old tree a reader may be looking at (`super::atomic`). Such a file
/// is copied, the copy gets the new mode and mtime, and it replaces the
/// name by identity ([`unshare`]); its directory is then returned too, to
/// make the rename durable.
pub fn set_meta(
    root: &Dir,
    path: &str,
    mode: u32,
    mtime_ns: i64,
) -> Result<(Option<Dir>, bool), ErrorMsg> {
    let io = |e: io::Error| fail(path, &e);
    let dir = if path.is_empty() {
        root.try_clone().map_err(io)?
    } else {
        let (parent, name) = open_parent(root, path)?;
        let m = parent.symlink_metadata(name).map_err(io)?;
        if m.is_file() {
            use std::os::unix::fs::MetadataExt as _;
            let mut opts = OpenOptions::new();
            opts.read(true).follow(FollowSymlinks::No);
            let f = parent.open_with(name, &opts).map_err(io)?.into_std();
            let md = f.metadata().map_err(io)?;
            if same_meta(&md, mode, mtime_ns) {
                return Ok((None, false));
            }
            if md.nlink() > 1 {
                return unshare(parent, name, path, f, mode, mtime_ns).map(|d| (Some(d), true));
            }
            meta::apply(&f, Some(mode), Some(mtime_ns)).map_err(io)?;
            return Ok((None, true));
        }
        if !m.is_dir() {
            return Ok((None, false));
        }
        parent.open_dir_nofollow(name).map_err(io)?
    };
    let f = meta::open_self(&dir).map_err(io)?;
    let changed = !same_meta(&f.metadata().map_err(io)?, mode, mtime_ns);
    meta::apply(&f, Some(mode), Some(mtime_ns)).map_err(io)?;
    Ok((Some(dir), changed))
}

/// Whether `md` already has the permission bits and mtime asked for.
fn same_meta(md: &std::fs::Metadata, mode: u32, mtime_ns: i64) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    md.mode() & meta::MODE_MASK == mode & meta::MODE_MASK && meta::mtime_ns(md) == mtime_ns
}

/// Replaces the hard-linked file `name` in `parent` (opened as `old`) by
/// a copy of it carrying `mode` and `mtime_ns`, so that the file's other
/// names keep their metadata. The copy is staged beside it, made durable,
/// and renamed into place only if `name` still is `old` (otherwise
/// `conflict`, and nothing changes). Returns `parent`, which the caller
/// fsyncs.
fn unshare(
    parent: Dir,
    name: &str,
    path: &str,
    mut old: File,
    mode: u32,
    mtime_ns: i64,
) -> Result<Dir, ErrorMsg> {
    let io = |e: io::Error| fail(path, &e);
    let dest = Destination {
        dir: parent,
        name: name.to_string(),
    };
    let observed = dest.observe(true).map_err(|e| commit_msg(e, path))?;
    let opened = staging::FileId::of_file(&old).map_err(io)?;
    if !matches!(observed, Observed::Present { id, .. } if id == opened) {
        return Err(commit_msg(CommitError::Conflict, path));
    }
    let copy = create_unique(dest.dir.try_clone().map_err(io)?, TEMP_PREFIX).map_err(io)?;
    let written = io::copy(&mut old, &mut copy.file())
        .and_then(|_| meta::apply(copy.file(), Some(mode), Some(mtime_ns)))
        .and_then(|()| copy.file().sync_all())
        .map_err(io)
        .and_then(|()| {
            commit::rename_into_place(&copy, &dest, observed).map_err(|e| commit_msg(e, path))
        });
    match written {
        Ok(()) => Ok(dest.dir),
        Err(e) => {
            copy.discard();
            Err(e)
        }
    }
}

/// Removes `path` (a directory only when empty); already gone is fine.
pub fn delete(root: &Dir, path: &str, is_dir: bool) -> Result<(), ErrorMsg> {
    let (dir, name) = open_parent(root, path)?;
    let r = if is_dir {
        dir.remove_dir(name)
    } else {
        dir.remove_file(name)
    };
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| fail(path, &e)),
    }
}

/// The answer for a commit that did not happen (as `put` answers it).
fn commit_msg(e: CommitError, path: &str) -> ErrorMsg {
    match e {
        CommitError::Exists(why) => errors::msg(ErrorCode::Exists, path, why),
        CommitError::Conflict => errors::msg(
            ErrorCode::Conflict,
            path,
            "the destination file changed while the sync ran; it was left as it is, run the sync again",
        ),
        CommitError::Lost => ErrorMsg::new(ErrorCode::Internal, format!("{path}: {e}")),
        CommitError::Io(e) => errors::to_msg(&e, path),
    }
}

fn assemble_msg(e: AssembleError, path: &str) -> ErrorMsg {
    match e {
        AssembleError::Io(io) => errors::to_msg(&io, path),
        AssembleError::HashMismatch { .. } | AssembleError::SizeMismatch { .. } => {
            errors::msg(ErrorCode::ChecksumMismatch, path, &e.to_string())
        }
        AssembleError::CopyOutOfRange { .. } | AssembleError::TooLong(_) => {
            errors::msg(ErrorCode::BadFrame, path, &e.to_string())
        }
    }
}

/// One file being assembled: the old copy (when it is the basis), the
/// staged file the new one is built in, and what was at the destination
/// when it started.
pub struct Incoming {
    path: String,
    dest: Option<Destination>,
    observed: Observed,
    staged: Option<Staged>,
    asm: Option<Assembler<File, FileOutput>>,
    /// The staged file handed to the device as it grows.
    writeback: durable::Writeback,
    /// The old copy's state when it was opened (for the cache).
    old_stamp: Option<Stamp>,
    /// The new file's signature, worked out from the steps.
    derive: Option<Derive>,
    /// Or, for a file with no old copy, cut from its bytes as they come.
    signer: Option<Signer>,
    sigcache: Option<Arc<SigCache>>,
}

impl Incoming {
    /// Prepares `path` (announced as `size` bytes): removes an emptied
    /// directory in its way, records what is at the destination, opens the
    /// old copy when it is the basis (`update`), and stages the new file.
    pub fn start(
        root: &Dir,
        stager: &Stager,
        path: &str,
        update: bool,
        size: u64,
    ) -> Result<Incoming, ErrorMsg> {
        let (dir, name) = open_parent(root, path)?;
        Incoming::start_in(dir, name, stager, &mut None, path, update, size)
    }

    /// [`start`](Self::start) in `dir`, the parent directory of `path`
    /// (opened as [`open_parent`] opens it), as `name`; `user_dir` as for
    /// a stager's files ([`Stager`]).
    #[allow(clippy::too_many_arguments)]
    pub fn start_in(
        dir: Dir,
        name: &str,
        stager: &Stager,
        user_dir: &mut Option<Dir>,
        path: &str,
        update: bool,
        size: u64,
    ) -> Result<Incoming, ErrorMsg> {
        clear_dir(&dir, name, path)?;
        let dest = Destination {
            dir,
            name: name.to_string(),
        };
        let observed = dest.observe(true).map_err(|e| commit_msg(e, path))?;
        let old = if update {
            let mut opts = OpenOptions::new();
            opts.read(true).follow(FollowSymlinks::No);
            dest.dir
                .open_with(name, &opts)
                .ok()
                .map(|f| f.into_std())
                .and_then(|f| {
                    let len = f.metadata().ok().filter(|m| m.is_file())?.len();
                    Some((f, len))
                })
        } else {
            None
        };
        let old_stamp = old
            .as_ref()
            .and_then(|(f, _)| f.metadata().ok())
            .map(|m| Stamp::of(&m));
        let staged = stager
            .create(&dest, path, user_dir)
            .map_err(|e| fail(path, &e))?;
        let out = staged.file().try_clone().map_err(|e| fail(path, &e))?;
        Ok(Incoming {
            path: path.to_string(),
            dest: Some(dest),
            observed,
            staged: Some(staged),
            asm: Some(Assembler::new(old, FileOutput::new(out), size)),
            writeback: durable::Writeback::default(),
            old_stamp,
            derive: None,
            signer: None,
            sigcache: None,
        })
    }

    /// Keeps the signature cache up to date for this file: `basis` is the
    /// signature the sender was given for the old copy, from which the new
    /// file's is derived (`skiff_sync::derive`) for the cache once it is
    /// committed; a failed check drops the old copy's entry. A large file
    /// with no old copy is cut as it arrives ([`Signer`]), so its first
    /// copy leaves an entry too.
    pub fn with_cache(
        mut self,
        basis: Option<Arc<Signature>>,
        cache: Option<Arc<SigCache>>,
    ) -> Incoming {
        if cache.is_some() {
            let size = self.asm.as_ref().map_or(0, |a| a.size());
            self.derive = basis.map(Derive::new);
            if self.derive.is_none() && self.old_stamp.is_none() && size >= CACHE_MIN {
                self.signer = Signer::start(size);
            }
            self.sigcache = cache;
        }
        self
    }

    fn asm(&mut self) -> Result<&mut Assembler<File, FileOutput>, ErrorMsg> {
        let path = self.path.clone();
        self.asm
            .as_mut()
            .ok_or_else(|| ErrorMsg::new(ErrorCode::Internal, format!("{path}: already finished")))
    }

    /// Applies one recipe step.
    pub fn step(&mut self, step: Step) -> Result<(), ErrorMsg> {
        let path = self.path.clone();
        if let Some(d) = &mut self.derive {
            match &step {
                Step::Copy { offset, len } => d.copy(*offset, *len),
                Step::Literal(data) => d.literal(data),
            }
        }
        match (&step, &mut self.signer) {
            (Step::Literal(data), Some(s)) => s.feed(data),
            (Step::Copy { .. }, Some(_)) => self.signer = None,
            _ => {}
        }
        let asm = self.asm()?;
        match step {
            Step::Copy { offset, len } => asm.copy(offset, len),
            Step::Literal(data) => asm.literal(&data),
        }
        .map_err(|e| assemble_msg(e, &path))?;
        let written = asm.written();
        if let Some(staged) = &self.staged {
            self.writeback.wrote(staged.file(), written);
        }
        Ok(())
    }

    /// Checks size and whole-file BLAKE3 against `expected`, applies mode
    /// and mtime to the staged file and starts its writeback: the file is
    /// then ready for its batch's commit (`super::batch`). On any error
    /// the staged file is removed and the destination keeps what it had.
    pub fn verify(
        mut self,
        expected: Hash,
        mode: u32,
        mtime_ns: i64,
    ) -> Result<Verified, ErrorMsg> {
        let path = self.path.clone();
        let asm = self.asm.take().ok_or_else(|| {
            ErrorMsg::new(ErrorCode::Internal, format!("{path}: already finished"))
        })?;
        if let Err(e) = asm.finish(expected) {
            if let (AssembleError::HashMismatch { .. }, Some(c), Some(s)) =
                (&e, &self.sigcache, &self.old_stamp)
            {
                c.forget(s);
            }
            return Err(assemble_msg(e, &path));
        }
        let (Some(staged), Some(dest)) = (self.staged.take(), self.dest.take()) else {
            return Err(ErrorMsg::new(ErrorCode::Internal, "no staged file"));
        };
        let prepared = meta::apply(staged.file(), Some(mode), Some(mtime_ns))
            .and_then(|()| staged.file().metadata());
        let len = match prepared {
            Ok(md) => md.len(),
            Err(e) => {
                staged.discard();
                return Err(fail(&path, &e));
            }
        };
        durable::start_writeback(staged.file(), 0, len);
        let signature = match (self.derive.take(), self.signer.take()) {
            (Some(d), _) => d.finish(len),
            (None, Some(s)) => s.finish().filter(|s| s.size == len),
            (None, None) => None,
        }
        .filter(|s| len >= CACHE_MIN && s.params == ChunkParams::for_size(len));
        Ok(Verified {
            signature,
            path,
            body: Body::Staged { staged, dest },
            observed: self.observed,
            mode,
            mtime_ns,
            size: len,
            placed: std::cell::Cell::new(false),
        })
    }
}

/// A new small file whose destination was absent when the sender listed
/// it (`sync_file` with neither `update` nor `replace`), received whole:
/// its size and BLAKE3 are checked against `expected` before anything is
/// written, then it is written unnamed in `parent` (`transfer::unnamed`),
/// with its mode and mtime, and linked as `name` only at its batch's
/// commit. Nothing is looked at in `parent` now: the link finds whatever
/// took the name meanwhile (reported as a conflict, as by
/// [`Verified::place`] for a staged file), and an unnamed file that is
/// never linked vanishes by itself, even when the receiver is killed.
/// `Ok(None)`: `parent`'s file system cannot create unnamed files (the
/// caller stages the file instead).
#[allow(clippy::too_many_arguments)]
pub fn whole_unnamed(
    parent: &Parent,
    name: &str,
    path: &str,
    data: &[bytes::Bytes],
    size: u64,
    expected: Hash,
    mode: u32,
    mtime_ns: i64,
) -> Result<Option<Verified>, ErrorMsg> {
    let got: u64 = data.iter().map(|d| d.len() as u64).sum();
    if got != size {
        return Err(assemble_msg(
            AssembleError::SizeMismatch { got, want: size },
            path,
        ));
    }
    let mut h = blake3::Hasher::new();
    for d in data {
        h.update(d);
    }
    let computed = Hash::from(h.finalize());
    if computed != expected {
        return Err(assemble_msg(
            AssembleError::HashMismatch {
                expected,
                got: computed,
            },
            path,
        ));
    }
    let Some(mut file) = unnamed::create(&parent.dir).map_err(|e| fail(path, &e))? else {
        return Ok(None);
    };
    let written = data
        .iter()
        .try_for_each(|d| io::Write::write_all(&mut file, d))
        .and_then(|()| meta::apply(&file, Some(mode), Some(mtime_ns)));
    // On failure the file is dropped: being unnamed, it is gone.
    written.map_err(|e| fail(path, &e))?;
    durable::start_writeback(&file, 0, size);
    Ok(Some(Verified {
        signature: None,
        path: path.to_string(),
        body: Body::Unnamed {
            file,
            parent: parent.clone(),
            name: name.to_string(),
        },
        observed: Observed::AbsentForced,
        mode,
        mtime_ns,
        size,
        placed: std::cell::Cell::new(false),
    }))
}

/// Where a verified file waits for its commit.
enum Body {
    /// A named staged file, renamed over its destination.
    Staged {
        /// The staged file.
        staged: Staged,
        /// Where it goes.
        dest: Destination,
    },
    /// An unnamed file in its destination directory, linked there.
    Unnamed {
        /// The file.
        file: File,
        /// Its directory, shared with the other files of the directory.
        parent: Parent,
        /// Its final name.
        name: String,
    },
}

/// A file whose content was verified and whose metadata is set, waiting
/// to be made durable and put in place with its batch: staged (renamed
/// into place by identity) or unnamed (linked into place).
pub struct Verified {
    /// The path in the tree.
    pub path: String,
    body: Body,
    /// What was there when the transfer started.
    pub observed: Observed,
    /// Permission bits (for the cross-device copy).
    pub mode: u32,
    /// Modification time (for the cross-device copy).
    pub mtime_ns: i64,
    /// Its length.
    pub size: u64,
    /// Its signature, when the recipe gave it (for the cache).
    pub signature: Option<Signature>,
    /// Put in place: its staged name is gone, nothing to remove.
    placed: std::cell::Cell<bool>,
}

impl Verified {
    /// The file's content, to be made durable before it is put in place.
    pub fn file(&self) -> &File {
        match &self.body {
            Body::Staged { staged, .. } => staged.file(),
            Body::Unnamed { file, .. } => file,
        }
    }

    /// The device the file is on (known without a system call).
    pub fn dev(&self) -> u64 {
        match &self.body {
            Body::Staged { staged, .. } => staged.id().dev,
            Body::Unnamed { parent, .. } => parent.dev,
        }
    }

    /// The directory it appears in (the caller fsyncs it once placed).
    /// The files of one directory received unnamed share one handle.
    pub fn dir(&self) -> &Dir {
        match &self.body {
            Body::Staged { dest, .. } => &dest.dir,
            Body::Unnamed { parent, .. } => &parent.dir,
        }
    }

    /// Puts the (already durable) file in place: an unnamed file is
    /// linked under its name, which it never replaces
    /// (`commit::link_into_place`); a staged file is renamed into place
    /// by identity, or, when the staging area is on another file system,
    /// a copy beside the destination is committed instead
    /// (`transfer::commit`). The caller fsyncs the destination directory.
    pub fn place(&self) -> Result<(), ErrorMsg> {
        let r = match &self.body {
            Body::Unnamed { file, parent, name } => {
                commit::link_into_place(file, &parent.dir, name, self.observed)
            }
            Body::Staged { staged, dest } => {
                match commit::rename_into_place(staged, dest, self.observed) {
                    Err(CommitError::Io(e)) if e.raw_os_error() == Some(libc::EXDEV) => {
                        commit::commit(
                            staged,
                            dest,
                            self.observed,
                            Some(self.mode),
                            Some(self.mtime_ns),
                        )
                    }
                    other => other,
                }
            }
        };
        if r.is_ok() {
            self.placed.set(true);
        }
        r.map_err(|e| commit_msg(e, &self.path))
    }
}

impl Drop for Verified {
    fn drop(&mut self) {
        // After a rename the staged name is gone and this does nothing;
        // a staged file whose batch never committed is removed (an
        // unnamed one vanishes with its descriptor).
        if let Body::Staged { staged, .. } = &self.body {
            if !self.placed.get() && staged.still_named() {
                let _ = staged.dir().remove_file(staged.name());
            }
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // After a commit the staged name is gone and this does nothing;
        // otherwise the unverified file is removed.
        if let Some(s) = self.staged.take() {
            s.discard();
        }
    }
}

/// One recipe step as the receiver gets it.
pub enum Step {
    /// Copy from the old copy.
    Copy {
        /// Offset in the old copy.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Literal bytes (already decompressed).
    Literal(bytes::Bytes),
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    #[test]
    fn link_targets_are_checked_by_resolution() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("root/sub")).unwrap();
        let root = Dir::open_ambient_dir(t.path().join("root"), ambient_authority()).unwrap();
        symlink(&root, "sub/l", "../x").unwrap();
        symlink(&root, "l", "sub").unwrap();
        for (path, target) in [("l2", "../x"), ("sub/l2", "../../x"), ("l3", "/etc/passwd")] {
            let e = symlink(&root, path, target).unwrap_err();
            assert_eq!(e.code, ErrorCode::PathEscape, "{path} -> {target}");
        }
        // A chain: sub/up -> .. is fine on its own, esc -> sub/up/.. walks out.
        symlink(&root, "sub/up", "..").unwrap();
        assert!(symlink(&root, "esc", "sub/up/..").is_err());
        assert!(root.symlink_metadata("esc").is_err());
        // Replacing a link is one rename; nothing temporary is left.
        symlink(&root, "l", "sub/up").unwrap();
        assert_eq!(
            std::fs::read_link(t.path().join("root/l")).unwrap(),
            std::path::Path::new("sub/up")
        );
        let names: Vec<_> = std::fs::read_dir(t.path().join("root"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| is_temp_name(n)), "{names:?}");
    }

    #[test]
    fn files_are_staged_and_committed_only_after_verification() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        std::fs::write(t.path().join("f"), b"old content").unwrap();
        let start = || {
            let mut inc = Incoming::start(&root, &Stager::Beside, "f", true, 7).unwrap();
            inc.step(Step::Copy { offset: 0, len: 4 }).unwrap();
            inc.step(Step::Literal(bytes::Bytes::from_static(b"new")))
                .unwrap();
            inc
        };
        let e = start().verify(Hash::of(b"nope"), 0o640, 0).err().unwrap();
        assert_eq!(e.code, ErrorCode::ChecksumMismatch);
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"old content");
        let v = start()
            .verify(Hash::of(b"old new"), 0o640, 1_000_000_000)
            .ok()
            .unwrap();
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"old content");
        v.place().unwrap();
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"old new");
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"], "no staged file left");
    }

    #[test]
    fn metadata_of_a_hard_linked_file_is_changed_on_a_copy() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let t = tempfile::tempdir().unwrap();
        let (old, new) = (t.path().join("old"), t.path().join("new"));
        std::fs::create_dir_all(&old).unwrap();
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(old.join("f"), b"shared").unwrap();
        std::fs::set_permissions(old.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::hard_link(old.join("f"), new.join("f")).unwrap();
        std::fs::write(new.join("single"), b"own").unwrap();
        let before = std::fs::metadata(old.join("f")).unwrap();
        let root = Dir::open_ambient_dir(&new, ambient_authority()).unwrap();

        // Mode and mtime of the shared file: set on a copy.
        let (d, changed) = set_meta(&root, "f", 0o600, 1_000_000_007).unwrap();
        assert!(d.is_some(), "the directory is handed back to be fsynced");
        assert!(changed);
        let o = std::fs::metadata(old.join("f")).unwrap();
        let n = std::fs::metadata(new.join("f")).unwrap();
        assert_eq!(
            (o.ino(), o.mode(), o.mtime(), o.mtime_nsec()),
            (
                before.ino(),
                before.mode(),
                before.mtime(),
                before.mtime_nsec()
            ),
            "the other name keeps its inode and metadata"
        );
        assert_eq!(o.nlink(), 1);
        assert_ne!(n.ino(), o.ino());
        assert_eq!((n.mode() & 0o777, n.mtime(), n.mtime_nsec()), (0o600, 1, 7));
        assert_eq!(std::fs::read(new.join("f")).unwrap(), b"shared");
        assert_eq!(std::fs::read(old.join("f")).unwrap(), b"shared");

        // A file with one name is changed in place.
        let ino = std::fs::metadata(new.join("single")).unwrap().ino();
        assert!(set_meta(&root, "single", 0o640, 2_000_000_000).unwrap().1);
        let s = std::fs::metadata(new.join("single")).unwrap();
        assert_eq!((s.ino(), s.mode() & 0o777, s.mtime()), (ino, 0o640, 2));

        // Nothing to change on a shared file: no copy either.
        std::fs::hard_link(new.join("single"), old.join("single")).unwrap();
        assert!(!set_meta(&root, "single", 0o640, 2_000_000_000).unwrap().1);
        assert_eq!(std::fs::metadata(new.join("single")).unwrap().ino(), ino);

        assert_eq!(
            crate::sync::batch::tests::names(&new),
            ["f", "single"],
            "no staged copy left"
        );
    }

    #[test]
    fn a_shared_file_replaced_meanwhile_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"old").unwrap();
        std::fs::hard_link(t.path().join("f"), t.path().join("g")).unwrap();
        let root = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let old = File::open(t.path().join("f")).unwrap();
        // Someone replaces `f` between the open and the copy.
        std::fs::write(t.path().join("other"), b"theirs").unwrap();
        std::fs::rename(t.path().join("other"), t.path().join("f")).unwrap();
        let e = unshare(root.try_clone().unwrap(), "f", "f", old, 0o600, 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"theirs");
        let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "no staged copy left");
    }

    #[test]
    fn a_file_changed_meanwhile_is_not_replaced() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        std::fs::write(t.path().join("f"), b"old").unwrap();
        let mut inc = Incoming::start(&root, &Stager::Beside, "f", false, 3).unwrap();
        inc.step(Step::Literal(bytes::Bytes::from_static(b"new")))
            .unwrap();
        // Someone else replaces the file while the sync assembles it.
        std::fs::write(t.path().join("other"), b"theirs").unwrap();
        std::fs::rename(t.path().join("other"), t.path().join("f")).unwrap();
        let v = inc.verify(Hash::of(b"new"), 0o644, 0).ok().unwrap();
        let e = v.place().unwrap_err();
        drop(v);
        assert_eq!(e.code, ErrorCode::Conflict);
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"theirs");
    }

    #[test]
    fn a_new_whole_file_is_checked_first_and_linked_only_where_nothing_appeared() {
        use cap_std::fs::MetadataExt as _;
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let dev = root.dir_metadata().unwrap().dev();
        let parent = Parent {
            dir: Arc::new(root.try_clone().unwrap()),
            dev,
        };
        let data = [
            bytes::Bytes::from_static(b"he"),
            bytes::Bytes::from_static(b"llo"),
        ];
        let whole = |name: &str, size: u64, hash: Hash| {
            whole_unnamed(&parent, name, name, &data, size, hash, 0o640, 1_000_000_000)
        };
        // Wrong size or digest: refused before anything is written.
        let e = whole("a", 6, Hash::of(b"hello")).err().unwrap();
        assert_eq!(e.code, ErrorCode::ChecksumMismatch);
        let e = whole("a", 5, Hash::of(b"other")).err().unwrap();
        assert_eq!(e.code, ErrorCode::ChecksumMismatch);
        let Some(a) = whole("a", 5, Hash::of(b"hello")).unwrap() else {
            return; // no O_TMPFILE here: the staged path is used instead
        };
        let b = whole("b", 5, Hash::of(b"hello")).unwrap().unwrap();
        assert!(crate::sync::batch::tests::names(t.path()).is_empty());
        // Someone creates `b` meanwhile: it is kept, the sync is told.
        std::fs::write(t.path().join("b"), b"theirs").unwrap();
        a.place().unwrap();
        assert_eq!(b.place().unwrap_err().code, ErrorCode::Conflict);
        drop((a, b));
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"hello");
        assert_eq!(std::fs::read(t.path().join("b")).unwrap(), b"theirs");
        let md = std::fs::metadata(t.path().join("a")).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!((md.mode() & 0o777, md.mtime()), (0o640, 1));
        assert_eq!(crate::sync::batch::tests::names(t.path()), ["a", "b"]);
    }
}
