//! `get -r` as one stream (`get_tree`, PROTOCOL.md section 7): the server
//! walks the tree and sends the files back to back; this side runs the
//! shared tree receiver (`transfer::tree_recv`: one disk thread, every
//! file's digest checked before it is visible, durability once per batch)
//! with a [`LocalPlace`]: everything the server names is untrusted, so
//! each path is checked component by component, directories are entered
//! without following links, links are checked by resolution
//! (`transfer::links`). Files are received unnamed in their destination directory and linked
//! there once verified and durable; with `--force` (or where the file
//! system cannot create unnamed files) they are written to partial files
//! beside their destination and renamed into place.

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;
use skiff_wire::message::files::Done;
use skiff_wire::message::tree::{GetTree, TreeDir, TreeInput, TreeLink};
use skiff_wire::{ErrorCode, ErrorMsg};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::download::{make_dir, make_link, open_nofollow};
use super::progress::Progress;
use super::tree_put::{self, Start};
use super::{Failure, Options, Summary};
use crate::client::ClientError;
use crate::session::Session;
use crate::transfer::commit::{self, CommitError, Observed};
use crate::transfer::names::split_entry;
use crate::transfer::partfile::PartFile;
use crate::transfer::tree_recv::{self, Out, Parent, Parents, Place, Receiver, Slot};
use crate::transfer::unnamed;
use crate::transfer::{errors, idle_timeout, meta};

/// The window this client grants: far more than a bandwidth-delay
/// product of loopback or a LAN, so the round trip does not limit the
/// speed, and at most this much data is in flight towards it.
pub const WINDOW_BYTES: u64 = 64 * 1024 * 1024;

/// Asks the server to send the tree beneath `remote`.
pub(super) async fn start(
    session: &mut Session<'_>,
    remote: &str,
    opts: &Options,
) -> Result<Start, ClientError> {
    let req = GetTree {
        path: remote.to_string(),
        hash: opts.hash,
        window: WINDOW_BYTES,
    };
    session.send(&req, &[]).await?;
    tree_put::answer(session).await
}

/// Receives the tree into `top` (LOCAL); returns once every entry the
/// server sent was answered.
pub(super) async fn receive(
    session: &mut Session<'_>,
    top: &Dir,
    opts: &Options,
    progress: &Progress,
    summary: &mut Summary,
) -> Result<(), ClientError> {
    let local_err = |e: std::io::Error| ClientError::Local(format!("LOCAL: {e}"));
    let place = LocalPlace {
        top: top.try_clone().map_err(local_err)?,
        force: opts.force,
        parents: Parents::default(),
        unnamed: true,
    };
    let (job_tx, job_rx) = mpsc::channel::<TreeInput>(tree_recv::JOBS);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(tree_recv::ACKS);
    let receiver = Receiver::new(place, opts.hash);
    let rt = Handle::current();
    let disk = tokio::task::spawn_blocking(move || receiver.run(job_rx, out_tx, rt));
    let mut failures = Vec::new();
    let (reader, writer) = session.split();
    let on_input = |input: &TreeInput| match input {
        TreeInput::Files((_, body)) | TreeInput::Data(body) => progress.add(body.len() as u64),
        _ => {}
    };
    let on_ack = |ack: &skiff_wire::message::tree::TreeAck, files: Vec<String>| {
        for f in &files {
            progress.file_done(f);
        }
        failures.extend(ack.failed.iter().map(|f| Failure {
            code: f.code,
            message: f.message.clone(),
        }));
    };
    let result = tree_recv::exchange(
        Some(idle_timeout()),
        reader,
        writer,
        job_tx,
        &mut out_rx,
        on_input,
        on_ack,
    )
    .await;
    // On an error both channels are dropped, so the disk thread removes
    // the partial files of the unfinished batch and ends.
    drop(out_rx);
    let _ = disk.await;
    let done = result?;
    summary.files += done.files;
    summary.bytes += done.bytes;
    summary.failures.extend(failures);
    Ok(())
}

/// A file being received: unnamed in its destination directory
/// (`transfer::unnamed`), or, with `--force` or where the file system
/// has no unnamed files, a partial file beside its destination.
pub enum LocalSlot {
    /// Created with `O_TMPFILE` in `parent`; linked as `name`.
    Unnamed {
        /// The unnamed file.
        file: std::fs::File,
        /// Its destination directory (shared by the files in it).
        parent: Parent,
        /// Its final name.
        name: String,
    },
    /// A partial file renamed over the destination.
    Part {
        /// The partial file and its destination.
        part: PartFile,
        /// It, open.
        file: std::fs::File,
        /// The device of its directory.
        dev: u64,
    },
}

impl Slot for LocalSlot {
    fn file(&self) -> &std::fs::File {
        match self {
            LocalSlot::Unnamed { file, .. } | LocalSlot::Part { file, .. } => file,
        }
    }
    fn dir(&self) -> &Dir {
        match self {
            LocalSlot::Unnamed { parent, .. } => &parent.dir,
            LocalSlot::Part { part, .. } => &part.dir,
        }
    }
    fn dev(&self) -> u64 {
        match self {
            LocalSlot::Unnamed { parent, .. } => parent.dev,
            LocalSlot::Part { dev, .. } => *dev,
        }
    }
    fn discard(self) {
        // An unnamed file vanishes when it is closed.
        if let LocalSlot::Part { part, .. } = self {
            part.discard();
        }
    }
}

/// LOCAL, as the tree receiver writes into it.
struct LocalPlace {
    top: Dir,
    force: bool,
    parents: Parents,
    /// Whether LOCAL's file system creates unnamed files (cleared at the
    /// first that cannot).
    unnamed: bool,
}

impl LocalPlace {
    /// The parent of a server-named `path` (checked: plain components
    /// only, entered without following links) and its last component.
    fn parent_of<'p>(
        &mut self,
        path: &'p str,
    ) -> Result<(Parent, Vec<&'p str>, &'p str), ErrorMsg> {
        let comps = split_entry(path).map_err(|_| {
            errors::msg(
                ErrorCode::PathEscape,
                path,
                "unsafe name sent by the server",
            )
        })?;
        let Some((name, parents)) = comps.split_last() else {
            return Err(errors::msg(ErrorCode::PathEscape, path, "empty name"));
        };
        let top = &self.top;
        let parent = self
            .parents
            .get(&parents.join("/"), || open_nofollow(top, parents))
            .map_err(|e| errors::to_msg(&e, path))?
            .clone();
        Ok((parent, parents.to_vec(), name))
    }
}

impl Place for LocalPlace {
    type Slot = LocalSlot;

    fn dir(&mut self, d: &TreeDir) -> Result<Option<Dir>, ErrorMsg> {
        let (parent, _, name) = self.parent_of(&d.path)?;
        make_dir(&parent.dir, name, &d.path)?;
        let io = |e: std::io::Error| errors::to_msg(&e, &d.path);
        if d.mode.is_some() || d.mtime_ns.is_some() {
            let dir = parent.dir.open_dir_nofollow(name).map_err(io)?;
            meta::apply_dir(&dir, d.mode, d.mtime_ns).map_err(io)?;
        }
        Ok(Some(parent.dir.try_clone().map_err(io)?))
    }

    fn link(&mut self, l: &TreeLink) -> Result<Option<Dir>, ErrorMsg> {
        let (parent, parents, name) = self.parent_of(&l.path)?;
        make_link(
            &self.top,
            &parent.dir,
            &parents,
            name,
            &l.target,
            &l.path,
            self.force,
        )?;
        let io = |e: std::io::Error| errors::to_msg(&e, &l.path);
        Ok(Some(parent.dir.try_clone().map_err(io)?))
    }

    fn open(&mut self, path: &str) -> Result<LocalSlot, ErrorMsg> {
        let (parent, _, name) = self.parent_of(path)?;
        let io = |e: std::io::Error| errors::to_msg(&e, path);
        // Without `--force` nothing is looked at now: the link at the
        // commit finds whatever is in the way.
        if self.unnamed && !self.force {
            match unnamed::create(&parent.dir).map_err(io)? {
                Some(file) => {
                    return Ok(LocalSlot::Unnamed {
                        file,
                        parent,
                        name: name.to_string(),
                    })
                }
                None => self.unnamed = false,
            }
        }
        let part = PartFile::new(parent.dir.try_clone().map_err(io)?, name);
        part.check_destination(self.force).map_err(io)?;
        let (file, _) = part.open(false, 0).map_err(io)?;
        Ok(LocalSlot::Part {
            part,
            file,
            dev: parent.dev,
        })
    }

    fn place(
        &mut self,
        slot: &LocalSlot,
        path: &str,
        _mode: u32,
        _mtime_ns: Option<i64>,
    ) -> Result<(), ErrorMsg> {
        match slot {
            LocalSlot::Unnamed { file, parent, name } => {
                commit::link_into_place(file, &parent.dir, name, Observed::Absent).map_err(|e| {
                    let e = match e {
                        CommitError::Io(e) => e,
                        other => std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            other.to_string(),
                        ),
                    };
                    errors::to_msg(&e, path)
                })
            }
            LocalSlot::Part { part: p, .. } => p
                .check_destination(self.force)
                .and_then(|()| p.dir.rename(&p.part, &p.dir, &p.name))
                .map_err(|e| errors::to_msg(&e, path)),
        }
    }

    fn record(&mut self, _: &'static str, _: &str, _: Option<&Done>, _: Result<(), &ErrorMsg>) {}
}
