//! The server: listeners, the connection limit, and graceful shutdown.

use std::any::Any;
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::datagram::bind_unix_datagram;
use crate::listener::{bind_tcp, bind_udp, bind_unix};
use crate::startup::{Dropped, Source, Startup, StartupLimits, Startups};
use crate::{
    Connection, DatagramHandler, DatagramSocket, ListenAddr, ListenerId, PeerAddr, Stream,
    StreamHandler,
};

/// How many over-the-limit connections may be in the middle of
/// [`StreamHandler::reject_busy`] at once; beyond that they are simply
/// closed.
const MAX_REJECTING: usize = 64;
/// How long [`StreamHandler::reject_busy`] may take for one connection.
const REJECT_DEADLINE: Duration = Duration::from_secs(2);

type ConnFn = Arc<dyn Fn(Connection) -> BoxFuture<'static, ()> + Send + Sync>;
type DatagramLoop =
    Box<dyn FnOnce(DatagramSocket, CancellationToken, usize) -> BoxFuture<'static, ()> + Send>;

struct StreamEntry {
    id: ListenerId,
    addr: ListenAddr,
    serve: ConnFn,
    reject: ConnFn,
}

struct DatagramEntry {
    id: ListenerId,
    addr: ListenAddr,
    serve: DatagramLoop,
}

#[derive(Debug, Clone)]
struct Config {
    max_connections: usize,
    idle_timeout: Option<Duration>,
    grace_period: Duration,
    handle_signals: bool,
    backlog: i32,
    datagram_buffer: usize,
    startups: Option<StartupLimits>,
}

/// Collects listeners and settings; [`bind`](Self::bind) opens the sockets.
pub struct ServerBuilder {
    config: Config,
    streams: Vec<StreamEntry>,
    datagrams: Vec<DatagramEntry>,
    next_id: usize,
    shutdown: CancellationToken,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            config: Config {
                max_connections: 1024,
                idle_timeout: None,
                grace_period: Duration::from_secs(10),
                handle_signals: false,
                backlog: 1024,
                datagram_buffer: 65536,
                startups: None,
            },
            streams: Vec::new(),
            datagrams: Vec::new(),
            next_id: 0,
            shutdown: CancellationToken::new(),
        }
    }
}

impl ServerBuilder {
    /// Most stream connections served at once (default 1024). One more is
    /// handed to [`StreamHandler::reject_busy`], which by default closes it
    /// at once.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n.max(1);
        self
    }

    /// Caps connections that have not been established yet (see
    /// [`StartupLimits`]): with it, a connection counts as a startup from
    /// accept until its handler calls [`Startup::establish`], and only
    /// established connections count against
    /// [`max_connections`](Self::max_connections). Default: off (every
    /// connection counts against `max_connections` from accept on).
    pub fn max_startups(mut self, limits: StartupLimits) -> Self {
        self.config.startups = Some(limits);
        self
    }

    /// Closes a connection that makes no progress for this long (default:
    /// never). Handlers can change it per connection with
    /// [`Stream::set_idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// How long running handlers get to finish after shutdown starts before
    /// their connections are closed (default 10 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.config.grace_period = grace;
        self
    }

    /// Starts a graceful shutdown on SIGINT or SIGTERM (default: off, so a
    /// library user keeps control of signals).
    pub fn shutdown_on_signals(mut self, yes: bool) -> Self {
        self.config.handle_signals = yes;
        self
    }

    /// Size of the datagram receive buffer (default 64 KiB); larger
    /// datagrams are reported as truncated.
    pub fn datagram_buffer(mut self, bytes: usize) -> Self {
        self.config.datagram_buffer = bytes.max(1);
        self
    }

    fn new_id(&mut self) -> ListenerId {
        let id = ListenerId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Serves a stream address (`tcp://` or `unix://`) with `handler`.
    /// Chains; use [`add_stream`](Self::add_stream) to keep the listener's
    /// id.
    pub fn stream<H: StreamHandler>(mut self, addr: ListenAddr, handler: H) -> Self {
        self.add_stream(addr, Arc::new(handler));
        self
    }

    /// Serves a stream address with a handler that may be shared with other
    /// listeners; the id names this listener from now on.
    pub fn add_stream<H: StreamHandler>(
        &mut self,
        addr: ListenAddr,
        handler: Arc<H>,
    ) -> ListenerId {
        let id = self.new_id();
        let h = handler.clone();
        let serve: ConnFn = Arc::new(move |mut conn: Connection| {
            let h = h.clone();
            async move {
                let result = match h.setup(&mut conn).await {
                    Ok(()) => h.handle(&mut conn).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = &result {
                    tracing::debug!(peer = %conn.peer(), error = %e, "connection ended with an error");
                }
                h.finish(&mut conn, &result).await;
            }
            .boxed()
        });
        let reject: ConnFn = Arc::new(move |conn: Connection| {
            let h = handler.clone();
            async move { h.reject_busy(conn).await }.boxed()
        });
        self.streams.push(StreamEntry {
            id,
            addr,
            serve,
            reject,
        });
        id
    }

    /// Serves a datagram address (`udp://` or `unixgram://`) with `handler`.
    /// Chains; use [`add_datagram`](Self::add_datagram) to keep the
    /// listener's id.
    pub fn datagram<H: DatagramHandler>(mut self, addr: ListenAddr, handler: H) -> Self {
        self.add_datagram(addr, Arc::new(handler));
        self
    }

    /// Serves a datagram address with a handler that may be shared with
    /// other listeners; the id names this listener from now on.
    pub fn add_datagram<H: DatagramHandler>(
        &mut self,
        addr: ListenAddr,
        handler: Arc<H>,
    ) -> ListenerId {
        let id = self.new_id();
        let serve: DatagramLoop = Box::new(move |socket, stop, bufsize| {
            datagram_loop(handler, socket, stop, bufsize).boxed()
        });
        self.datagrams.push(DatagramEntry { id, addr, serve });
        id
    }

    /// Binds every listener. Fails (binding nothing) if any address is
    /// unusable, saying which.
    pub async fn bind(self) -> io::Result<Server> {
        let mut socket_files = Vec::new();
        let result = self.bind_all(&mut socket_files);
        if result.is_err() {
            // Leave no socket file behind for the listeners that did bind.
            for path in &socket_files {
                let _ = std::fs::remove_file(path);
            }
        }
        result
    }

    fn bind_all(self, socket_files: &mut Vec<PathBuf>) -> io::Result<Server> {
        let mut bound_streams = Vec::new();
        let mut bound_datagrams = Vec::new();
        let mut local_addrs = Vec::new();
        let context = |addr: &ListenAddr, e: io::Error| {
            io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
        };
        for entry in self.streams {
            let (listener, local) = match &entry.addr {
                ListenAddr::Tcp(a) => {
                    let l =
                        bind_tcp(*a, self.config.backlog).map_err(|e| context(&entry.addr, e))?;
                    let local = ListenAddr::Tcp(l.local_addr()?);
                    (AnyListener::Tcp(l), local)
                }
                ListenAddr::Unix(p) => {
                    let l = bind_unix(p).map_err(|e| context(&entry.addr, e))?;
                    socket_files.push(p.clone());
                    (AnyListener::Unix(l), entry.addr.clone())
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{other} is a datagram address; register it with .datagram()"),
                    ))
                }
            };
            local_addrs.push((entry.id, local.clone()));
            bound_streams.push(BoundStream {
                id: entry.id,
                listener,
                local,
                serve: entry.serve,
                reject: entry.reject,
            });
        }
        for entry in self.datagrams {
            let socket = match &entry.addr {
                ListenAddr::Udp(a) => {
                    DatagramSocket::Udp(bind_udp(*a).map_err(|e| context(&entry.addr, e))?)
                }
                ListenAddr::UnixDatagram(p) => {
                    let s = bind_unix_datagram(p).map_err(|e| context(&entry.addr, e))?;
                    socket_files.push(p.clone());
                    DatagramSocket::Unix(s)
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{other} is a stream address; register it with .stream()"),
                    ))
                }
            };
            let local = match &socket {
                DatagramSocket::Udp(s) => ListenAddr::Udp(s.local_addr()?),
                DatagramSocket::Unix(_) => entry.addr.clone(),
            };
            local_addrs.push((entry.id, local));
            bound_datagrams.push((socket, entry.serve));
        }
        local_addrs.sort_by_key(|(id, _)| *id);
        Ok(Server {
            config: self.config,
            streams: bound_streams,
            datagrams: bound_datagrams,
            local_addrs,
            socket_files: std::mem::take(socket_files),
            shutdown: self.shutdown,
        })
    }
}

enum AnyListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl AnyListener {
    async fn accept(&self, idle: Option<Duration>) -> io::Result<(Stream, PeerAddr)> {
        match self {
            AnyListener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Small request/response frames must not wait for Nagle.
                let _ = s.set_nodelay(true);
                Ok((Stream::tcp(s, idle), PeerAddr::Ip(peer)))
            }
            AnyListener::Unix(l) => {
                let (s, peer) = l.accept().await?;
                let path = peer.as_pathname().map(PathBuf::from);
                Ok((Stream::unix(s, idle), PeerAddr::Unix(path)))
            }
        }
    }
}

struct BoundStream {
    id: ListenerId,
    listener: AnyListener,
    local: ListenAddr,
    serve: ConnFn,
    reject: ConnFn,
}

/// A bound server, ready to [`run`](Self::run).
pub struct Server {
    config: Config,
    streams: Vec<BoundStream>,
    datagrams: Vec<(DatagramSocket, DatagramLoop)>,
    /// In the order the listeners were added (ids ascending).
    local_addrs: Vec<(ListenerId, ListenAddr)>,
    socket_files: Vec<PathBuf>,
    shutdown: CancellationToken,
}

/// Starts a graceful shutdown of the server it came from; cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Stops accepting, lets running handlers finish within the grace
    /// period, then closes everything and makes `run` return.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl Server {
    /// A builder with default settings and no listeners.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The bound address of a listener, with the real port where port 0
    /// was asked for; `None` for an id from another server.
    pub fn local_addr(&self, id: ListenerId) -> Option<&ListenAddr> {
        self.local_addrs
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, addr)| addr)
    }

    /// Every listener with its bound address, in the order they were added.
    pub fn listeners(&self) -> impl Iterator<Item = (ListenerId, &ListenAddr)> {
        self.local_addrs.iter().map(|(id, addr)| (*id, addr))
    }

    /// A handle that shuts the server down from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Serves until shutdown (a [`ShutdownHandle`], or a signal when
    /// enabled), then drains: no new connections, running handlers get the
    /// grace period, the rest are closed. Unix socket files are removed.
    /// Fails only if signal handling was asked for and cannot be set up.
    pub async fn run(self) -> io::Result<()> {
        let Server {
            config,
            streams,
            datagrams,
            socket_files,
            shutdown,
            ..
        } = self;
        let hard_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let startups = config.startups.map(Startups::new);
        let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));

        // Signal handlers are installed here, before any client can be
        // served, so a signal that arrives once we serve is never lost to
        // the default action (which would kill the process).
        let signals = if config.handle_signals {
            Some(watch_signals(shutdown.clone())?)
        } else {
            None
        };

        let mut accept_loops = tokio::task::JoinSet::new();
        for BoundStream {
            id,
            listener,
            local,
            serve,
            reject,
        } in streams
        {
            let ctx = AcceptContext {
                id,
                local,
                serve,
                reject,
                limit: limit.clone(),
                startups: startups.clone(),
                drops: Arc::new(DropLog::default()),
                rejecting: rejecting.clone(),
                tracker: tracker.clone(),
                shutdown: shutdown.clone(),
                hard_stop: hard_stop.clone(),
                idle: config.idle_timeout,
            };
            accept_loops.spawn(accept_loop(listener, ctx));
        }
        for (socket, serve) in datagrams {
            // A datagram handler still running at shutdown gets the same
            // grace period as a connection.
            let serving = serve(socket, shutdown.clone(), config.datagram_buffer);
            let hard_stop = hard_stop.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = serving => {}
                    _ = hard_stop.cancelled() => {}
                }
            });
        }

        shutdown.cancelled().await;
        if let Some(signals) = signals {
            signals.abort();
        }
        // Listeners close as their loops end.
        while accept_loops.join_next().await.is_some() {}
        for path in &socket_files {
            let _ = std::fs::remove_file(path);
        }
        drain(&tracker, config.grace_period, &hard_stop).await;
        Ok(())
    }
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; installs the
/// handlers before it returns.
fn watch_signals(shutdown: CancellationToken) -> io::Result<tokio::task::JoinHandle<()>> {
    let signal = shutdown_signal()?;
    Ok(tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down: finishing running requests");
        shutdown.cancel();
    }))
}

/// Gives the running handlers `grace` to finish, then closes the rest.
async fn drain(tracker: &TaskTracker, grace: Duration, hard_stop: &CancellationToken) {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            remaining = tracker.len(),
            "grace period over: closing remaining connections"
        );
        hard_stop.cancel();
        tracker.wait().await;
    }
}

struct AcceptContext {
    id: ListenerId,
    local: ListenAddr,
    serve: ConnFn,
    reject: ConnFn,
    limit: Arc<Semaphore>,
    startups: Option<Arc<Startups>>,
    drops: Arc<DropLog>,
    rejecting: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    idle: Option<Duration>,
}

async fn accept_loop(listener: AnyListener, ctx: AcceptContext) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept(ctx.idle) => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %ctx.local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = Connection::new(
            stream,
            peer.clone(),
            ctx.local.clone(),
            ctx.id,
            ctx.shutdown.clone(),
        );
        let admitted = match &ctx.startups {
            // Established connections are counted apart: a full server
            // says so at once, a flood of handshakes cannot take the slots.
            Some(startups) if ctx.limit.available_permits() > 0 => {
                let source = source_of(&conn);
                match startups.admit(source) {
                    Ok(slot) => Ok(Startup::new(Some(slot), None, ctx.limit.clone())),
                    Err(why) => {
                        ctx.drops.note(source, why);
                        continue; // dropping `conn` closes it at once
                    }
                }
            }
            Some(_) => Err(()),
            None => match ctx.limit.clone().try_acquire_owned() {
                Ok(permit) => Ok(Startup::new(None, Some(permit), ctx.limit.clone())),
                Err(_) => Err(()),
            },
        };
        match admitted {
            Ok(startup) => {
                let conn = conn.with_startup(startup);
                let serve = ctx.serve.clone();
                let hard_stop = ctx.hard_stop.clone();
                ctx.tracker.spawn(async move {
                    let run = AssertUnwindSafe(serve(conn)).catch_unwind();
                    tokio::select! {
                        r = run => if let Err(panic) = r {
                            tracing::error!(%peer, panic = panic_message(&panic), "connection handler panicked");
                        },
                        _ = hard_stop.cancelled() => {}
                    }
                });
            }
            Err(_) => {
                tracing::debug!(%peer, "connection limit reached: rejecting");
                let Ok(permit) = ctx.rejecting.clone().try_acquire_owned() else {
                    continue; // dropping `conn` closes it at once
                };
                let reject = ctx.reject.clone();
                let shutdown = ctx.shutdown.clone();
                ctx.tracker.spawn(async move {
                    let _permit = permit;
                    // A refusal still in progress at shutdown is dropped
                    // (closing it) rather than holding the exit up.
                    tokio::select! {
                        _ = tokio::time::timeout(
                            REJECT_DEADLINE,
                            AssertUnwindSafe(reject(conn)).catch_unwind(),
                        ) => {}
                        _ = shutdown.cancelled() => {}
                    }
                });
            }
        }
    }
}

async fn datagram_loop<H: DatagramHandler>(
    handler: Arc<H>,
    socket: DatagramSocket,
    stop: CancellationToken,
    bufsize: usize,
) {
    let mut buf = vec![0u8; bufsize];
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok(datagram) => {
                let peer = datagram.peer.clone();
                if let Err(panic) = AssertUnwindSafe(handler.handle(datagram, &socket))
                    .catch_unwind()
                    .await
                {
                    tracing::error!(%peer, panic = panic_message(&panic), "datagram handler panicked");
                }
            }
            // ICMP errors from earlier sends surface here on UDP; keep serving.
            Err(e) => tracing::debug!(error = %e, "datagram receive failed"),
        }
    }
}

/// Who a connection counts against: its IP source, or for a Unix socket
/// the peer's user id.
fn source_of(conn: &Connection) -> Source {
    match conn.peer() {
        PeerAddr::Ip(a) => Source::of_ip(a.ip()),
        PeerAddr::Unix(_) => match conn.stream_ref().as_unix().map(|u| u.peer_cred()) {
            Some(Ok(cred)) => Source::Uid(cred.uid()),
            _ => Source::Unknown,
        },
    }
}

/// Dropped connections, logged at most once per 10 s per reason (a flood
/// must not become a flood of log lines).
#[derive(Default)]
struct DropLog {
    last: std::sync::Mutex<Option<(tokio::time::Instant, u64)>>,
}

impl DropLog {
    fn note(&self, source: Source, why: Dropped) {
        tracing::debug!(%source, ?why, "startup limit: connection dropped");
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        match &mut *last {
            Some((at, n)) if now.duration_since(*at) < Duration::from_secs(10) => *n += 1,
            _ => {
                let earlier = last.map_or(0, |(_, n)| n);
                let what = match why {
                    Dropped::PerSource => "too many connections from it still in the handshake",
                    Dropped::Total => "too many connections still in the handshake",
                };
                tracing::warn!(%source, dropped_since_last_report = earlier, "connection dropped: {what}");
                *last = Some((now, 0));
            }
        }
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Installs SIGINT and SIGTERM handlers now; the future resolves at the
/// first of either.
fn shutdown_signal() -> io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
