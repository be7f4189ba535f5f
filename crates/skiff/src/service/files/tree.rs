//! `put_tree`: a tree upload as one stream, received by the shared tree
//! receiver (`transfer::tree_recv`: one disk thread, digests checked
//! before anything is visible, durability once per batch). What is
//! particular to the server is the [`ServerPlace`]: files are staged in
//! the staging area as for `put`, committed by identity
//! (`transfer::commit`), and every entry goes to the audit log.

use cap_std::fs::Dir;
use skiff_wire::message::files::{Done, EntryKind, Mkdir, Put};
use skiff_wire::message::tree::{PutTree, TreeDir, TreeInput, TreeLink, TreeReady};
use skiff_wire::{ErrorCode, ErrorMsg, Message};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::put::{commit_msg, make_symlink};
use super::{confine, manage, Change};
use crate::service::ServiceContext;
use crate::session::{Session, SessionError};
use crate::transfer::commit::{self, CommitError, Destination, Observed};
use crate::transfer::errors;
use crate::transfer::staging::{StageKey, Staged};
use crate::transfer::tree_recv::{self, Out, Parents, Place, Receiver, Slot};

/// Bytes (file sizes plus `TreeAck::ENTRY_COST` per entry) a client may
/// have unanswered: far more than a bandwidth-delay product of loopback
/// or a LAN, so the round-trip time does not limit the speed.
pub const WINDOW_BYTES: u64 = 64 * 1024 * 1024;

/// Handles a `put_tree` and everything up to its `tree_done`.
pub async fn receive(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    root: &Dir,
    req: PutTree,
) -> Result<(), SessionError> {
    let root = match root.try_clone() {
        Ok(r) => r,
        Err(e) => return session.queue(&errors::to_msg(&e, "/"), &[]),
    };
    session.queue(
        &TreeReady {
            window: WINDOW_BYTES,
        },
        &[],
    )?;
    session.flush().await?;
    let (job_tx, job_rx) = mpsc::channel::<TreeInput>(tree_recv::JOBS);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(tree_recv::ACKS);
    let place = ServerPlace::new(ctx.clone(), root, req.force);
    let receiver = Receiver::new(place, req.hash);
    let rt = Handle::current();
    let disk = tokio::task::spawn_blocking(move || receiver.run(job_rx, out_tx, rt));
    let (reader, writer) = session.split();
    let result = tree_recv::exchange(
        ctx.idle_timeout,
        reader,
        writer,
        job_tx,
        &mut out_rx,
        |_| {},
        |_, _| {},
    )
    .await;
    // On an error both channels are dropped, so the disk thread removes
    // what it had staged and ends.
    drop(out_rx);
    let _ = disk.await;
    match result {
        Ok(_) => Ok(()),
        Err(e @ (SessionError::Message(_) | SessionError::Frame(_))) => {
            let _ = session.send_error(e.code(), e.to_string()).await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// A file staged for a tree upload, and where it goes.
pub struct StagedSlot {
    staged: Staged,
    dest: Destination,
    observed: Observed,
}

impl Slot for StagedSlot {
    fn file(&self) -> &std::fs::File {
        self.staged.file()
    }
    fn dir(&self) -> &Dir {
        &self.dest.dir
    }
    fn discard(self) {
        self.staged.discard();
    }
}

/// The server's side of a tree upload: beneath the root, staged, by
/// identity, audited.
struct ServerPlace {
    ctx: ServiceContext,
    root: Dir,
    force: bool,
    scope: String,
    /// The user's staging directory, opened at the first file.
    staging: Option<Dir>,
    parents: Parents,
}

impl ServerPlace {
    fn new(ctx: ServiceContext, root: Dir, force: bool) -> ServerPlace {
        let scope = ctx.root.to_string_lossy().into_owned();
        ServerPlace {
            ctx,
            root,
            force,
            scope,
            staging: None,
            parents: Parents::default(),
        }
    }

    /// The parent directory of `path` (held open, cached) and its last
    /// component.
    fn parent_of(&mut self, path: &str) -> Result<(&Dir, String), ErrorMsg> {
        let comps = confine::components(path)?;
        let Some((name, dirs)) = comps.split_last() else {
            return Err(ErrorMsg::new(
                ErrorCode::Permission,
                format!("{}: the path names the server root itself", Put::OP),
            ));
        };
        let root = &self.root;
        let dir = self
            .parents
            .get(&dirs.join("/"), || confine::open_dir(root, dirs))
            .map_err(|e| errors::to_msg(&e, path))?;
        Ok((dir, (*name).to_string()))
    }

    fn parent_clone(&mut self, path: &str) -> Option<Dir> {
        self.parent_of(path)
            .ok()
            .and_then(|(d, _)| d.try_clone().ok())
    }

    /// Where `path` goes and what is there now (refused without `force`).
    fn destination(&mut self, path: &str) -> Result<(Destination, Observed), ErrorMsg> {
        let force = self.force;
        let (parent, name) = self.parent_of(path)?;
        let dest = Destination {
            dir: parent.try_clone().map_err(|e| errors::to_msg(&e, path))?,
            name,
        };
        let observed = dest.observe(force).map_err(|e| commit_msg(e, path))?;
        Ok((dest, observed))
    }

    /// A new staged file for `path`.
    fn stage(&mut self, path: &str) -> Result<Staged, ErrorMsg> {
        let io = |e: std::io::Error| errors::to_msg(&e, path);
        let comps = confine::components(path)?;
        let key = StageKey::new(&self.scope, &self.ctx.user, &comps.join("/"));
        if self.staging.is_none() {
            self.staging = Some(self.ctx.staging.open_user_dir(&key).map_err(io)?);
        }
        match &self.staging {
            Some(dir) => self.ctx.staging.create_in(dir, &key).map_err(io),
            None => Err(ErrorMsg::new(ErrorCode::Internal, "staging directory")),
        }
    }
}

impl Place for ServerPlace {
    type Slot = StagedSlot;

    fn dir(&mut self, d: &TreeDir) -> Result<Option<Dir>, ErrorMsg> {
        let req = Mkdir {
            path: d.path.clone(),
            exist_ok: true,
            mode: d.mode,
            mtime_ns: d.mtime_ns,
            ..Default::default()
        };
        manage::mkdir(&self.root, &req)?;
        Ok(self.parent_clone(&d.path))
    }

    fn link(&mut self, l: &TreeLink) -> Result<Option<Dir>, ErrorMsg> {
        let req = Put {
            path: l.path.clone(),
            kind: EntryKind::Symlink,
            target: Some(l.target.clone()),
            force: self.force,
            ..Default::default()
        };
        make_symlink(&self.root, &req)?;
        Ok(self.parent_clone(&l.path))
    }

    fn open(&mut self, path: &str) -> Result<StagedSlot, ErrorMsg> {
        let (dest, observed) = self.destination(path)?;
        let staged = self.stage(path)?;
        Ok(StagedSlot {
            staged,
            dest,
            observed,
        })
    }

    fn place(
        &mut self,
        slot: &StagedSlot,
        path: &str,
        mode: u32,
        mtime_ns: Option<i64>,
    ) -> Result<(), ErrorMsg> {
        let s = slot;
        match commit::rename_into_place(&s.staged, &s.dest, s.observed) {
            // The staging area is on another file system: copy.
            Err(CommitError::Io(e)) if e.raw_os_error() == Some(libc::EXDEV) => {
                commit::commit(&s.staged, &s.dest, s.observed, Some(mode), mtime_ns)
            }
            other => other,
        }
        .map_err(|e| commit_msg(e, path))
    }

    fn record(
        &mut self,
        op: &'static str,
        path: &str,
        done: Option<&Done>,
        r: Result<(), &ErrorMsg>,
    ) {
        let change = Change {
            op,
            path: path.to_string(),
            to: None,
        };
        change.record(&self.ctx, done, r);
    }
}
