//! What a server does with a connection or a datagram.

use std::future::Future;
use std::io;

use tokio_util::sync::CancellationToken;

use crate::startup::Startup;
use crate::{Datagram, DatagramSocket, ListenAddr, ListenerId, PeerAddr, Stream};

/// One accepted stream connection, handed to a [`StreamHandler`]: the
/// counterpart of socketserver's `self.request` and `self.client_address`.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    peer: PeerAddr,
    local: ListenAddr,
    listener: ListenerId,
    shutdown: CancellationToken,
    startup: Option<Startup>,
}

impl Connection {
    pub(crate) fn new(
        stream: Stream,
        peer: PeerAddr,
        local: ListenAddr,
        listener: ListenerId,
        shutdown: CancellationToken,
    ) -> Self {
        Connection {
            stream,
            peer,
            local,
            listener,
            shutdown,
            startup: None,
        }
    }

    pub(crate) fn with_startup(mut self, startup: Startup) -> Self {
        self.startup = Some(startup);
        self
    }

    /// This connection's place in the server's limits. A handler of a
    /// protocol with a login takes it before the handshake and calls
    /// [`Startup::establish`] once the peer has authenticated: until then
    /// the connection counts against the startup limits
    /// ([`ServerBuilder::max_startups`](crate::ServerBuilder::max_startups)),
    /// afterwards against `max_connections`. `None` on a second call.
    /// A handler that never takes it keeps its slot until the end.
    pub fn take_startup(&mut self) -> Option<Startup> {
        self.startup.take()
    }

    /// A token cancelled when the server starts shutting down, for a
    /// handler that has lent out the stream and so cannot call
    /// [`shutdown_requested`](Self::shutdown_requested) any more.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The connected socket.
    pub fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    pub(crate) fn stream_ref(&self) -> &Stream {
        &self.stream
    }

    /// Who connected.
    pub fn peer(&self) -> &PeerAddr {
        &self.peer
    }

    /// The listener this connection arrived on (with its real port).
    pub fn local(&self) -> &ListenAddr {
        &self.local
    }

    /// Which listener accepted this connection, as returned by
    /// [`ServerBuilder::add_stream`](crate::ServerBuilder::add_stream): a
    /// handler shared by several listeners tells them apart by it (say,
    /// TLS on one and plain text on another).
    pub fn listener(&self) -> ListenerId {
        self.listener
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
    /// default says nothing: dropping `conn` closes it at once. A protocol
    /// that can say "busy" overrides this to write its own refusal, then
    /// usually [`Stream::close_gracefully`] so the client gets to read it.
    /// The server runs it under a short deadline (2 s), and at most 64 at
    /// once; beyond that, connections are closed without calling it.
    fn reject_busy(&self, conn: Connection) -> impl Future<Output = ()> + Send {
        drop(conn);
        async {}
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
