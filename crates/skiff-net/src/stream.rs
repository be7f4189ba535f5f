//! The byte stream a handler talks over, with an optional idle timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{Instant, Sleep};

/// A connected stream socket: TCP or Unix.
///
/// If the server has an idle timeout, a read or write that has waited that
/// long without progress fails with `ErrorKind::TimedOut`. The clock of a
/// direction starts when it begins to wait (time the handler spends working
/// between reads does not count against the peer), and progress in either
/// direction restarts both: a long download keeps a waiting reader alive.
#[derive(Debug)]
pub struct Stream {
    inner: Inner,
    idle: Option<Idle>,
}

#[derive(Debug)]
enum Inner {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The idle clocks, one per direction, so that a reader and a writer
/// waiting at the same time (a split stream) each get their own wake-up.
#[derive(Debug)]
struct Idle {
    timeout: Duration,
    read: Clock,
    write: Clock,
}

#[derive(Debug)]
struct Clock {
    /// Whether the deadline below belongs to the current wait.
    armed: bool,
    sleep: Pin<Box<Sleep>>,
}

impl Clock {
    fn new() -> Self {
        Clock {
            armed: false,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

impl Idle {
    fn new(timeout: Duration) -> Self {
        Idle {
            timeout,
            read: Clock::new(),
            write: Clock::new(),
        }
    }
}

impl Stream {
    pub(crate) fn tcp(s: TcpStream, idle: Option<Duration>) -> Self {
        Self::new(Inner::Tcp(s), idle)
    }

    pub(crate) fn unix(s: UnixStream, idle: Option<Duration>) -> Self {
        Self::new(Inner::Unix(s), idle)
    }

    fn new(inner: Inner, idle: Option<Duration>) -> Self {
        Stream {
            inner,
            idle: idle.map(Idle::new),
        }
    }

    /// Changes the idle timeout (`None`: wait forever). A handler may lift
    /// it once a peer has authenticated, or tighten it before.
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.idle = timeout.map(Idle::new);
    }

    /// Ends a connection after a last reply without losing that reply:
    /// closes the sending direction (the peer reads the reply, then EOF),
    /// then discards what the peer still sends, at most 1 MiB, until it
    /// closes too. Closing a socket with unread input makes the kernel send
    /// a reset, which can destroy the reply in the peer's receive buffer
    /// before it is read. Bounded in bytes here; the caller bounds it in
    /// time (the idle timeout, or the deadline `reject_busy` runs under).
    pub async fn close_gracefully(&mut self) -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const DISCARD_LIMIT: usize = 1 << 20;
        self.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = DISCARD_LIMIT;
        while left > 0 {
            match self.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok(())
    }

    /// The TCP stream, if this is one (for socket options).
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match &self.inner {
            Inner::Tcp(s) => Some(s),
            Inner::Unix(_) => None,
        }
    }

    /// The Unix stream, if this is one (e.g. for peer credentials).
    pub fn as_unix(&self) -> Option<&UnixStream> {
        match &self.inner {
            Inner::Unix(s) => Some(s),
            Inner::Tcp(_) => None,
        }
    }

    /// Turns a `Pending` into a timeout error when this direction has waited
    /// too long; progress disarms both clocks.
    fn track<T>(
        &mut self,
        dir: Direction,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(idle) = self.idle.as_mut() else {
            return poll;
        };
        match poll {
            Poll::Ready(r) => {
                idle.read.armed = false;
                idle.write.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let clock = match dir {
                    Direction::Read => &mut idle.read,
                    Direction::Write => &mut idle.write,
                };
                if !clock.armed {
                    clock.armed = true;
                    clock.sleep.as_mut().reset(Instant::now() + idle.timeout);
                }
                match clock.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        clock.armed = false;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("peer idle for {:?}", idle.timeout),
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

use std::future::Future;

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = match &mut this.inner {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_read(cx, buf),
        };
        this.track(Direction::Read, cx, poll)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = match &mut this.inner {
            Inner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_write(cx, buf),
        };
        this.track(Direction::Write, cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = match &mut this.inner {
            Inner::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        };
        this.track(Direction::Write, cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_flush(cx),
            Inner::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
