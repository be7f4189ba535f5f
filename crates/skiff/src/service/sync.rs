//! The `sync` service: the server's end of `skiff sync`. It takes the
//! receiving role when the client pushes (the server path is the
//! destination, created if missing, and files are staged in the server's
//! staging area and committed as `put` commits them) and the sending role
//! when the client pulls (the server path is the source). A push is a
//! change: the user's policy must allow it (`read-only` refuses it), and
//! it is written to the audit log. The roles themselves are in
//! `crate::sync`.

use std::sync::Arc;

use cap_std::fs::Dir;
use skiff_wire::message::sync::{SyncReady, SyncRequest};
use skiff_wire::{ErrorCode, ErrorMsg, Message};

use super::files::confine;
use super::ServiceContext;
use crate::audit::Event;
use crate::session::{Session, SessionError};
use crate::sync::apply::Stager;
use crate::sync::atomic::Shadow;
use crate::sync::link::Counters;
use crate::sync::sigcache::SigCache;
use crate::sync::{no_events, receiver, sender, Options};
use crate::transfer::errors;

/// The server's signature cache, `STATE_DIR/sigcache` (beside the
/// staging area, `STATE_DIR/partial`); `None` when it cannot be opened
/// (signatures are then cut afresh).
fn sigcache(ctx: &ServiceContext) -> Option<Arc<SigCache>> {
    let dir = ctx.staging.path().parent()?.join("sigcache");
    match SigCache::open(&dir) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::warn!("signature cache {}: {e}", dir.display());
            None
        }
    }
}

/// Handles one `sync` request and the whole sync that follows. A sync
/// that fails as a whole (protocol error, lost peer) ends the session: the
/// stream is no longer in step. Failures of single paths do not.
pub async fn handle(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    req: SyncRequest,
) -> Result<(), SessionError> {
    let writes = req.push && !req.dry_run;
    if writes {
        if let Err(refusal) = ctx.policy.check_change(SyncRequest::OP) {
            let m = ErrorMsg::from(refusal);
            audit(ctx, &req, None, m.code.as_str().to_string());
            return session.queue(&m, &[]);
        }
    }
    let atomic = writes && req.atomic;
    let opened = match open_tree(ctx, &req) {
        Ok(_) if atomic => {
            let (root, path) = (ctx.root.to_path_buf(), req.path.clone());
            tokio::task::spawn_blocking(move || prepare_atomic(&root, &path))
                .await
                .unwrap_or_else(|e| Err(ErrorMsg::new(ErrorCode::Internal, e.to_string())))
        }
        Ok(d) => Ok((d, None)),
        Err(m) => Err(m),
    };
    let (dir, shadow) = match opened {
        Ok(d) => d,
        Err(m) => {
            if writes {
                audit(ctx, &req, None, m.code.as_str().to_string());
            }
            return session.queue(&m, &[]);
        }
    };
    session.queue(&SyncReady { atomic }, &[])?;
    session.flush().await?;
    let opts = Options {
        checksum: req.checksum,
        delete: req.delete,
        compress: req.compress,
        dry_run: req.dry_run,
        excludes: req.excludes.clone(),
        atomic,
    };
    let counters = Arc::new(Counters::default());
    let (reader, writer) = session.split();
    let r = if req.push {
        let stager = Stager::Area {
            area: ctx.staging.clone(),
            scope: ctx.root.to_string_lossy().into_owned(),
            user: ctx.user.clone(),
            base: confine::components(&req.path)
                .map(|c| c.join("/"))
                .unwrap_or_default(),
        };
        let dest = receiver::Destination {
            root: dir,
            stager,
            shadow,
            sigcache: sigcache(ctx),
        };
        receiver::run(reader, writer, dest, &opts, no_events(), counters).await
    } else {
        sender::run(reader, writer, dir, &opts, no_events(), counters).await
    };
    match r {
        Ok(s) => {
            tracing::info!(
                user = %ctx.user,
                path = %req.path,
                push = req.push,
                checked = s.checked,
                changed = s.changed,
                deleted = s.deleted,
                failed = s.failed,
                literal_bytes = s.literal_bytes,
                matched_bytes = s.matched_bytes,
                "sync done"
            );
            if writes {
                let result = if s.failed == 0 {
                    "ok".to_string()
                } else {
                    format!("{} paths failed", s.failed)
                };
                audit(ctx, &req, Some(s.literal_bytes + s.matched_bytes), result);
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(user = %ctx.user, path = %req.path, "sync failed: {e}");
            if writes {
                audit(ctx, &req, None, format!("sync stopped: {e}"));
            }
            Err(e.into())
        }
    }
}

/// One audit line per sync that writes: the destination, the file bytes
/// committed, and how it ended.
fn audit(ctx: &ServiceContext, req: &SyncRequest, bytes: Option<u64>, result: String) {
    ctx.audit.record(Event::File {
        user: ctx.user.clone(),
        peer: ctx.peer.clone(),
        op: SyncRequest::OP.to_string(),
        path: req.path.clone(),
        to: None,
        bytes,
        digest: None,
        result,
    });
}

/// Opens the tree the request names: the destination (created with its
/// parents when missing) or the source, which must be a directory.
fn open_tree(ctx: &ServiceContext, req: &SyncRequest) -> Result<Dir, ErrorMsg> {
    let comps = confine::components(&req.path)?;
    let root = confine::open_root(&ctx.root)?;
    let shown = if comps.is_empty() { "/" } else { &req.path };
    let io = |e: std::io::Error| errors::to_msg(&e, shown);
    if req.push && !req.dry_run && !comps.is_empty() {
        match root.create_dir_all(comps.join("/")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
    }
    match confine::open_dir(&root, &comps) {
        Ok(d) => Ok(d),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(errors::msg(
            ErrorCode::Invalid,
            shown,
            "not a directory: sync mirrors directory trees (use cp or put for a single file)",
        )),
        Err(e) if req.push && req.dry_run && e.kind() == std::io::ErrorKind::NotFound => {
            // A dry run into a destination that does not exist yet: list
            // against an empty tree without creating anything.
            empty_tree(ctx).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// The new tree of an atomic push (`sync::atomic`), built beside the
/// destination inside the served root; the root itself cannot be
/// exchanged. Blocking (one hard link per file, done before `sync_ready`).
/// Returns the shadow's directory, which the receiver writes into.
fn prepare_atomic(served: &std::path::Path, path: &str) -> Result<(Dir, Option<Shadow>), ErrorMsg> {
    let comps = confine::components(path)?;
    let Some((name, up)) = comps.split_last() else {
        return Err(ErrorMsg::new(
            ErrorCode::Invalid,
            "--atomic: the destination is the server's root, which cannot be exchanged; \
             sync into a directory inside it (HOST:DIR)",
        ));
    };
    let root = confine::open_root(served)?;
    let parent = confine::open_dir(&root, up).map_err(|e| errors::to_msg(&e, path))?;
    let shadow = Shadow::prepare(parent, name)
        .map_err(|e| ErrorMsg::new(ErrorCode::Invalid, e.to_string()))?;
    let dir = shadow.dir().map_err(|e| errors::to_msg(&e, path))?;
    Ok((dir, Some(shadow)))
}

/// An empty directory to compare against (a dry run into a destination
/// that does not exist): the staging area's own empty subdirectory.
fn empty_tree(ctx: &ServiceContext) -> std::io::Result<Dir> {
    let base = ctx.staging.path().join("empty");
    std::fs::create_dir_all(&base)?;
    Dir::open_ambient_dir(&base, cap_std::ambient_authority())
}
