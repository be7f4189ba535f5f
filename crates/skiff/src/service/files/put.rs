//! `put`: an upload lands in its own staged file in the server's staging
//! area (outside the root: no client path can name it), is hashed while it
//! is written, fsynced, and committed by identity only when the client's
//! whole-file digest matches (`transfer::commit`). `resume` takes over the
//! partial file an interrupted upload of the same user and path left.

use cap_std::fs::Dir;
use skiff_wire::message::files::{Done, End, EntryKind, OkReply, Put, Ready, UploadData};
use skiff_wire::{ErrorCode, ErrorMsg, Message};

use super::confine;
use crate::service::ServiceContext;
use crate::session::{Session, SessionError};
use crate::transfer::checksum::digests_match;
use crate::transfer::commit::{self, CommitError, Destination, Observed};
use crate::transfer::errors;
use crate::transfer::links;
use crate::transfer::partfile::PartFile;
use crate::transfer::pipeline::{Sink, SinkDone};
use crate::transfer::staging::{StageKey, Staged};

/// What a `put` was answered: the upload's `done` (`None` for a
/// symlink), or the error.
pub type Outcome = Result<Option<Done>, ErrorMsg>;

/// Handles one `put` request and, for files, the data that follows;
/// returns what it answered, for the audit log.
pub async fn handle(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    root: &Dir,
    req: &Put,
) -> Result<Outcome, SessionError> {
    match req.kind {
        EntryKind::File => {}
        EntryKind::Symlink => {
            let r = make_symlink(root, req);
            match &r {
                Ok(()) => session.queue(&OkReply {}, &[])?,
                Err(m) => session.queue(m, &[])?,
            }
            return Ok(r.map(|()| None));
        }
        other => {
            let m = ErrorMsg::new(
                ErrorCode::Unsupported,
                format!(
                    "{}: cannot upload a {other:?}; use mkdir for directories",
                    req.path
                ),
            );
            session.queue(&m, &[])?;
            return Ok(Err(m));
        }
    }
    let prepared = match prepare(ctx, root, req) {
        Ok(p) => p,
        Err(m) => {
            session.queue(&m, &[])?;
            // A resuming client waits for `ready`; any other has already
            // started sending data, which is discarded.
            if !req.resume {
                drain(session, ctx).await?;
            }
            return Ok(Err(m));
        }
    };
    session.queue(
        &Ready {
            offset: prepared.offset,
        },
        &[],
    )?;
    session.answered().await?;
    receive(session, ctx, req, prepared).await
}

/// Where an upload is being written.
pub(super) struct Prepared {
    pub(super) dest: Destination,
    /// What was at the destination when the upload started.
    pub(super) observed: Observed,
    pub(super) staged: Staged,
    pub(super) offset: u64,
}

/// Checks the destination and creates (or takes over, for `resume`) the
/// upload's staged file.
pub(super) fn prepare(ctx: &ServiceContext, root: &Dir, req: &Put) -> Result<Prepared, ErrorMsg> {
    let loc = confine::locate(root, &req.path, Put::OP)?;
    let key = StageKey::new(
        &ctx.root.to_string_lossy(),
        &ctx.user,
        &confine::components(&req.path)?.join("/"),
    );
    let dest = Destination {
        dir: loc.parent,
        name: loc.name,
    };
    let observed = dest
        .observe(req.force)
        .map_err(|e| commit_msg(e, &req.path))?;
    let io = |e: std::io::Error| errors::to_msg(&e, &req.path);
    let resumed = if req.resume {
        ctx.staging.resume(&key, req.size).map_err(io)?
    } else {
        None
    };
    let (staged, offset) = match resumed {
        Some(x) => x,
        None => (ctx.staging.create(&key).map_err(io)?, 0),
    };
    Ok(Prepared {
        dest,
        observed,
        staged,
        offset,
    })
}

/// The answer for a commit that did not happen.
pub(super) fn commit_msg(e: CommitError, path: &str) -> ErrorMsg {
    match e {
        CommitError::Exists(why) => errors::msg(ErrorCode::Exists, path, why),
        CommitError::Conflict => ErrorMsg::new(ErrorCode::Conflict, format!("{path}: {e}")),
        CommitError::Lost => ErrorMsg::new(ErrorCode::Internal, format!("{path}: {e}")),
        CommitError::Io(e) => errors::to_msg(&e, path),
    }
}

/// How the data phase ended.
enum Received {
    /// The client's `end` arrived.
    End(End),
    /// The disk writer stopped (its error is in the sink).
    SinkStopped,
    /// The client sent more than it announced.
    TooMuch,
}

/// Streams `data` frames into the partial file, then verifies and commits.
async fn receive(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    req: &Put,
    p: Prepared,
) -> Result<Outcome, SessionError> {
    let Prepared {
        dest,
        observed,
        staged,
        offset,
    } = p;
    let file = match staged.file().try_clone() {
        Ok(f) => f,
        Err(e) => {
            let m = errors::to_msg(&e, &req.path);
            session.queue(&m, &[])?;
            drain(session, ctx).await?;
            return Ok(Err(m));
        }
    };
    let mut sink = Sink::spawn(file, offset, req.hash);
    // Dropping `staged` keeps the partial file (for resume); `discard`
    // removes it.
    let received = match stream(session, ctx, req, &mut sink, offset).await {
        Ok(r) => r,
        Err(e) => {
            // Connection lost or stalled: keep (and fsync) what
            // arrived, for resume.
            let _ = sink.finish().await;
            return Err(e);
        }
    };
    let err = match received {
        Received::TooMuch => too_much(sink, staged, req).await,
        Received::SinkStopped => sink_stopped(sink, staged, req).await,
        Received::End(end) => {
            // The client has sent `end`: nothing is left to drain.
            let r = finish(sink, staged, &dest, observed, req, &end).await;
            match &r {
                Ok(d) => session.queue(d, &[])?,
                Err(m) => session.queue(m, &[])?,
            }
            return Ok(r.map(Some));
        }
    };
    session.queue(&err, &[])?;
    drain(session, ctx).await?;
    Ok(Err(err))
}

/// Feeds `data` frames to the sink until `end`, an overrun or a stopped
/// writer.
async fn stream(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    req: &Put,
    sink: &mut Sink,
    offset: u64,
) -> Result<Received, SessionError> {
    let mut received = offset;
    loop {
        match ctx.next_input::<UploadData>(session.split().0).await? {
            UploadData::Data(body) => {
                received += body.len() as u64;
                if received > req.size {
                    return Ok(Received::TooMuch);
                }
                if !sink.write(body).await {
                    return Ok(Received::SinkStopped);
                }
            }
            UploadData::End(end) => return Ok(Received::End(end)),
        }
    }
}

/// The client sent more than it announced: the partial file goes.
async fn too_much(sink: Sink, staged: Staged, req: &Put) -> ErrorMsg {
    let _ = sink.finish().await;
    staged.discard();
    ErrorMsg::new(
        ErrorCode::TooLarge,
        format!(
            "{}: more data than the announced {} bytes",
            req.path, req.size
        ),
    )
}

/// The disk writer stopped early: its error, and the partial file goes
/// when the disk is full.
async fn sink_stopped(sink: Sink, staged: Staged, req: &Put) -> ErrorMsg {
    let e = match sink.finish().await {
        Ok(_) => std::io::Error::other("the disk writer stopped"),
        Err(e) => e,
    };
    disk_error(&e, staged, req)
}

/// A disk error as the reply; a full disk also discards the partial file.
fn disk_error(e: &std::io::Error, staged: Staged, req: &Put) -> ErrorMsg {
    let m = errors::to_msg(e, &req.path);
    if m.code == ErrorCode::NoSpace {
        staged.discard();
    }
    m
}

/// After the client's `end`: keeps the partial file on an abort, else
/// verifies and commits it.
async fn finish(
    sink: Sink,
    staged: Staged,
    dest: &Destination,
    observed: Observed,
    req: &Put,
    end: &End,
) -> Result<Done, ErrorMsg> {
    if end.abort {
        let _ = sink.finish().await;
        return Err(ErrorMsg::new(
            ErrorCode::Internal,
            format!(
                "{}: upload aborted by the client; the partial data is kept for --resume",
                req.path
            ),
        ));
    }
    match sink.finish().await {
        Err(e) => Err(disk_error(&e, staged, req)),
        Ok(done) => {
            let r = verify_and_commit(&staged, dest, observed, req, end, done);
            staged.discard();
            r
        }
    }
}

/// Verifies size and digest, then commits the staged file by identity.
pub(super) fn verify_and_commit(
    staged: &Staged,
    dest: &Destination,
    observed: Observed,
    req: &Put,
    end: &End,
    done: SinkDone,
) -> Result<Done, ErrorMsg> {
    if done.size != req.size || end.size != req.size {
        return Err(errors::msg(
            ErrorCode::ChecksumMismatch,
            &req.path,
            &format!("received {} bytes, expected {}", done.size, req.size),
        ));
    }
    if !digests_match(&done.digest, &end.digest) {
        return Err(errors::msg(
            ErrorCode::ChecksumMismatch,
            &req.path,
            &format!(
                "client sent {}, server computed {}",
                end.digest, done.digest
            ),
        ));
    }
    commit::commit(
        staged,
        dest,
        observed,
        Some(req.mode.unwrap_or(0o644)),
        req.mtime_ns,
    )
    .map_err(|e| commit_msg(e, &req.path))?;
    Ok(Done {
        size: done.size,
        digest: done.digest,
    })
}

/// Creates a symlink; its target must stay inside the root.
pub(super) fn make_symlink(root: &Dir, req: &Put) -> Result<(), ErrorMsg> {
    let loc = confine::locate(root, &req.path, Put::OP)?;
    let target = req.target.as_deref().unwrap_or("");
    let comps = confine::components(&req.path)?;
    let parent = &comps[..comps.len().saturating_sub(1)];
    let physical = links::physical_path(root, parent).map_err(|e| errors::to_msg(&e, &req.path))?;
    if let Err(refused) = links::check(root, &physical, target) {
        return Err(errors::msg(
            ErrorCode::PathEscape,
            &req.path,
            &refused.to_string(),
        ));
    }
    let dest = PartFile::new(loc.parent, &loc.name);
    dest.check_destination(req.force)
        .map_err(|e| errors::to_msg(&e, &req.path))?;
    match dest.dir.remove_file(&dest.name) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(errors::to_msg(&e, &req.path)),
    }
    dest.dir
        .symlink(target, &dest.name)
        .map_err(|e| errors::to_msg(&e, &req.path))
}

/// Discards the data of a refused upload, up to its `end` (each frame
/// within the idle timeout).
pub async fn drain(session: &mut Session<'_>, ctx: &ServiceContext) -> Result<(), SessionError> {
    // Let the client see the refusal promptly, so it stops sending.
    session.flush().await?;
    while let UploadData::Data(_) = ctx.next_input::<UploadData>(session.split().0).await? {}
    Ok(())
}
