//! One-request operations: `stat`, `ls`, `rm`, `mkdir`, `mv`.

use skiff_wire::message::files::{Entries, Entry, Ls, Mkdir, Mv, OkReply, Rm, Stat, StatReply};
use skiff_wire::{ErrorCode, Message};

use super::recv_frame;
use crate::client::ClientError;
use crate::session::{Session, SessionError};

/// Sends one request and waits for its one-frame answer.
async fn call<Req: Message, Resp: Message>(
    session: &mut Session<'_>,
    req: &Req,
) -> Result<Resp, ClientError> {
    session.send(req, &[]).await?;
    let (reader, _) = session.split();
    let frame = recv_frame(reader).await?;
    if frame.is::<Resp>() {
        return Ok(frame.parse::<Resp>().map_err(SessionError::from)?);
    }
    Err(super::failure_or_protocol(&frame, Resp::OP)
        .map(|f| ClientError::Remote(skiff_wire::ErrorMsg::new(f.code, f.message)))
        .unwrap_or_else(|e| e))
}

/// Describes a remote path (a final symlink is not followed).
pub async fn stat(session: &mut Session<'_>, path: &str) -> Result<Entry, ClientError> {
    let r: StatReply = call(session, &Stat { path: path.into() }).await?;
    Ok(r.entry)
}

/// Like [`stat`], with `None` for a path that does not exist.
pub async fn stat_opt(session: &mut Session<'_>, path: &str) -> Result<Option<Entry>, ClientError> {
    match stat(session, path).await {
        Ok(e) => Ok(Some(e)),
        Err(ClientError::Remote(m)) if m.code == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Lists a directory (or a whole tree).
pub async fn ls(
    session: &mut Session<'_>,
    path: &str,
    recursive: bool,
) -> Result<Vec<Entry>, ClientError> {
    session
        .send(
            &Ls {
                path: path.into(),
                recursive,
            },
            &[],
        )
        .await?;
    let (reader, _) = session.split();
    let mut out = Vec::new();
    loop {
        let frame = recv_frame(reader).await?;
        if !frame.is::<Entries>() {
            let f = super::failure_or_protocol(&frame, Entries::OP)?;
            return Err(ClientError::Remote(skiff_wire::ErrorMsg::new(
                f.code, f.message,
            )));
        }
        let head: Entries = frame.parse().map_err(SessionError::from)?;
        let batch: Vec<Entry> = serde_json::from_slice(frame.body()).map_err(|e| {
            ClientError::Session(SessionError::Unexpected {
                expected: "a JSON array of entries",
                got: e.to_string(),
            })
        })?;
        out.extend(batch);
        if !head.more {
            return Ok(out);
        }
    }
}

/// Removes a remote file, or a tree with `recursive`.
pub async fn rm(session: &mut Session<'_>, path: &str, recursive: bool) -> Result<(), ClientError> {
    let _: OkReply = call(
        session,
        &Rm {
            path: path.into(),
            recursive,
        },
    )
    .await?;
    Ok(())
}

/// Creates a remote directory.
pub async fn mkdir(
    session: &mut Session<'_>,
    path: &str,
    parents: bool,
) -> Result<(), ClientError> {
    let _: OkReply = call(
        session,
        &Mkdir {
            path: path.into(),
            parents,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Renames a remote path.
pub async fn mv(
    session: &mut Session<'_>,
    from: &str,
    to: &str,
    force: bool,
) -> Result<(), ClientError> {
    let _: OkReply = call(
        session,
        &Mv {
            from: from.into(),
            to: to.into(),
            force,
        },
    )
    .await?;
    Ok(())
}
