//! The `files` service: put, get, ls, stat, rm, mkdir, mv, all confined to
//! the server root.
//!
//! Every filesystem access goes through a `cap_std::fs::Dir` opened on the
//! root ([`confine`]); the kernel (openat2 `RESOLVE_BENEATH`, or cap-std's
//! own resolution where that is missing) refuses any path, symlink or race
//! that would lead outside, and that refusal is answered `path_escape`.
//! Failures of one operation are answered with an `error` frame and the
//! session goes on; only protocol violations end it.

pub(crate) mod confine;
mod get;
mod listing;
mod manage;
mod put;

use skiff_wire::message::files::EntryKind;
use skiff_wire::message::Request;
use skiff_wire::{ErrorCode, ErrorMsg, Message};

use super::ServiceContext;
use crate::session::{Session, SessionError};

/// Handles one `files` request (the dispatcher flushes after it).
pub async fn handle(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    req: Request,
) -> Result<(), SessionError> {
    let root = match confine::open_root(&ctx.root) {
        Ok(r) => r,
        Err(m) => {
            session.queue(&m, &[])?;
            // An upload's data still follows the refused request.
            if let Request::Put(put) = req {
                if !put.resume && put.kind == EntryKind::File {
                    put::drain(session).await?;
                }
            }
            return Ok(());
        }
    };
    match req {
        Request::Put(req) => put::handle(session, ctx, &root, req).await,
        Request::Get(req) => get::handle(session, &root, req).await,
        Request::Ls(req) => listing::ls(session, &root, req).await,
        Request::Stat(req) => reply(session, listing::stat(&root, &req)),
        Request::Rm(req) => reply(session, manage::rm(&root, req).await),
        Request::Mkdir(req) => reply(session, manage::mkdir(&root, &req)),
        Request::Mv(req) => reply(session, manage::mv(&root, &req)),
        Request::Ping(_) | Request::Exec(_) | Request::Sync(_) => session.queue(
            &ErrorMsg::new(ErrorCode::Internal, "not a file operation"),
            &[],
        ),
    }
}

/// Queues a one-frame answer: the message, or the error.
fn reply<M: Message>(
    session: &mut Session<'_>,
    r: Result<M, ErrorMsg>,
) -> Result<(), SessionError> {
    match r {
        Ok(m) => session.queue(&m, &[]),
        Err(e) => session.queue(&e, &[]),
    }
}

/// Makes writes past `RLIMIT_FSIZE` fail with `EFBIG` (answered `no_space`)
/// instead of killing the whole server with `SIGXFSZ`.
pub fn ignore_file_size_signal() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code; it only changes disposition.
    let _ = unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) };
}
