//! The `files` service: put, get, ls, stat, rm, mkdir, mv, all confined to
//! the server root.
//!
//! Every filesystem access goes through a `cap_std::fs::Dir` opened on the
//! root ([`confine`]); the kernel (openat2 `RESOLVE_BENEATH`, or cap-std's
//! own resolution where that is missing) refuses any path, symlink or race
//! that would lead outside, and that refusal is answered `path_escape`.
//! Failures of one operation are answered with an `error` frame and the
//! session goes on; only protocol violations end it.

mod confine;
mod get;
mod listing;
mod manage;
mod put;

use skiff_wire::message::files::{Get, Ls, Mkdir, Mv, Put, Rm, Stat};
use skiff_wire::{ErrorMsg, Frame, Message};

use super::ServiceContext;
use crate::session::{Session, SessionError};

/// Handles one `files` request (the dispatcher flushes after it).
pub async fn handle(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    frame: Frame,
) -> Result<(), SessionError> {
    let root = match confine::open_root(&ctx.root) {
        Ok(r) => r,
        Err(m) => {
            // An upload's data still follows the refused request.
            if frame.is::<Put>() {
                let req: Put = frame.parse()?;
                session.queue(&m, &[])?;
                if !req.resume && req.kind == skiff_wire::message::files::EntryKind::File {
                    put::drain(session).await?;
                }
                return Ok(());
            }
            return session.queue(&m, &[]);
        }
    };
    match frame.op() {
        Put::OP => put::handle(session, ctx, &root, frame.parse()?).await,
        Get::OP => get::handle(session, &root, frame.parse()?).await,
        Ls::OP => listing::ls(session, &root, frame.parse()?).await,
        Stat::OP => reply(session, listing::stat(&root, &frame.parse()?)),
        Rm::OP => reply(session, manage::rm(&root, frame.parse()?).await),
        Mkdir::OP => reply(session, manage::mkdir(&root, &frame.parse()?)),
        Mv::OP => reply(session, manage::mv(&root, &frame.parse()?)),
        other => session.queue(
            &ErrorMsg::new(
                skiff_wire::ErrorCode::Unsupported,
                format!("unknown file operation {other:?}"),
            ),
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
