//! What a server does with a connection or a datagram.

use std::future::Future;
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::{Datagram, DatagramSocket, ListenAddr, PeerAddr, Stream};

/// One accepted stream connection, handed to a [`StreamHandler`]: the
/// counterpart of socketserver's `self.request` and `self.client_address`.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    peer: PeerAddr,
    local: ListenAddr,
    shutdown: CancellationToken,
}

impl Connection {
    pub(crate) fn new(
        stream: Stream,
        peer: PeerAddr,
        local: ListenAddr,
        shutdown: CancellationToken,
    ) -> Self {
        Connection {
            stream,
            peer,
            local,
            shutdown,
        }
    }

    /// The connected socket.
    pub fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Who connected.
    pub fn peer(&self) -> &PeerAddr {
        &self.peer
    }

    /// The listener this connection arrived on (with its real port).
    pub fn local(&self) -> &ListenAddr {
        &self.local
    }

    /// Resolves when the server starts shutting down: a long-running handler
    /// should finish its current request and return.
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await
    }

    /// Whether the server is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

/// Serves stream connections, one task per connection.
///
/// Like socketserver's `BaseRequestHandler`: [`setup`](Self::setup), then
/// [`handle`](Self::handle), then [`finish`](Self::finish) (always called,
/// even when `handle` failed). An error from `handle` is logged at debug
/// level; a panic is logged as an error and only ends that connection.
pub trait StreamHandler: Send + Sync + 'static {
    /// Runs before `handle`; an error skips `handle`.
    fn setup(&self, conn: &mut Connection) -> impl Future<Output = io::Result<()>> + Send {
        let _ = conn;
        async { Ok(()) }
    }

    /// Serves the connection until the peer is done.
    fn handle(&self, conn: &mut Connection) -> impl Future<Output = io::Result<()>> + Send;

    /// Runs after `handle` (or a failed `setup`), with its result.
    fn finish(
        &self,
        conn: &mut Connection,
        result: &io::Result<()>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (conn, result);
        async {}
    }

    /// Answers a connection that arrived while the server was full. The
    /// default sends a skiff `{"op":"error","code":"busy"}` frame and closes
    /// the sending direction at once, so the client reads `busy` then EOF;
    /// it then discards what the client had already sent until the client
    /// closes (closing with unread input would make the kernel reset the
    /// connection, and the client could lose the `busy` frame). The server
    /// runs it under a short deadline.
    fn reject_busy(&self, mut conn: Connection) -> impl Future<Output = ()> + Send {
        async move {
            let mut frame = bytes::BytesMut::new();
            let msg = skiff_wire::ErrorMsg::new(
                skiff_wire::ErrorCode::Busy,
                "server is at its connection limit; try again later",
            );
            if skiff_wire::encode_frame(&msg, &[], &mut frame).is_ok() {
                let _ = conn.stream().write_all(&frame).await;
            }
            let _ = conn.stream().shutdown().await;
            let mut sink = [0u8; 4096];
            // Bounded in bytes here and in time by the server's deadline.
            let mut left: usize = 1 << 20;
            while left > 0 {
                match conn.stream().read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        }
    }
}

/// Serves datagrams on one socket, one datagram at a time (no task or
/// allocation per sender, so a flood of junk costs only CPU).
pub trait DatagramHandler: Send + Sync + 'static {
    /// Handles one received datagram; reply with `socket.send_to`.
    fn handle(
        &self,
        datagram: Datagram<'_>,
        socket: &DatagramSocket,
    ) -> impl Future<Output = ()> + Send;
}
