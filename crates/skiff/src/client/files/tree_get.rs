//! `get -r` as one stream (`get_tree`, PROTOCOL.md section 7): the server
//! walks the tree and sends the files back to back; this side runs the
//! shared tree receiver (`transfer::tree_recv`: one disk thread, every
//! file's digest checked before it is visible, durability once per batch)
//! with a [`LocalPlace`]: everything the server names is untrusted, so
//! each path is checked component by component, directories are entered
//! without following links, links are checked by resolution
//! (`transfer::links`) and files are written to partial files beside
//! their destination, renamed into place once verified and durable.

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
use crate::transfer::names::split_entry;
use crate::transfer::partfile::PartFile;
use crate::transfer::tree_recv::{self, Out, Parents, Place, Receiver, Slot};
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

/// A file being received: its partial file beside the destination.
pub struct LocalSlot {
    part: PartFile,
    file: std::fs::File,
}

impl Slot for LocalSlot {
    fn file(&self) -> &std::fs::File {
        &self.file
    }
    fn dir(&self) -> &Dir {
        &self.part.dir
    }
    fn discard(self) {
        self.part.discard();
    }
}

/// LOCAL, as the tree receiver writes into it.
struct LocalPlace {
    top: Dir,
    force: bool,
    parents: Parents,
}

impl LocalPlace {
    /// The parent of a server-named `path` (checked: plain components
    /// only, entered without following links) and its last component.
    fn parent_of<'p>(&mut self, path: &'p str) -> Result<(Dir, Vec<&'p str>, &'p str), ErrorMsg> {
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
        let dir = self
            .parents
            .get(&parents.join("/"), || open_nofollow(top, parents))
            .and_then(|d| d.try_clone())
            .map_err(|e| errors::to_msg(&e, path))?;
        Ok((dir, parents.to_vec(), name))
    }
}

impl Place for LocalPlace {
    type Slot = LocalSlot;

    fn dir(&mut self, d: &TreeDir) -> Result<Option<Dir>, ErrorMsg> {
        let (parent, _, name) = self.parent_of(&d.path)?;
        make_dir(&parent, name, &d.path)?;
        if d.mode.is_some() || d.mtime_ns.is_some() {
            let io = |e: std::io::Error| errors::to_msg(&e, &d.path);
            let dir = parent.open_dir_nofollow(name).map_err(io)?;
            meta::apply_dir(&dir, d.mode, d.mtime_ns).map_err(io)?;
        }
        Ok(Some(parent))
    }

    fn link(&mut self, l: &TreeLink) -> Result<Option<Dir>, ErrorMsg> {
        let (parent, parents, name) = self.parent_of(&l.path)?;
        make_link(
            &self.top, &parent, &parents, name, &l.target, &l.path, self.force,
        )?;
        Ok(Some(parent))
    }

    fn open(&mut self, path: &str) -> Result<LocalSlot, ErrorMsg> {
        let (parent, _, name) = self.parent_of(path)?;
        let io = |e: std::io::Error| errors::to_msg(&e, path);
        let part = PartFile::new(parent, name);
        part.check_destination(self.force).map_err(io)?;
        let (file, _) = part.open(false, 0).map_err(io)?;
        Ok(LocalSlot { part, file })
    }

    fn place(
        &mut self,
        slot: &LocalSlot,
        path: &str,
        _mode: u32,
        _mtime_ns: Option<i64>,
    ) -> Result<(), ErrorMsg> {
        let p = &slot.part;
        p.check_destination(self.force)
            .and_then(|()| p.dir.rename(&p.part, &p.dir, &p.name))
            .map_err(|e| errors::to_msg(&e, path))
    }

    fn record(&mut self, _: &'static str, _: &str, _: Option<&Done>, _: Result<(), &ErrorMsg>) {}
}
