//! The `files` service: put, get, ls, stat, rm, mkdir, mv, all confined to
//! the server root.
//!
//! Every filesystem access goes through a `cap_std::fs::Dir` opened on the
//! root (the private `confine` module); the kernel (openat2 `RESOLVE_BENEATH`, or cap-std's
//! own resolution where that is missing) refuses any path, symlink or race
//! that would lead outside, and that refusal is answered `path_escape`.
//! Failures of one operation are answered with an `error` frame and the
//! session goes on; only protocol violations end it.

pub mod confine;
mod get;
mod listing;
mod manage;
mod put;
#[cfg(test)]
mod put_tests;
pub mod streams;
mod tree;
mod tree_get;

use skiff_wire::message::files::{Done, EntryKind, Mkdir, Mv, Put, Rm};
use skiff_wire::message::Request;
use skiff_wire::{ErrorCode, ErrorMsg, Message};

use super::ServiceContext;
use crate::audit::Event;
use crate::session::{Session, SessionError};

/// Handles one `files` request (the dispatcher flushes after it). A
/// request that changes something is first put to the user's policy, and
/// its outcome goes to the audit log.
pub async fn handle(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    req: Request,
) -> Result<(), SessionError> {
    let change = Change::of(&req);
    if let Some(c) = &change {
        if let Err(refusal) = ctx.policy.check_change(c.op) {
            let m = ErrorMsg::from(refusal);
            c.record(ctx, None, Err(&m));
            session.queue(&m, &[])?;
            return drain_refused(session, ctx, &req).await;
        }
    }
    let root = match confine::open_root(&ctx.root) {
        Ok(r) => r,
        Err(m) => {
            session.queue(&m, &[])?;
            return drain_refused(session, ctx, &req).await;
        }
    };
    let (done, result) = match req {
        Request::Put(req) => {
            upload_outcome(put::handle(session, ctx, &root, &req).await, ctx, &change)?
        }
        Request::PutOpen(req) => {
            upload_outcome(streams::open(session, ctx, &root, &req).await, ctx, &change)?
        }
        Request::PutJoin(req) => return streams::join(session, ctx, &req).await.map(|_| ()),
        Request::PutTree(req) => return tree::receive(session, ctx, &root, req).await,
        Request::GetTree(req) => return tree_get::send(session, ctx, &root, req).await,
        Request::Get(req) => return get::handle(session, &root, req).await,
        Request::Ls(req) => return listing::ls(session, &root, req).await,
        Request::Stat(req) => return reply(session, listing::stat(&root, &req)).map(|_| ()),
        Request::Rm(req) => (None, reply(session, manage::rm(&root, req).await)?),
        Request::Mkdir(req) => (None, reply(session, manage::mkdir(&root, &req))?),
        Request::Mv(req) => (None, reply(session, manage::mv(&root, &req))?),
        Request::Ping(_) | Request::Exec(_) | Request::Sync(_) => {
            return session.queue(
                &ErrorMsg::new(ErrorCode::Internal, "not a file operation"),
                &[],
            )
        }
    };
    if let Some(c) = &change {
        c.record(ctx, done.as_ref(), result.as_ref().map(|_| ()));
    }
    Ok(())
}

/// What an upload (`put` or `put_open`) did, for the audit record; a
/// session that broke mid-upload is recorded as lost and ends.
fn upload_outcome(
    outcome: Result<put::Outcome, SessionError>,
    ctx: &ServiceContext,
    change: &Option<Change>,
) -> Result<(Option<Done>, Result<(), ErrorMsg>), SessionError> {
    match outcome {
        Ok(Ok(done)) => Ok((done, Ok(()))),
        Ok(Err(m)) => Ok((None, Err(m))),
        Err(e) => {
            if let Some(c) = change {
                c.record_lost(ctx, &e);
            }
            Err(e)
        }
    }
}

/// An upload's data still follows a refused `put` (unless it waits for
/// `ready`): it is read and discarded.
async fn drain_refused(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    req: &Request,
) -> Result<(), SessionError> {
    match req {
        Request::Put(put) if !put.resume && put.kind == EntryKind::File => {
            put::drain(session, ctx).await
        }
        Request::PutOpen(_) | Request::PutJoin(_) => put::drain(session, ctx).await,
        _ => Ok(()),
    }
}

/// A request that changes the tree: what the policy is asked about and
/// the audit log records. Operations added later that change files (a
/// sync receiver, say) go through [`crate::policy::Policy::check_change`]
/// the same way.
struct Change {
    op: &'static str,
    path: String,
    to: Option<String>,
}

impl Change {
    /// `None` for requests that only read.
    fn of(req: &Request) -> Option<Change> {
        let (op, path, to) = match req {
            Request::Put(p) if p.kind == EntryKind::Symlink => {
                ("symlink", &p.path, p.target.clone())
            }
            Request::Put(p) => (Put::OP, &p.path, None),
            Request::PutOpen(p) => (Put::OP, &p.path, None),
            // A range of an upload whose `put_open` was checked (and is
            // recorded) on its own connection.
            Request::PutJoin(_) => return None,
            // Each file of a tree is recorded on its own; this is the
            // policy check of the tree as a whole.
            Request::PutTree(_) => {
                return Some(Change {
                    op: Put::OP,
                    path: "/".to_string(),
                    to: None,
                })
            }
            Request::Rm(r) => (Rm::OP, &r.path, None),
            Request::Mkdir(m) => (Mkdir::OP, &m.path, None),
            Request::Mv(m) => (Mv::OP, &m.from, Some(m.to.clone())),
            Request::Get(_) | Request::GetTree(_) | Request::Ls(_) | Request::Stat(_) => {
                return None
            }
            Request::Ping(_) | Request::Exec(_) | Request::Sync(_) => return None,
        };
        Some(Change {
            op,
            path: path.clone(),
            to,
        })
    }

    fn record(&self, ctx: &ServiceContext, done: Option<&Done>, result: Result<(), &ErrorMsg>) {
        let result = match result {
            Ok(()) => "ok".to_string(),
            Err(m) => m.code.as_str().to_string(),
        };
        self.event(ctx, done, result);
    }

    /// The connection broke in the middle (an upload cut short).
    fn record_lost(&self, ctx: &ServiceContext, e: &SessionError) {
        self.event(ctx, None, format!("client gone: {e}"));
    }

    fn event(&self, ctx: &ServiceContext, done: Option<&Done>, result: String) {
        ctx.audit.record(Event::File {
            user: ctx.user.clone(),
            peer: ctx.peer.clone(),
            op: self.op.to_string(),
            path: self.path.clone(),
            to: self.to.clone(),
            bytes: done.map(|d| d.size),
            digest: done.map(|d| d.digest.clone()),
            result,
        });
    }
}

/// Queues a one-frame answer: the message, or the error; returns which.
fn reply<M: Message>(
    session: &mut Session<'_>,
    r: Result<M, ErrorMsg>,
) -> Result<Result<(), ErrorMsg>, SessionError> {
    match r {
        Ok(m) => session.queue(&m, &[]).map(|()| Ok(())),
        Err(e) => session.queue(&e, &[]).map(|()| Err(e)),
    }
}

/// Makes writes past `RLIMIT_FSIZE` fail with `EFBIG` (answered `no_space`)
/// instead of killing the whole server with `SIGXFSZ`.
pub fn ignore_file_size_signal() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code; it only changes disposition.
    let _ = unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) };
}
