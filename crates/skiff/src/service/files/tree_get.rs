//! `get_tree`: a tree download as one stream. The walk of `ls -r` (at
//! most `listing::MAX_OPEN_DIRS` directories open, never following a
//! symlink out of the tree) feeds the shared tree sender
//! (`transfer::tree_send`): files back to back, small ones batched, under
//! the byte window the client granted, answered asynchronously by the
//! client's `tree_ack`s.

use std::collections::HashMap;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt, OpenOptionsSyncExt};
use cap_std::fs::{Dir, OpenOptions};
use skiff_wire::message::files::{Entry, EntryKind, Ls};
use skiff_wire::message::tree::{GetTree, TreeDir, TreeLink, TreeReady};
use skiff_wire::{ErrorCode, ErrorMsg};
use tokio::sync::mpsc;

use super::listing::{self, Listing, Visit};
use crate::service::ServiceContext;
use crate::session::{Session, SessionError};
use crate::transfer::errors;
use crate::transfer::tree_send::{self, Packer, SendFile, Window};

/// Handles a `get_tree` and everything up to the client's `tree_done`.
pub async fn send(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    root: &Dir,
    req: GetTree,
) -> Result<(), SessionError> {
    let ls = Ls {
        path: req.path.clone(),
        recursive: true,
        pattern: None,
    };
    let top = match listing::open_listing(root, &ls) {
        Ok(Listing::Dir(d)) => d,
        Ok(Listing::Single(_)) => {
            let m = errors::msg(ErrorCode::Exists, &req.path, "not a directory");
            return session.queue(&m, &[]);
        }
        Err(m) => return session.queue(&m, &[]),
    };
    let window = Window::new(req.window, ctx.idle_timeout);
    session.queue(
        &TreeReady {
            window: window.bytes(),
        },
        &[],
    )?;
    let (tx, mut rx) = mpsc::channel(tree_send::QUEUE);
    let packer = Packer::new(tx, req.hash, window.head_cost());
    let label = req.path.clone();
    let walker = tokio::task::spawn_blocking(move || {
        let mut w = Walker {
            packer,
            next_id: 0,
            dir_meta: HashMap::new(),
        };
        if let Err(e) = listing::walk(top, true, &mut w) {
            let id = w.id();
            w.packer
                .failure(id, &label, false, errors::to_msg(&e, &label));
            w.packer.finish();
        }
    });
    let (reader, writer) = session.split();
    let result = tree_send::exchange(reader, writer, &mut rx, &window, |_| {}, |_| {}).await;
    // On an error the channel is gone and the walk stops.
    drop(rx);
    let _ = walker.await;
    result.map(|_| ())
}

/// Turns the walk into tree entries.
struct Walker {
    packer: Packer,
    next_id: u64,
    /// Mode and mtime of directories entered and not yet left: sent after
    /// their contents.
    dir_meta: HashMap<String, (u32, i64)>,
}

impl Walker {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn fail(&mut self, path: &str, m: ErrorMsg) -> bool {
        let id = self.id();
        self.packer.failure(id, path, false, m)
    }
}

impl Visit for Walker {
    fn entry(&mut self, dir: &Dir, name: &str, entry: Entry) -> bool {
        let id = self.id();
        match entry.kind {
            EntryKind::Dir => {
                self.dir_meta
                    .insert(entry.path.clone(), (entry.mode, entry.mtime_ns));
                self.packer.dir(TreeDir {
                    id,
                    path: entry.path,
                    mode: None,
                    mtime_ns: None,
                })
            }
            EntryKind::Symlink => self.packer.link(TreeLink {
                id,
                target: entry.target.unwrap_or_default(),
                path: entry.path,
            }),
            EntryKind::File => {
                let mut opts = OpenOptions::new();
                // Non-blocking, so that a FIFO swapped in cannot hang us;
                // never through a link swapped in either.
                opts.read(true).nonblock(true).follow(FollowSymlinks::No);
                match dir.open_with(name, &opts) {
                    Ok(f) => self.packer.file(SendFile {
                        id,
                        label: entry.path.clone(),
                        path: entry.path,
                        file: f.into_std(),
                    }),
                    Err(e) => {
                        let m = errors::to_msg(&e, &entry.path);
                        self.packer.failure(id, &entry.path, true, m)
                    }
                }
            }
            EntryKind::Other => {
                let m = errors::msg(
                    ErrorCode::Unsupported,
                    &entry.path,
                    "not a file, directory or symlink; skipped",
                );
                self.packer.failure(id, &entry.path, false, m)
            }
        }
    }

    fn leave(&mut self, prefix: &str) -> bool {
        let Some((mode, mtime_ns)) = self.dir_meta.remove(prefix) else {
            return true;
        };
        let id = self.id();
        self.packer.dir(TreeDir {
            id,
            path: prefix.to_string(),
            mode: Some(mode),
            mtime_ns: Some(mtime_ns),
        })
    }

    fn skipped(&mut self, path: &str, err: std::io::Error) -> bool {
        self.fail(path, errors::to_msg(&err, path))
    }

    fn error(&mut self, path: &str, err: std::io::Error) -> bool {
        self.fail(path, errors::to_msg(&err, path))
    }

    fn finish(&mut self) -> bool {
        self.packer.finish()
    }
}
