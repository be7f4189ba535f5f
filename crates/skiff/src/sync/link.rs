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

/// Frames held back by [`Outbox::cork_blocking`] until this many bytes
/// are waiting: a tree of small files then leaves the sender a few dozen
/// files per hand-over and per flush, not one.
pub const CORK_BYTES: u64 = 64 * 1024;

/// The producing end of the outgoing channel. Clones share the frames
/// held back ([`cork_blocking`](Self::cork_blocking)), and every other
/// send hands them over first, so frames leave in the order they were
/// given, whichever clone gave them.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Vec<Frame>>,
    corked: Arc<std::sync::Mutex<Corked>>,
}

/// Frames held back, and their wire bytes.
#[derive(Default)]
struct Corked {
    frames: Vec<Frame>,
    bytes: u64,
}

impl Outbox {
    /// The frames held back, followed by `more`.
    fn with_corked(&self, more: impl IntoIterator<Item = Frame>) -> Vec<Frame> {
        let mut c = self.corked.lock().unwrap_or_else(|p| p.into_inner());
        c.bytes = 0;
        let mut v = std::mem::take(&mut c.frames);
        v.extend(more);
        v
    }

    /// Sends from async code.
    pub async fn send<M: Message>(&self, msg: &M, body: Bytes) -> Result<(), SyncError> {
        let f = frame(msg, body)?;
        let v = self.with_corked([f]);
        self.tx.send(v).await.map_err(|_| closed())
    }

    /// Sends from a blocking thread.
    pub fn send_blocking<M: Message>(&self, msg: &M, body: Bytes) -> Result<(), SyncError> {
        let f = frame(msg, body)?;
        self.send_all_blocking(vec![f])
    }

    /// Sends several frames in one hand-over, from a blocking thread.
    pub fn send_all_blocking(&self, frames: Vec<Frame>) -> Result<(), SyncError> {
        let v = self.with_corked(frames);
        if v.is_empty() {
            return Ok(());
        }
        self.tx.blocking_send(v).map_err(|_| closed())
    }

    /// Holds `frames` back with the others until [`CORK_BYTES`] are
    /// waiting, then hands them all over at once, from a blocking thread:
    /// a small file's frames cost no wake-up and no flush of their own.
    /// Whoever then waits for the peer calls
    /// [`flush_blocking`](Self::flush_blocking) first.
    pub fn cork_blocking(&self, frames: Vec<Frame>) -> Result<(), SyncError> {
        let full = {
            let mut c = self.corked.lock().unwrap_or_else(|p| p.into_inner());
            c.bytes += frames.iter().map(wire_len).sum::<u64>();
            c.frames.extend(frames);
            c.bytes >= CORK_BYTES
        };
        if full {
            self.flush_blocking()?;
        }
        Ok(())
    }

    /// Hands over the frames held back, if any, from a blocking thread.
    pub fn flush_blocking(&self) -> Result<(), SyncError> {
        self.send_all_blocking(Vec::new())
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
    let corked = Arc::default();
    (Outbox { tx, corked }, rx)
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

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_wire::message::sync::{SyncEnd, SyncMore};

    fn end() -> Frame {
        frame(
            &SyncEnd {
                hash: String::new(),
                abort: true,
            },
            Bytes::new(),
        )
        .unwrap()
    }

    #[test]
    fn corked_frames_leave_first_and_in_order_whichever_clone_sends() {
        let (out, mut rx) = outbox(16);
        let other = out.clone();
        out.cork_blocking(vec![end(), end()]).unwrap();
        assert!(rx.try_recv().is_err(), "held back");
        other.send_blocking(&SyncMore {}, Bytes::new()).unwrap();
        let got = rx.try_recv().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].header(), end().header());
        assert_eq!(
            got[2].header(),
            frame(&SyncMore {}, Bytes::new()).unwrap().header()
        );
        // Nothing is held back any more; a flush then sends nothing.
        out.flush_blocking().unwrap();
        assert!(rx.try_recv().is_err());
        // Enough bytes go at once.
        let big = Bytes::from(vec![0u8; CORK_BYTES as usize]);
        let f = frame(&skiff_wire::message::sync::SyncData { raw: None }, big).unwrap();
        out.cork_blocking(vec![f]).unwrap();
        assert_eq!(rx.try_recv().unwrap().len(), 1);
    }
}
