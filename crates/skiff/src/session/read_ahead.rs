//! A read buffer under TLS, so that a bulk receiver makes a few large
//! socket reads instead of one small one per TLS record.
//!
//! rustls asks its transport for at most 4 KiB more than it holds, and
//! never for more than one record (about 16 KiB), so a 1 GiB download
//! over TLS took some 65,000 `recvfrom` calls. [`ReadAhead`] answers those
//! small requests from a buffer it fills with reads of [`CAPACITY`].
//!
//! The buffer only comes into being once a connection has carried
//! [`AFTER`] bytes, well past any TLS and skiff handshake: connections
//! that never authenticate (or only exchange small requests) hold no
//! read-ahead memory at all.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes per socket read once the buffer is in use.
pub const CAPACITY: usize = 256 * 1024;

/// Bytes a connection reads unbuffered before the buffer is allocated.
pub const AFTER: u64 = 1 << 20;

/// A stream whose reads are buffered once it has read [`AFTER`] bytes;
/// writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Empty until [`AFTER`] bytes were read.
    buf: Vec<u8>,
    /// The unconsumed bytes are `buf[pos..filled]`.
    pos: usize,
    filled: usize,
    /// Bytes read from `inner` so far (counted up to [`AFTER`]).
    seen: u64,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`; nothing is allocated yet.
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buf: Vec::new(),
            pos: 0,
            filled: 0,
            seen: 0,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.filled {
            if this.buf.is_empty() && this.seen < AFTER {
                let before = out.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                this.seen += (out.filled().len() - before) as u64;
                return Poll::Ready(Ok(()));
            }
            if out.remaining() >= CAPACITY {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = vec![0; CAPACITY];
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.filled = rb.filled().len();
            this.pos = 0;
        }
        let n = out.remaining().min(this.filled - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every byte comes out once and in order, through small reads (as
    /// rustls makes them) before and after the buffer is switched on.
    #[tokio::test]
    async fn small_reads_see_every_byte_in_order() {
        let len = AFTER as usize + 3 * CAPACITY + 12_345;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4093) as u8).collect();
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            b.write_all(&sent).await.expect("write");
            b.shutdown().await.expect("shutdown");
        });
        let mut r = ReadAhead::new(a);
        let mut got = Vec::with_capacity(len);
        let mut piece = vec![0u8; 4096 + 7];
        loop {
            let n = r.read(&mut piece).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        writer.await.expect("writer");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ");
        assert_eq!(r.buf.len(), CAPACITY, "the buffer was switched on");
    }

    /// A connection that reads little never allocates the buffer.
    #[tokio::test]
    async fn a_short_connection_allocates_nothing() {
        let (a, mut b) = tokio::io::duplex(1024);
        b.write_all(b"hello").await.expect("write");
        drop(b);
        let mut r = ReadAhead::new(a);
        let mut s = Vec::new();
        r.read_to_end(&mut s).await.expect("read");
        assert_eq!(s, b"hello");
        assert_eq!(r.buf.capacity(), 0);
    }
}
