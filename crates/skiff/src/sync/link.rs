//! The session pump of a sync role: one loop reads frames, turns them into
//! the role's typed messages and hands them over; another writes the
//! frames the role produces. The two run concurrently so that neither
//! direction ever waits for the other (a side busy writing file data still
//! reads the peer's answers).
//!
//! Bounds: outgoing frames wait in a bounded channel (backpressure on the
//! producer), incoming messages in another (backpressure on the peer,
//! through TCP). A role drains its inbox whenever it waits for an answer
//! and after every step, so an honest peer never fills it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use skiff_wire::message::Phase;
use skiff_wire::{Frame, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{peer_timeout, SyncError};
use crate::session::{SessionError, SessionReader, SessionWriter, WRITE_STALL_TIMEOUT};

/// Frame bytes each way, for `--stats`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Written to the session.
    pub sent: AtomicU64,
    /// Read from the session.
    pub received: AtomicU64,
}

fn wire_len(f: &Frame) -> u64 {
    (4 + f.header().len() + f.body().len()) as u64
}

/// The producing end of the outgoing channel.
#[derive(Clone)]
pub struct Outbox(mpsc::Sender<Vec<Frame>>);

impl Outbox {
    /// Sends from async code.
    pub async fn send<M: Message>(&self, msg: &M, body: Bytes) -> Result<(), SyncError> {
        let f = frame(msg, body)?;
        self.0.send(vec![f]).await.map_err(|_| closed())
    }

    /// Sends from a blocking thread.
    pub fn send_blocking<M: Message>(&self, msg: &M, body: Bytes) -> Result<(), SyncError> {
        let f = frame(msg, body)?;
        self.0.blocking_send(vec![f]).map_err(|_| closed())
    }

    /// Sends several frames in one hand-over, from a blocking thread: a
    /// small file's frames wake the writer once and leave in one flush.
    pub fn send_all_blocking(&self, frames: Vec<Frame>) -> Result<(), SyncError> {
        if frames.is_empty() {
            return Ok(());
        }
        self.0.blocking_send(frames).map_err(|_| closed())
    }
}

/// `msg` and `body` as one frame (for [`Outbox::send_all_blocking`]).
pub fn frame<M: Message>(msg: &M, body: Bytes) -> Result<Frame, SyncError> {
    Frame::from_message(msg, body).map_err(|e| SyncError::Session(SessionError::Frame(e)))
}

fn closed() -> SyncError {
    SyncError::Session(SessionError::Closed)
}

/// A new outgoing channel of `cap` frames.
fn outbox(cap: usize) -> (Outbox, mpsc::Receiver<Vec<Frame>>) {
    let (tx, rx) = mpsc::channel(cap);
    (Outbox(tx), rx)
}

/// The consuming end of the incoming channel, for async or blocking code;
/// every wait is bounded by [`peer_timeout`] (ten minutes).
pub struct Inbox<P> {
    rx: mpsc::Receiver<P>,
    /// For waiting from a blocking thread.
    handle: tokio::runtime::Handle,
}

impl<P> Inbox<P> {
    /// The next message, within the timeout.
    pub async fn recv(&mut self) -> Result<P, SyncError> {
        let limit = peer_timeout();
        match tokio::time::timeout(limit, self.rx.recv()).await {
            Err(_) => Err(SessionError::Timeout(limit).into()),
            Ok(None) => Err(closed()),
            Ok(Some(m)) => Ok(m),
        }
    }

    /// [`recv`](Self::recv) from a blocking thread.
    pub fn recv_blocking(&mut self) -> Result<P, SyncError> {
        let handle = self.handle.clone();
        handle.block_on(self.recv())
    }

    /// A message that has already arrived, if any.
    pub fn try_recv(&mut self) -> Option<P> {
        self.rx.try_recv().ok()
    }

    /// Whether no message is waiting (the peer is slower than the role).
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// A new incoming channel of `cap` messages; call from the runtime.
fn inbox<P>(cap: usize) -> (mpsc::Sender<P>, Inbox<P>) {
    let (tx, rx) = mpsc::channel(cap);
    (
        tx,
        Inbox {
            rx,
            handle: tokio::runtime::Handle::current(),
        },
    )
}

/// Runs the pump until the role has dropped every [`Outbox`] and the
/// reading side has passed the role's last incoming message (`is_last`)
/// or the role has ended (`role_done`). Frames after that stay unread in
/// the session, so a server goes on with the next request.
async fn pump<P: Phase + Send>(
    reader: &mut SessionReader<'_>,
    writer: &mut SessionWriter<'_>,
    mut out: mpsc::Receiver<Vec<Frame>>,
    inbox: mpsc::Sender<P>,
    is_last: fn(&P) -> bool,
    counters: Arc<Counters>,
    role_done: CancellationToken,
) -> Result<(), SyncError> {
    let c = counters.clone();
    let write = async move {
        while let Some(frames) = out.recv().await {
            for f in &frames {
                c.sent.fetch_add(wire_len(f), Ordering::Relaxed);
                writer.write_frame(f).await?;
            }
            if out.is_empty() {
                match tokio::time::timeout(WRITE_STALL_TIMEOUT, writer.flush()).await {
                    Ok(r) => r?,
                    Err(_) => return Err(SessionError::Timeout(WRITE_STALL_TIMEOUT)),
                }
            }
        }
        match tokio::time::timeout(WRITE_STALL_TIMEOUT, writer.flush()).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Timeout(WRITE_STALL_TIMEOUT)),
        }
    };
    let read = async move {
        loop {
            let f = tokio::select! {
                biased;
                _ = role_done.cancelled() => return Ok(()),
                f = reader.recv() => f?,
            };
            let Some(f) = f else {
                return Err(SessionError::Closed);
            };
            counters.received.fetch_add(wire_len(&f), Ordering::Relaxed);
            let msg = P::from_frame(f)?;
            let last = is_last(&msg);
            let delivered = tokio::select! {
                biased;
                _ = role_done.cancelled() => false,
                r = inbox.send(msg) => r.is_ok(),
            };
            if !delivered || last {
                return Ok(());
            }
        }
    };
    let (w, r) = tokio::join!(write, read);
    w?;
    r?;
    Ok(())
}

/// Runs one role beside its pump: `role` gets the inbox (of `inbox_cap`
/// messages, the last of which `is_last` recognises) and the outbox (16
/// frames); when it ends the pump stops reading. The combined outcome
/// is returned, and a failure is told to the peer.
pub async fn run_role<P, T, F>(
    reader: &mut SessionReader<'_>,
    writer: &mut SessionWriter<'_>,
    inbox_cap: usize,
    is_last: fn(&P) -> bool,
    counters: Arc<Counters>,
    role: impl FnOnce(Inbox<P>, Outbox) -> F,
) -> Result<T, SyncError>
where
    P: Phase + Send,
    F: std::future::Future<Output = Result<T, SyncError>>,
{
    let (out, out_rx) = outbox(16);
    let (in_tx, inbox) = inbox(inbox_cap);
    let cancel = CancellationToken::new();
    let done = cancel.clone();
    let role = role(inbox, out);
    let role = async move {
        let r = role.await;
        done.cancel();
        r
    };
    let pump = pump(reader, writer, out_rx, in_tx, is_last, counters, cancel);
    let (p, r) = tokio::join!(pump, role);
    let r = outcome(p, r);
    if let Err(e) = &r {
        tell_peer(writer, e).await;
    }
    r
}

/// The outcome of a role and its pump as one result. A protocol or
/// connection failure the pump saw explains more than the role's
/// "closed"; otherwise the role's own error does.
fn outcome<T>(pump: Result<(), SyncError>, role: Result<T, SyncError>) -> Result<T, SyncError> {
    match (pump, role) {
        (Ok(()), r) => r,
        (Err(p), Ok(_)) => Err(p),
        (Err(p), Err(r)) => {
            let role_closed = matches!(r, SyncError::Session(SessionError::Closed));
            if role_closed {
                Err(p)
            } else {
                Err(r)
            }
        }
    }
}

/// Tells the peer the sync is over because of `e` (best effort, bounded).
async fn tell_peer(writer: &mut SessionWriter<'_>, e: &SyncError) {
    if matches!(
        e,
        SyncError::Session(SessionError::Closed | SessionError::Io(_) | SessionError::Remote(_))
    ) {
        return;
    }
    let m = e.to_msg();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer.send(&m, &[])).await;
}
