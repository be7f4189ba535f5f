//! What an authenticated session can ask for. The dispatcher reads one
//! request at a time and hands it to its service; answers therefore go out
//! in request order, and a client may pipeline. Services see only the
//! [`Session`] (frames), never sockets or TLS.

pub mod exec;
pub mod files;
pub mod ping;
pub mod udp_ping;

use std::path::PathBuf;
use std::sync::Arc;

use skiff_wire::ErrorCode;

use crate::session::{Session, SessionError};

/// What every service may need to know about the server.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// Everything is confined to this directory.
    pub root: PathBuf,
    /// Whether `exec` is offered (`--no-exec` turns it off).
    pub exec_enabled: bool,
    /// The authenticated user.
    pub user: String,
    /// Where uploads are written until they are verified (outside the
    /// root, so no client path can name them).
    pub staging: Arc<crate::transfer::staging::StagingArea>,
}

impl ServiceContext {
    /// The operations this server offers, as announced in `welcome`.
    pub fn services(exec_enabled: bool) -> Vec<String> {
        let mut v = vec!["ping", "put", "get", "ls", "stat", "rm", "mkdir", "mv"];
        if exec_enabled {
            v.push("exec");
        }
        v.into_iter().map(String::from).collect()
    }
}

/// Serves requests until the client closes. A protocol violation is
/// answered with an error frame and ends the session.
pub async fn serve(session: &mut Session<'_>, ctx: &ServiceContext) -> Result<(), SessionError> {
    loop {
        let frame = match session.recv().await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(SessionError::Frame(e)) => {
                let _ = session.send_error(e.code(), e.to_string()).await;
                return Err(SessionError::Frame(e));
            }
            Err(e) => return Err(e),
        };
        match frame.op() {
            "ping" => ping::handle(session, frame)?,
            "exec" | "stdin" | "stdin_eof" | "signal" | "resize" => {
                exec::handle(session, ctx, frame).await?
            }
            "put" | "get" | "ls" | "stat" | "rm" | "mkdir" | "mv" => {
                files::handle(session, ctx, frame).await?
            }
            other => {
                let msg = format!("unknown operation {other:?}");
                session.queue(&skiff_wire::ErrorMsg::new(ErrorCode::Unsupported, msg), &[])?;
            }
        }
        // Answers to pipelined requests are batched: flush only when no
        // further request is already waiting, or when the buffer is large.
        if !session.has_buffered_input() || session.buffered() >= crate::session::WRITE_HIGH_WATER {
            session.flush().await?;
        }
    }
}
