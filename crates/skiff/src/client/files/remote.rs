//! One-request operations: `stat`, `ls`, `rm`, `mkdir`, `mv`.

use skiff_wire::message::files::{
    Entries, Entry, EntryKind, FilesReply, Ls, Mkdir, Mv, OkReply, Put, Rm, Stat, StatReply,
};
use skiff_wire::{ErrorCode, Message};

use super::recv_msg;
use crate::client::ClientError;
use crate::session::{Session, SessionError};

/// Sends one request and waits for its one-frame answer.
async fn call<Req: Message>(
    session: &mut Session<'_>,
    req: &Req,
) -> Result<FilesReply, ClientError> {
    session.send(req, &[]).await?;
    let (reader, _) = session.split();
    recv_msg::<FilesReply>(reader).await
}

/// A reply other than the `expected` one, as the error to return.
fn refused(reply: FilesReply, expected: &'static str) -> ClientError {
    match super::failure_or_protocol(reply, expected) {
        Ok(f) => ClientError::Remote(skiff_wire::ErrorMsg::new(f.code, f.message)),
        Err(e) => e,
    }
}

/// `rm`, `mkdir` and `mv` answer `ok`.
fn expect_ok(reply: FilesReply) -> Result<(), ClientError> {
    match reply {
        FilesReply::Ok(_) => Ok(()),
        other => Err(refused(other, OkReply::OP)),
    }
}

/// Describes a remote path (a final symlink is not followed).
pub async fn stat(session: &mut Session<'_>, path: &str) -> Result<Entry, ClientError> {
    match call(session, &Stat { path: path.into() }).await? {
        FilesReply::StatOk(r) => Ok(r.entry),
        other => Err(refused(other, StatReply::OP)),
    }
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
    list(
        session,
        &Ls {
            path: path.into(),
            recursive,
            pattern: None,
        },
    )
    .await
}

/// The entries beneath the directory `path` that match the glob
/// `pattern`, as the server found them (paths relative to `path`).
pub async fn ls_matching(
    session: &mut Session<'_>,
    path: &str,
    pattern: &str,
) -> Result<Vec<Entry>, ClientError> {
    list(
        session,
        &Ls {
            path: path.into(),
            recursive: false,
            pattern: Some(pattern.into()),
        },
    )
    .await
}

/// Sends one `ls` and collects its batches.
async fn list(session: &mut Session<'_>, req: &Ls) -> Result<Vec<Entry>, ClientError> {
    session.send(req, &[]).await?;
    let (reader, _) = session.split();
    let mut out = Vec::new();
    loop {
        let (head, body) = match recv_msg::<FilesReply>(reader).await? {
            FilesReply::Entries(batch) => batch,
            other => return Err(refused(other, Entries::OP)),
        };
        let batch: Vec<Entry> = serde_json::from_slice(&body).map_err(|e| {
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
    expect_ok(
        call(
            session,
            &Rm {
                path: path.into(),
                recursive,
            },
        )
        .await?,
    )
}

/// Creates a remote directory.
pub async fn mkdir(
    session: &mut Session<'_>,
    path: &str,
    parents: bool,
) -> Result<(), ClientError> {
    mkdir_with(
        session,
        &Mkdir {
            path: path.into(),
            parents,
            ..Default::default()
        },
    )
    .await
}

/// Sends one `mkdir` request as given (`exist_ok`, mode, mtime).
pub async fn mkdir_with(session: &mut Session<'_>, req: &Mkdir) -> Result<(), ClientError> {
    expect_ok(call(session, req).await?)
}

/// Creates a remote symlink (the server checks where it leads).
pub async fn symlink(
    session: &mut Session<'_>,
    path: &str,
    target: &str,
    force: bool,
) -> Result<(), ClientError> {
    let req = Put {
        path: path.into(),
        kind: EntryKind::Symlink,
        target: Some(target.into()),
        force,
        ..Default::default()
    };
    expect_ok(call(session, &req).await?)
}

/// Renames a remote path.
pub async fn mv(
    session: &mut Session<'_>,
    from: &str,
    to: &str,
    force: bool,
) -> Result<(), ClientError> {
    expect_ok(
        call(
            session,
            &Mv {
                from: from.into(),
                to: to.into(),
                force,
            },
        )
        .await?,
    )
}
