//! Authenticated, framed sessions: TLS (or not), then the mutual HMAC
//! handshake, then frames both ways.
//!
//! [`Session`] owns the read and write buffers of one connection (as
//! mini-redis's `Connection` does); [`accept`] is the server's side of the
//! handshake (the client's is `client::handshake`, the proofs of both are
//! in `auth::handshake`), `penalty` what repeated failures cost a
//! source, [`tls`] the certificates.

pub mod accept;
pub(crate) mod penalty;
pub mod read_ahead;
pub mod tls;
#[cfg(test)]
mod write_tests;

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skiff_wire::message::Phase;
use skiff_wire::{
    CodecError, ErrorCode, ErrorMsg, Frame, FrameCodec, FrameError, Limits, Message, MessageError,
    WriteQueue,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio_util::codec::FramedRead;

/// A byte stream a session can run over: TLS, TCP or Unix.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// How much written data may wait in the buffer before
/// [`SessionWriter::write`] flushes it: large enough to batch many small
/// frames into one TLS record burst, small enough to keep memory bounded.
pub const WRITE_HIGH_WATER: usize = 256 * 1024;

/// The read buffer a session starts with: room for one header (or a
/// 64 KiB read burst once bodies are allowed).
fn read_capacity(limits: Limits) -> usize {
    if limits.max_body == 0 {
        limits.max_header + 4
    } else {
        64 * 1024
    }
}

/// How long a flush may wait for a peer that does not read before the
/// session gives up on it, unless [`Session::set_write_timeout`] says
/// otherwise (the server's `write-timeout`).
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a session could not go on.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The peer broke the frame rules.
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    /// The peer sent a valid frame that is not a message of this phase
    /// (an unknown op, or a known one with bad fields).
    #[error("protocol error: {0}")]
    Message(#[from] MessageError),
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer answered with an error frame.
    #[error("{}: {}", .0.code, .0.message)]
    Remote(ErrorMsg),
    /// The peer sent a valid frame we did not expect here.
    #[error("protocol error: expected {expected:?}, got {got:?}")]
    Unexpected {
        /// What we waited for.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// The peer took too long.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The session sat idle between requests past the server's limit.
    #[error("idle for {0:?}")]
    IdleTimeout(Duration),
    /// The peer stopped sending in the middle of a request (an upload's
    /// data) for longer than the server's idle limit.
    #[error("nothing received for {0:?} in the middle of a request")]
    Stalled(Duration),
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<CodecError> for SessionError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Frame(e) => SessionError::Frame(e),
            CodecError::Io(e) => SessionError::Io(e),
        }
    }
}

impl SessionError {
    /// The error code to send the peer for this failure, if any.
    pub fn code(&self) -> ErrorCode {
        match self {
            SessionError::Frame(e) => e.code(),
            SessionError::Message(e) => e.code(),
            SessionError::Timeout(_) | SessionError::IdleTimeout(_) | SessionError::Stalled(_) => {
                ErrorCode::Timeout
            }
            SessionError::ShuttingDown => ErrorCode::ShuttingDown,
            SessionError::Unexpected { .. } => ErrorCode::BadFrame,
            SessionError::Remote(m) => m.code,
            SessionError::Io(_) | SessionError::Closed => ErrorCode::Internal,
        }
    }
}

/// The receiving half of a session.
pub struct SessionReader<'a> {
    inner: FramedRead<ReadHalf<Box<dyn Io + 'a>>, FrameCodec>,
}

/// How many slices one vectored write hands the stream: a few frames'
/// headers and bodies (a data chunk is one slice).
const WRITE_SLICES: usize = 64;

/// The sending half of a session.
pub struct SessionWriter<'a> {
    io: WriteHalf<Box<dyn Io + 'a>>,
    /// Frames not yet written: headers and small frames in one buffer,
    /// large bodies by handle (sent from the caller's chunk, not copied).
    queue: WriteQueue,
    /// Every flush (and close) gives up after this long without finishing.
    timeout: Duration,
}

/// One framed connection: frames in, frames out.
pub struct Session<'a> {
    reader: SessionReader<'a>,
    writer: SessionWriter<'a>,
}

impl<'a> Session<'a> {
    /// Wraps a connected (and, for TLS, already encrypted) stream.
    pub fn new(io: Box<dyn Io + 'a>) -> Session<'a> {
        Self::with_read_limits(io, Limits::default())
    }

    /// Wraps a stream whose peer has not authenticated yet: frames are read
    /// under [`Limits::HANDSHAKE`] (small header, no body) into a small
    /// buffer, until [`set_read_limits`](Self::set_read_limits) widens them.
    pub fn unauthenticated(io: Box<dyn Io + 'a>) -> Session<'a> {
        Self::with_read_limits(io, Limits::HANDSHAKE)
    }

    fn with_read_limits(io: Box<dyn Io + 'a>, limits: Limits) -> Session<'a> {
        let (r, w) = tokio::io::split(io);
        let capacity = read_capacity(limits);
        let reader = FramedRead::with_capacity(r, FrameCodec::with_limits(limits), capacity);
        Session {
            reader: SessionReader { inner: reader },
            writer: SessionWriter {
                io: w,
                queue: WriteQueue::new(),
                timeout: WRITE_STALL_TIMEOUT,
            },
        }
    }

    /// Changes the limits on the frames still to be read (after `welcome`,
    /// the server widens them to the protocol maxima) and grows the read
    /// buffer to match.
    pub fn set_read_limits(&mut self, limits: Limits) {
        let inner = &mut self.reader.inner;
        inner.decoder_mut().set_limits(limits);
        let capacity = read_capacity(limits);
        inner.read_buffer_mut().reserve(capacity);
    }

    /// How long any write may wait for a peer that does not read; past it
    /// the write fails with [`SessionError::Timeout`] (and the session
    /// ends).
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.writer.timeout = timeout;
    }

    /// Both halves, to read and write concurrently (e.g. stdin in, stdout out).
    pub fn split(&mut self) -> (&mut SessionReader<'a>, &mut SessionWriter<'a>) {
        (&mut self.reader, &mut self.writer)
    }

    /// See [`SessionReader::recv`].
    pub async fn recv(&mut self) -> Result<Option<Frame>, SessionError> {
        self.reader.recv().await
    }

    /// See [`SessionReader::recv_required`].
    pub async fn recv_required(&mut self) -> Result<Frame, SessionError> {
        self.reader.recv_required().await
    }

    /// See [`SessionReader::expect`].
    pub async fn expect<M: Message>(&mut self) -> Result<(M, Frame), SessionError> {
        self.reader.expect::<M>().await
    }

    /// See [`SessionReader::recv_msg`].
    pub async fn recv_msg<P: Phase>(&mut self) -> Result<P, SessionError> {
        self.reader.recv_msg::<P>().await
    }

    /// See [`SessionReader::has_buffered_input`].
    pub fn has_buffered_input(&self) -> bool {
        self.reader.has_buffered_input()
    }

    /// See [`SessionWriter::queue`].
    pub fn queue<M: Message>(&mut self, msg: &M, body: &[u8]) -> Result<(), SessionError> {
        self.writer.queue(msg, body)
    }

    /// See [`SessionWriter::send`].
    pub async fn send<M: Message>(&mut self, msg: &M, body: &[u8]) -> Result<(), SessionError> {
        self.writer.send(msg, body).await
    }

    /// See [`SessionWriter::send_error`].
    pub async fn send_error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Result<(), SessionError> {
        self.writer.send_error(code, message).await
    }

    /// See [`SessionWriter::write`].
    pub async fn write<M: Message>(&mut self, msg: &M, body: &[u8]) -> Result<(), SessionError> {
        self.writer.write(msg, body).await
    }

    /// See [`SessionWriter::write_shared`].
    pub async fn write_shared<M: Message>(
        &mut self,
        msg: &M,
        body: Bytes,
    ) -> Result<(), SessionError> {
        self.writer.write_shared(msg, body).await
    }

    /// Ends one answer: sends what is buffered, unless the peer has already
    /// pipelined further requests and the buffer is below its high-water
    /// mark (then their answers go out together, in one burst).
    pub async fn answered(&mut self) -> Result<(), SessionError> {
        if self.reader.has_buffered_input() && self.writer.has_room() {
            return Ok(());
        }
        self.writer.flush().await
    }

    /// See [`SessionWriter::flush`].
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        self.writer.flush().await
    }

    /// See [`SessionWriter::buffered`].
    pub fn buffered(&self) -> usize {
        self.writer.buffered()
    }

    /// Flushes and closes the sending direction (TLS close_notify).
    pub async fn close(&mut self) -> Result<(), SessionError> {
        self.writer.close().await
    }
}

impl SessionReader<'_> {
    /// The next frame; `None` when the peer closed cleanly between frames.
    pub async fn recv(&mut self) -> Result<Option<Frame>, SessionError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Ok(f)) => Ok(Some(f)),
            Some(Err(e)) => Err(e.into()),
        }
    }

    /// The next frame; a close is an error here.
    pub async fn recv_required(&mut self) -> Result<Frame, SessionError> {
        self.recv().await?.ok_or(SessionError::Closed)
    }

    /// The next frame as a message of phase `P`; a close is an error here.
    pub async fn recv_msg<P: Phase>(&mut self) -> Result<P, SessionError> {
        Ok(P::from_frame(self.recv_required().await?)?)
    }

    /// The next frame, which must be an `M`; an `error` frame becomes
    /// [`SessionError::Remote`].
    pub async fn expect<M: Message>(&mut self) -> Result<(M, Frame), SessionError> {
        let frame = self.recv_required().await?;
        if frame.is::<M>() {
            return Ok((frame.parse::<M>()?, frame));
        }
        if frame.is::<ErrorMsg>() {
            return Err(SessionError::Remote(frame.parse::<ErrorMsg>()?));
        }
        Err(SessionError::Unexpected {
            expected: M::OP,
            got: frame.op().to_string(),
        })
    }

    /// Whether bytes of a further frame have already arrived: a server uses
    /// this to delay flushing while a client pipelines requests.
    pub fn has_buffered_input(&self) -> bool {
        !self.inner.read_buffer().is_empty()
    }
}

impl SessionWriter<'_> {
    /// Appends a frame to the write buffer without sending it yet.
    pub fn queue<M: Message>(&mut self, msg: &M, body: &[u8]) -> Result<(), SessionError> {
        self.queue.push(msg, body)?;
        Ok(())
    }

    /// [`queue`](Self::queue) for a body already in a shared buffer: a
    /// large one is sent from that buffer itself (see
    /// [`write_shared`](Self::write_shared)), for loops that flush on
    /// their own schedule.
    pub fn queue_shared<M: Message>(&mut self, msg: &M, body: Bytes) -> Result<(), SessionError> {
        self.queue.push_shared(msg, body)?;
        Ok(())
    }

    /// Queues a frame, and sends the buffer once it is past
    /// [`WRITE_HIGH_WATER`] (waiting at most the write timeout for a peer
    /// that does not read). The one way streams of chunks are written.
    pub async fn write<M: Message>(&mut self, msg: &M, body: &[u8]) -> Result<(), SessionError> {
        self.queue(msg, body)?;
        self.flush_if_full().await
    }

    /// [`write`](Self::write) for a body already in a shared buffer (a
    /// file's data chunk): a large body is written to the stream from that
    /// buffer itself, never copied into the session's, and released once
    /// written. The bytes on the wire are the same.
    pub async fn write_shared<M: Message>(
        &mut self,
        msg: &M,
        body: Bytes,
    ) -> Result<(), SessionError> {
        self.queue.push_shared(msg, body)?;
        self.flush_if_full().await
    }

    /// [`write`](Self::write) for a frame already built (on another
    /// thread, with [`Frame::from_message`]); its body is shared as in
    /// [`write_shared`](Self::write_shared).
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), SessionError> {
        self.queue.push_raw(frame.header(), frame.body())?;
        self.flush_if_full().await
    }

    async fn flush_if_full(&mut self) -> Result<(), SessionError> {
        if self.has_room() {
            return Ok(());
        }
        self.flush().await
    }

    /// Whether the buffer is below [`WRITE_HIGH_WATER`]: loops that produce
    /// output concurrently with flushing read more only while it is.
    pub fn has_room(&self) -> bool {
        self.buffered() < WRITE_HIGH_WATER
    }

    /// Queues a frame and sends everything buffered.
    pub async fn send<M: Message>(&mut self, msg: &M, body: &[u8]) -> Result<(), SessionError> {
        self.queue(msg, body)?;
        self.flush().await
    }

    /// Sends `{"op":"error","code":C,"message":M}`.
    pub async fn send_error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Result<(), SessionError> {
        self.send(&ErrorMsg::new(code, message), &[]).await
    }

    /// Sends everything buffered, within the write timeout (a peer that
    /// stops reading cannot hold a writer forever). Cancel-safe: what was
    /// written is gone from the queue, the rest stays queued.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        let timeout = self.timeout;
        stall_bounded(timeout, |cx| self.poll_flush(cx)).await
    }

    /// Writes the queue out (vectored where the stream can: each header
    /// from the buffer, each large body from its own chunk), then flushes
    /// the stream (TLS: the records still held by rustls).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.queue.is_empty() {
            let io = Pin::new(&mut self.io);
            let written = if io.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let n = self.queue.io_slices(&mut slices);
                ready!(io.poll_write_vectored(cx, &slices[..n]))?
            } else {
                ready!(io.poll_write(cx, self.queue.first_chunk()))?
            };
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.queue.advance(written);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Bytes queued but not yet sent.
    pub fn buffered(&self) -> usize {
        self.queue.len()
    }

    /// Flushes and shuts down the sending direction (TLS close_notify),
    /// within the write timeout.
    pub async fn close(&mut self) -> Result<(), SessionError> {
        let timeout = self.timeout;
        stall_bounded(timeout, |cx| {
            ready!(self.poll_flush(cx))?;
            Pin::new(&mut self.io).poll_shutdown(cx)
        })
        .await
    }
}

/// Drives `poll` to completion within `timeout` of its first wait. The
/// timer is only created once the write has to wait for the peer: most
/// flushes go straight into the socket buffer, and a timer registered and
/// removed again on each of them cost a visible share of a small request.
async fn stall_bounded(
    timeout: Duration,
    mut poll: impl FnMut(&mut Context<'_>) -> Poll<std::io::Result<()>>,
) -> Result<(), SessionError> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = poll(cx) {
            return Poll::Ready(r.map_err(SessionError::from));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(SessionError::Timeout(timeout))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
