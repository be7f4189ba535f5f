//! `put_open` and `put_join`: one upload whose ranges arrive on several
//! connections of the same user, for links where one TCP stream cannot
//! carry the bandwidth (a long round trip, a per-flow limit).
//!
//! The opening connection creates ONE staged file, registers the upload
//! under a random 128-bit id bound to its user and root, and sends the
//! first range; every other connection claims a range that overlaps no
//! other and lies inside the file, and writes it at its offset. The upload
//! lives as long as its opening connection: when that ends without a
//! commit (or a range fails) the staged file is removed. The whole file is
//! hashed again from the staged file once every byte is there (one extra
//! sequential read of the file: about half a second per GiB here), then
//! committed exactly like a single-stream `put` (`put::verify_and_commit`).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use cap_std::fs::Dir;
use rand::RngCore;
use skiff_wire::message::files::{Done, End, EntryKind, OkReply, Put, Ready, UploadData};
use skiff_wire::message::streams::{Opened, PutJoin, PutOpen};
use skiff_wire::{ErrorCode, ErrorMsg};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::put::{self, Outcome, Prepared};
use crate::service::ServiceContext;
use crate::session::{Session, SessionError};
use crate::transfer::checksum::Checksum;
use crate::transfer::commit::{Destination, Observed};
use crate::transfer::errors;
use crate::transfer::pipeline::{hash_prefix, SinkDone};
use crate::transfer::staging::Staged;
use crate::transfer::WINDOW;

/// Connections one upload may use, the opening one included.
pub const MAX_STREAMS: u32 = 16;

/// The uploads over several connections in progress on one server, by id.
#[derive(Debug, Default)]
pub struct Joins {
    open: Mutex<HashMap<String, Arc<Upload>>>,
}

impl Joins {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Upload>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upload `id`, if `user` opened it in `scope`: an unknown id and
    /// another user's look the same to the caller.
    fn find(&self, id: &str, user: &str, scope: &PathBuf) -> Option<Arc<Upload>> {
        self.lock()
            .get(id)
            .filter(|u| u.user == user && &u.scope == scope)
            .cloned()
    }
}

/// One upload over several connections.
#[derive(Debug)]
struct Upload {
    user: String,
    scope: PathBuf,
    size: u64,
    streams: u32,
    /// The staged file (each range writes through a clone of it).
    file: File,
    state: Mutex<State>,
}

/// Which ranges are claimed and written.
#[derive(Debug, Default)]
struct State {
    /// `(offset, length)` of every range claimed, at most `streams`.
    claimed: Vec<(u64, u64)>,
    /// Bytes of the ranges written completely.
    complete: u64,
    /// Why the upload can no longer complete.
    failed: Option<String>,
}

impl Upload {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `[offset, offset + length)` for one connection.
    fn claim(self: &Arc<Self>, offset: u64, length: u64) -> Result<Claim, String> {
        let mut s = self.state();
        if let Some(why) = &s.failed {
            return Err(format!("the upload already failed: {why}"));
        }
        let end = offset.checked_add(length).filter(|&e| e <= self.size);
        let Some(end) = end.filter(|_| length > 0) else {
            return Err(format!(
                "range {offset}+{length} is empty or outside the file's {} bytes",
                self.size
            ));
        };
        if s.claimed.iter().any(|&(o, l)| offset < o + l && o < end) {
            return Err(format!("range {offset}+{length} overlaps another range"));
        }
        if s.claimed.len() >= self.streams as usize {
            return Err(format!(
                "the upload was opened for {} streams",
                self.streams
            ));
        }
        s.claimed.push((offset, length));
        Ok(Claim {
            upload: self.clone(),
            offset,
            length,
            done: false,
        })
    }

    fn fail(&self, why: String) {
        let mut s = self.state();
        if s.failed.is_none() {
            s.failed = Some(why);
        }
    }

    /// `Ok` when every byte was written by some range and nothing failed.
    fn complete(&self) -> Result<(), String> {
        let s = self.state();
        match &s.failed {
            Some(why) => Err(why.clone()),
            None if s.complete == self.size => Ok(()),
            None => Err(format!(
                "only {} of {} bytes arrived in complete ranges",
                s.complete, self.size
            )),
        }
    }
}

/// A claimed range: counted when [`Claim::written`], and the upload fails
/// if it is dropped before that (its connection broke, sent too much or
/// too little).
struct Claim {
    upload: Arc<Upload>,
    offset: u64,
    length: u64,
    done: bool,
}

impl Claim {
    fn written(mut self) {
        self.done = true;
        self.upload.state().complete += self.length;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.done {
            self.upload.fail(format!(
                "the range {}+{} was not completed",
                self.offset, self.length
            ));
        }
    }
}

/// The registration of an upload under its id, held by the opening
/// connection's handler: dropping it ends the upload (nobody can join any
/// more, ranges still arriving fail) and removes the staged file unless it
/// was committed (then its name no longer refers to it).
struct Registration<'a> {
    joins: &'a Joins,
    id: String,
    upload: Arc<Upload>,
    staged: Option<Staged>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.joins.lock().remove(&self.id);
        self.upload
            .fail("the upload's opening connection ended".to_string());
        if let Some(s) = self.staged.take() {
            s.discard();
        }
    }
}

/// Writes one range at its offsets on a blocking thread, at most
/// [`WINDOW`] chunks behind the network. No hash (the whole file is hashed
/// once it is complete) and no fsync (the commit syncs the file once).
struct RangeWriter {
    tx: Option<mpsc::Sender<Bytes>>,
    task: JoinHandle<io::Result<u64>>,
}

impl RangeWriter {
    fn spawn(file: File, offset: u64) -> RangeWriter {
        let (tx, mut rx) = mpsc::channel::<Bytes>(WINDOW);
        let task = tokio::task::spawn_blocking(move || {
            let mut pos = offset;
            while let Some(chunk) = rx.blocking_recv() {
                file.write_all_at(&chunk, pos)?;
                pos += chunk.len() as u64;
            }
            Ok(pos - offset)
        });
        RangeWriter { tx: Some(tx), task }
    }

    /// Queues a chunk; `false` once the writer stopped.
    async fn write(&mut self, chunk: Bytes) -> bool {
        match &self.tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        }
    }

    /// The bytes written, once every queued chunk is, or the write error.
    async fn finish(mut self) -> io::Result<u64> {
        self.tx = None;
        self.task
            .await
            .map_err(|e| io::Error::other(format!("writer thread failed: {e}")))?
    }
}

/// How a range's data ended.
enum Received {
    /// The client's `end`, and the bytes written.
    End(End, io::Result<u64>),
    /// More data than the range holds.
    TooMuch,
    /// The writer stopped (its error).
    WriterStopped(io::Error),
}

/// Reads one range's `data` frames into `writer` until `end`.
async fn receive(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    mut writer: RangeWriter,
    length: u64,
) -> Result<Received, SessionError> {
    let mut got = 0u64;
    loop {
        match ctx.next_input::<UploadData>(session.split().0).await? {
            UploadData::Data(body) => {
                got += body.len() as u64;
                if got > length {
                    let _ = writer.finish().await;
                    return Ok(Received::TooMuch);
                }
                if !writer.write(body).await {
                    let e = match writer.finish().await {
                        Err(e) => e,
                        Ok(_) => io::Error::other("the disk writer stopped"),
                    };
                    return Ok(Received::WriterStopped(e));
                }
            }
            UploadData::End(end) => return Ok(Received::End(end, writer.finish().await)),
        }
    }
}

/// Turns the end of a range into its claim's outcome (`Ok` once counted).
fn settle(received: Received, claim: Claim, path: &str) -> Result<(), (ErrorMsg, bool)> {
    let length = claim.length;
    match received {
        Received::TooMuch => Err((
            ErrorMsg::new(
                ErrorCode::TooLarge,
                format!("{path}: more data than the range's {length} bytes"),
            ),
            true,
        )),
        Received::WriterStopped(e) => Err((errors::to_msg(&e, path), true)),
        Received::End(_, Err(e)) => Err((errors::to_msg(&e, path), false)),
        Received::End(end, Ok(_)) if end.abort => Err((
            ErrorMsg::new(
                ErrorCode::Internal,
                format!("{path}: upload aborted by the client; nothing was committed"),
            ),
            false,
        )),
        Received::End(_, Ok(n)) if n != length => Err((errors_short(path, n, length), false)),
        Received::End(..) => {
            claim.written();
            Ok(())
        }
    }
}

fn errors_short(path: &str, got: u64, length: u64) -> ErrorMsg {
    ErrorMsg::new(
        ErrorCode::ChecksumMismatch,
        format!("{path}: received {got} bytes of a {length}-byte range"),
    )
}

/// Handles `put_open`: registers the upload, receives its first range on
/// this connection, and after the client's `end` verifies and commits the
/// whole file.
pub async fn open(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    root: &Dir,
    req: &PutOpen,
) -> Result<Outcome, SessionError> {
    let put = Put {
        path: req.path.clone(),
        kind: EntryKind::File,
        size: req.size,
        mode: req.mode,
        mtime_ns: req.mtime_ns,
        hash: req.hash,
        force: req.force,
        resume: false,
        target: None,
    };
    let started = check_open(req).and_then(|()| put::prepare(ctx, root, &put));
    let Prepared {
        dest,
        observed,
        staged,
        ..
    } = match started {
        Ok(p) => p,
        Err(m) => return refuse(session, ctx, m).await.map(Err),
    };
    let file = match staged.file().try_clone() {
        Ok(f) => f,
        Err(e) => {
            staged.discard();
            return refuse(session, ctx, errors::to_msg(&e, &req.path))
                .await
                .map(Err);
        }
    };
    let mut raw = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let id = hex::encode(raw);
    let upload = Arc::new(Upload {
        user: ctx.user.clone(),
        scope: ctx.root.clone(),
        size: req.size,
        streams: req.streams,
        file,
        state: Mutex::new(State::default()),
    });
    let reg = Registration {
        joins: &ctx.joins,
        id: id.clone(),
        upload: upload.clone(),
        staged: Some(staged),
    };
    ctx.joins.lock().insert(id.clone(), upload.clone());
    let writer = match upload.file.try_clone() {
        Ok(f) => RangeWriter::spawn(f, 0),
        Err(e) => {
            return refuse(session, ctx, errors::to_msg(&e, &req.path))
                .await
                .map(Err)
        }
    };
    let claim = match upload.claim(0, req.length) {
        Ok(c) => c,
        Err(why) => {
            let m = ErrorMsg::new(ErrorCode::Invalid, format!("{}: {why}", req.path));
            return refuse(session, ctx, m).await.map(Err);
        }
    };
    session.queue(&Opened { id }, &[])?;
    // The other connections wait for the id: send it now, even though
    // this range's data is already arriving.
    session.flush().await?;
    let received = receive(session, ctx, writer, req.length).await?;
    let end = match &received {
        Received::End(end, _) => end.clone(),
        _ => End::default(),
    };
    if let Err((m, drain)) = settle(received, claim, &req.path) {
        session.queue(&m, &[])?;
        if drain {
            put::drain(session, ctx).await?;
        }
        return Ok(Err(m));
    }
    let r = commit(&reg, &dest, observed, &put, &end).await;
    match &r {
        Ok(d) => session.queue(d, &[])?,
        Err(m) => session.queue(m, &[])?,
    }
    Ok(r.map(Some))
}

/// The request's own limits.
fn check_open(req: &PutOpen) -> Result<(), ErrorMsg> {
    if req.streams < 1 || req.streams > MAX_STREAMS {
        return Err(ErrorMsg::new(
            ErrorCode::Invalid,
            format!(
                "{}: {} streams asked for; 1 to {MAX_STREAMS} are allowed",
                req.path, req.streams
            ),
        ));
    }
    if req.length < 1 || req.length > req.size {
        return Err(ErrorMsg::new(
            ErrorCode::Invalid,
            format!(
                "{}: a first range of {} bytes in a {}-byte file",
                req.path, req.length, req.size
            ),
        ));
    }
    Ok(())
}

/// Answers a refused `put_open` or `put_join` and discards the data the
/// client may already have sent.
async fn refuse(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    m: ErrorMsg,
) -> Result<ErrorMsg, SessionError> {
    session.queue(&m, &[])?;
    put::drain(session, ctx).await?;
    Ok(m)
}

/// Once the opening connection's `end` arrived: every range must be
/// complete; the whole staged file is hashed and committed as `put` does.
async fn commit(
    reg: &Registration<'_>,
    dest: &Destination,
    observed: Observed,
    put: &Put,
    end: &End,
) -> Result<Done, ErrorMsg> {
    let upload = reg.upload.clone();
    if end.abort {
        return Err(ErrorMsg::new(
            ErrorCode::Internal,
            format!(
                "{}: upload aborted by the client; nothing was committed",
                put.path
            ),
        ));
    }
    upload.complete().map_err(|why| {
        ErrorMsg::new(ErrorCode::ChecksumMismatch, format!("{}: {why}", put.path))
    })?;
    // Nobody joins a complete upload.
    ctx_forget(reg);
    let io = |e: io::Error| errors::to_msg(&e, &put.path);
    let file = upload.file.try_clone().map_err(io)?;
    let (size, alg) = (upload.size, put.hash);
    let hashed = tokio::task::spawn_blocking(move || {
        let mut sum = Checksum::new(alg);
        hash_prefix(&file, size, &mut sum).map(|()| (sum.finish_hex(), file))
    })
    .await
    .map_err(|e| io(io::Error::other(format!("hash thread failed: {e}"))))?;
    let (digest, file) = hashed.map_err(io)?;
    let Some(staged) = reg.staged.as_ref() else {
        return Err(ErrorMsg::new(ErrorCode::Internal, "staged file gone"));
    };
    put::verify_and_commit(
        staged,
        dest,
        observed,
        put,
        end,
        SinkDone { size, digest, file },
    )
}

fn ctx_forget(reg: &Registration<'_>) {
    reg.joins.lock().remove(&reg.id);
}

/// Handles `put_join`: claims the range and writes it into the upload's
/// staged file; `ok` once it is written.
pub async fn join(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    req: &PutJoin,
) -> Result<Result<(), ErrorMsg>, SessionError> {
    let Some(upload) = ctx.joins.find(&req.id, &ctx.user, &ctx.root) else {
        let m = ErrorMsg::new(
            ErrorCode::NotFound,
            "put_join: no upload with this id is in progress",
        );
        return refuse(session, ctx, m).await.map(Err);
    };
    let claim = match upload.claim(req.offset, req.length) {
        Ok(c) => c,
        Err(why) => {
            let m = ErrorMsg::new(ErrorCode::Invalid, format!("put_join: {why}"));
            return refuse(session, ctx, m).await.map(Err);
        }
    };
    let writer = match upload.file.try_clone() {
        Ok(f) => RangeWriter::spawn(f, req.offset),
        Err(e) => {
            return refuse(session, ctx, errors::to_msg(&e, "put_join"))
                .await
                .map(Err)
        }
    };
    session.queue(&Ready { offset: req.offset }, &[])?;
    // The range's data may already be buffered: send `ready` now, not
    // after the range (a client may wait for it before its `end`).
    session.flush().await?;
    let received = receive(session, ctx, writer, req.length).await?;
    let r =
        settle(received, claim, "put_join").and_then(|()| match upload.state().failed.clone() {
            Some(why) => Err((
                ErrorMsg::new(
                    ErrorCode::Internal,
                    format!("put_join: the upload failed: {why}"),
                ),
                false,
            )),
            None => Ok(()),
        });
    match r {
        Ok(()) => {
            session.queue(&OkReply {}, &[])?;
            Ok(Ok(()))
        }
        Err((m, drain)) => {
            session.queue(&m, &[])?;
            if drain {
                put::drain(session, ctx).await?;
            }
            Ok(Err(m))
        }
    }
}
