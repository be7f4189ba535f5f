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
use crate::transfer::tree_recv::{self, Out, Parent, Parents, Place, Receiver, Slot};
use crate::transfer::unnamed;

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

/// A file of a tree upload until it is committed: unnamed in its
/// destination directory when the destination was absent (the common
/// case: [`crate::transfer::unnamed`]), otherwise staged in the staging
/// area and committed by identity.
pub enum ServerSlot {
    /// Created with `O_TMPFILE` in `parent`; linked as `name`.
    Unnamed {
        /// The unnamed file.
        file: std::fs::File,
        /// Its destination directory (shared by the files in it).
        parent: Parent,
        /// Its final name.
        name: String,
        /// Absent, or absent with `force`.
        observed: Observed,
    },
    /// In the staging area.
    Staged {
        /// The staged file.
        staged: Staged,
        /// Where it goes.
        dest: Destination,
        /// What was there when it started.
        observed: Observed,
    },
}

impl Slot for ServerSlot {
    fn file(&self) -> &std::fs::File {
        match self {
            ServerSlot::Unnamed { file, .. } => file,
            ServerSlot::Staged { staged, .. } => staged.file(),
        }
    }
    fn dir(&self) -> &Dir {
        match self {
            ServerSlot::Unnamed { parent, .. } => &parent.dir,
            ServerSlot::Staged { dest, .. } => &dest.dir,
        }
    }
    fn dev(&self) -> u64 {
        match self {
            ServerSlot::Unnamed { parent, .. } => parent.dev,
            ServerSlot::Staged { staged, .. } => staged.id().dev,
        }
    }
    fn discard(self) {
        // An unnamed file vanishes when it is closed.
        if let ServerSlot::Staged { staged, .. } = self {
            staged.discard();
        }
    }
}

/// The server's side of a tree upload: beneath the root, staged, by
/// identity, audited.
struct ServerPlace {
    ctx: ServiceContext,
    root: Dir,
    force: bool,
    scope: String,
    /// The user's staging directory, opened at the first staged file.
    staging: Option<Dir>,
    parents: Parents,
    /// Whether the root's file system creates unnamed files (cleared at
    /// the first that cannot).
    unnamed: bool,
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
            unnamed: true,
        }
    }

    /// The parent directory of `path` (held open, cached) and its last
    /// component.
    fn parent_of(&mut self, path: &str) -> Result<(&Parent, String), ErrorMsg> {
        let comps = confine::components(path)?;
        let Some((name, dirs)) = comps.split_last() else {
            return Err(ErrorMsg::new(
                ErrorCode::Permission,
                format!("{}: the path names the server root itself", Put::OP),
            ));
        };
        let root = &self.root;
        let parent = self
            .parents
            .get(&dirs.join("/"), || confine::open_dir(root, dirs))
            .map_err(|e| errors::to_msg(&e, path))?;
        Ok((parent, (*name).to_string()))
    }

    fn parent_clone(&mut self, path: &str) -> Option<Dir> {
        self.parent_of(path)
            .ok()
            .and_then(|(p, _)| p.dir.try_clone().ok())
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
    type Slot = ServerSlot;

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

    fn open(&mut self, path: &str) -> Result<ServerSlot, ErrorMsg> {
        let (parent, name) = self.parent_of(path)?;
        let parent = parent.clone();
        let destination = || {
            Ok::<_, ErrorMsg>(Destination {
                dir: parent
                    .dir
                    .try_clone()
                    .map_err(|e| errors::to_msg(&e, path))?,
                name: name.clone(),
            })
        };
        // With `force` what is there is looked at first (a file to
        // replace goes through the staging area); without, nothing is
        // looked at now: the commit's link finds whatever is in the way.
        let mut forced = None;
        let mut observed = Observed::Absent;
        if self.force {
            let dest = destination()?;
            observed = dest.observe(true).map_err(|e| commit_msg(e, path))?;
            forced = Some(dest);
        }
        let absent = matches!(observed, Observed::Absent | Observed::AbsentForced);
        if self.unnamed && absent {
            match unnamed::create(&parent.dir) {
                Ok(Some(file)) => {
                    return Ok(ServerSlot::Unnamed {
                        file,
                        parent,
                        name,
                        observed,
                    })
                }
                Ok(None) => self.unnamed = false,
                Err(e) => return Err(errors::to_msg(&e, path)),
            }
        }
        let dest = match forced {
            Some(dest) => dest,
            None => {
                let dest = destination()?;
                observed = dest.observe(false).map_err(|e| commit_msg(e, path))?;
                dest
            }
        };
        let staged = self.stage(path)?;
        Ok(ServerSlot::Staged {
            staged,
            dest,
            observed,
        })
    }

    fn place(
        &mut self,
        slot: &ServerSlot,
        path: &str,
        mode: u32,
        mtime_ns: Option<i64>,
    ) -> Result<(), ErrorMsg> {
        match slot {
            ServerSlot::Unnamed {
                file,
                parent,
                name,
                observed,
            } => commit::link_into_place(file, &parent.dir, name, *observed),
            ServerSlot::Staged {
                staged,
                dest,
                observed,
            } => match commit::rename_into_place(staged, dest, *observed) {
                // The staging area is on another file system: copy.
                Err(CommitError::Io(e)) if e.raw_os_error() == Some(libc::EXDEV) => {
                    commit::commit(staged, dest, *observed, Some(mode), mtime_ns)
                }
                other => other,
            },
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
