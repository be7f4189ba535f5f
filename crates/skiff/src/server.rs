//! `skiff serve`: assembles listeners, TLS, authentication and services on
//! top of skiff-net.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use skiff_net::{
    Connection, Established, ListenAddr, Server, Startup, StartupLimits, StreamHandler,
};
use skiff_wire::message::handshake::Welcome;
use skiff_wire::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, Destination, Event};
use crate::auth::handshake::{Block, NO_BINDING};
use crate::policy::env::{AcceptEnv, BaseEnv};
use crate::serve_config::{ConfigSource, ServeFile};
use crate::service::udp_ping::UdpPingService;
use crate::service::{self, ServiceContext};
use crate::session::accept::{AuthPolicy, Authenticator, LoggedIn};
use crate::session::penalty::Recorded;
use crate::session::read_ahead::ReadAhead;
use crate::session::tls::{self, ServerIdentity};
use crate::session::{Io, Session, SessionError};
use crate::transfer::staging::StagingArea;
use crate::users::live::LiveUsers;

/// Prints a startup line on stdout. Unlike `println!` it ignores a closed
/// stdout (`skiff serve | head -3`), which must not bring the server down.
pub(crate) fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Prints a start-up warning beside the start-up lines and in the log, so
/// that it is seen whether the server runs in a terminal or under a
/// service manager.
fn warn_start(line: std::fmt::Arguments<'_>) {
    tracing::warn!("{line}");
    announce(format_args!("warning: {line}"));
}

/// One `--listen` URL: the address and whether TLS runs on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// The socket address.
    pub addr: ListenAddr,
    /// TLS on this listener (`tcp://`).
    pub tls: bool,
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // A bare HOST:PORT (or [V6]:PORT) is what people type: TLS on TCP.
        let (scheme, rest) = s.split_once("://").unwrap_or(("tcp", s));
        if rest.is_empty() {
            return Err(format!(
                "{s:?} names no address (e.g. tcp://127.0.0.1:7878)"
            ));
        }
        let parse = |url: String| url.parse::<ListenAddr>().map_err(|e| e.to_string());
        let sock = |rest: &str| {
            crate::target::split_host_port(rest, crate::target::DEFAULT_PORT).map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
        };
        match scheme {
            "tcp" => Ok(Listen {
                addr: parse(format!("tcp://{}", sock(rest)?))?,
                tls: true,
            }),
            "tcp+plain" => {
                let addr = parse(format!("tcp://{}", sock(rest)?))?;
                if let ListenAddr::Tcp(a) = &addr {
                    if !a.ip().is_loopback() {
                        return Err(format!(
                            "refusing to serve unencrypted tcp+plain on {a}: it is not a loopback address; use tcp:// (TLS) for remote clients"
                        ));
                    }
                }
                Ok(Listen { addr, tls: false })
            }
            "unix" => Ok(Listen {
                addr: parse(s.to_string())?,
                tls: false,
            }),
            "udp" => Ok(Listen {
                addr: parse(format!("udp://{}", sock(rest)?))?,
                tls: false,
            }),
            other => Err(format!(
                "unknown scheme {other:?} in {s:?} (use tcp, tcp+plain, unix or udp)"
            )),
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&Listen::url(&self.addr, self.tls))
    }
}

impl Listen {
    /// The URL users connect to, with the real port.
    pub fn url(addr: &ListenAddr, tls: bool) -> String {
        match addr {
            ListenAddr::Tcp(a) if !tls => format!("tcp+plain://{a}"),
            other => other.to_string(),
        }
    }
}

/// Everything `skiff serve` needs, resolved from flags, file and defaults.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Listeners.
    pub listen: Vec<Listen>,
    /// Root directory of file operations and working directory of exec.
    pub root: PathBuf,
    /// Users and their keys.
    pub users_file: PathBuf,
    /// Certificate and other server state.
    pub state_dir: PathBuf,
    /// Refuse `exec`.
    pub no_exec: bool,
    /// Connection limit.
    pub max_connections: usize,
    /// Deadline for TLS + handshake.
    pub handshake_timeout: Duration,
    /// Failure delay and penalties.
    pub auth: AuthPolicy,
    /// Caps on connections still in the handshake.
    pub startups: StartupLimits,
    /// An authenticated session idle this long between requests is closed.
    pub idle_timeout: Option<Duration>,
    /// How long a write may wait for a peer that does not read.
    pub write_timeout: Duration,
    /// Partial uploads untouched for longer are removed.
    pub partial_max_age: Duration,
    /// Where audit events go, if anywhere.
    pub audit: Option<Destination>,
    /// `accept-env` patterns for restricted users.
    pub accept_env: Vec<String>,
    /// The configuration these settings came from (what
    /// `--print-config` shows), to tell on reload what changed.
    pub effective: ServeFile,
    /// How to read the configuration again (SIGHUP).
    pub source: ConfigSource,
}

/// What a session needs that a reload may change.
struct LiveSettings {
    accept_env: Arc<AcceptEnv>,
}

/// The stream listeners' handler: one per listener (they differ in TLS).
#[derive(Clone)]
struct SessionHandler {
    tls: Option<(tokio_rustls::TlsAcceptor, Block)>,
    auth: Arc<Authenticator>,
    root: PathBuf,
    exec_enabled: bool,
    handshake_timeout: Duration,
    idle_timeout: Option<Duration>,
    write_timeout: Duration,
    staging: Arc<StagingArea>,
    joins: Arc<crate::service::files::streams::Joins>,
    audit: Audit,
    live: Arc<RwLock<LiveSettings>>,
    base_env: Arc<BaseEnv>,
}

impl SessionHandler {
    /// A failed handshake: one log line and one audit event; it counts
    /// towards its source's penalty, and when it starts one, that is
    /// logged (once per penalty) too.
    fn refused(&self, peer: &Peer, user: Option<&str>, reason: &str) {
        let name = &peer.name;
        tracing::info!(
            peer = name,
            user = user.unwrap_or("-"),
            "login refused: {reason}"
        );
        let user = user.map(String::from);
        let recorded = self.auth.record_failure(peer.ip);
        self.audit.record(Event::AuthFailed {
            user: user.clone(),
            peer: name.clone(),
            reason: reason.to_string(),
        });
        if let Recorded::PenaltyBegins { delay, failures } = recorded {
            let why = format!(
                "{failures} recent failed logins: new connections from this source wait {} ms",
                delay.as_millis()
            );
            tracing::warn!(peer = name, "penalty: {why}");
            self.audit.record(Event::Penalty {
                user,
                peer: name.clone(),
                reason: why,
            });
        }
    }

    /// A source that keeps failing waits before it costs anything (TLS,
    /// HMACs); bounded, so a right key from there still gets in. False
    /// when the server shut down meanwhile.
    async fn wait_out_penalty(&self, peer: &Peer, shutdown: &CancellationToken) -> bool {
        let penalty = self.auth.penalty(peer.ip);
        if penalty.is_zero() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(penalty) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

/// Who is on the other end of a connection, as the penalties (`ip`) and
/// the logs (`name`) know it.
struct Peer {
    ip: Option<IpAddr>,
    name: String,
}

/// One connection on its way from accepted to served: one method per
/// step, each of which may end it (`None`: already logged and, where the
/// peer can still hear it, told).
struct Arrival<'h> {
    handler: &'h SessionHandler,
    peer: Peer,
    /// Shutdown reaches every wait from here on: a connection still in
    /// its handshake is dropped (told so when TLS is up), an idle session
    /// is closed with `shutting_down`.
    shutdown: CancellationToken,
    /// TLS and the handshake together end by this instant.
    deadline: tokio::time::Instant,
}

impl<'h> Arrival<'h> {
    /// TLS where this listener has it (the binding its proofs cover),
    /// else the plain stream.
    async fn secure<'c>(
        &self,
        stream: &'c mut skiff_net::Stream,
    ) -> Option<(Box<dyn Io + 'c>, Block)> {
        let Some((acceptor, cb)) = &self.handler.tls else {
            return Some((Box::new(stream), NO_BINDING));
        };
        // Large socket reads under TLS once data flows (`read_ahead`).
        let accept = acceptor.accept(ReadAhead::new(stream));
        let accepted = tokio::select! {
            r = tokio::time::timeout_at(self.deadline, accept) => r,
            _ = self.shutdown.cancelled() => return None,
        };
        let reason = match accepted {
            Ok(Ok(tls)) => return Some((Box::new(tls), *cb)),
            Ok(Err(e)) => tls_failure(&e),
            Err(_) => "TLS handshake timed out".to_string(),
        };
        self.handler.refused(&self.peer, None, &reason);
        None
    }

    /// The handshake, within the deadline and until shutdown.
    async fn log_in(&self, session: &mut Session<'_>, cb: &Block) -> Option<LoggedIn> {
        let handshake = tokio::time::timeout_at(
            self.deadline,
            self.handler.auth.handshake(session, cb, self.peer.ip),
        );
        let outcome = tokio::select! {
            r = handshake => Some(r),
            _ = self.shutdown.cancelled() => None,
        };
        match outcome {
            Some(Ok(Ok(login))) => Some(login),
            None => {
                let _ = tokio::time::timeout(GOODBYE, async {
                    let _ = session
                        .send_error(ErrorCode::ShuttingDown, "the server is shutting down")
                        .await;
                    let _ = session.close().await;
                })
                .await;
                None
            }
            Some(Ok(Err(f))) => {
                self.handler
                    .refused(&self.peer, f.user.as_deref(), &f.reason);
                // Bounded: a peer that stops reading cannot hold us here.
                let _ = tokio::time::timeout(GOODBYE, session.close()).await;
                None
            }
            Some(Err(_)) => {
                say_goodbye(session, ErrorCode::Timeout, "handshake timed out").await;
                self.handler
                    .refused(&self.peer, None, "authentication timed out");
                None
            }
        }
    }

    /// A logged-in user becomes a session: it leaves the startup caps for
    /// the connection limit, and its root must exist.
    async fn admit(
        &self,
        startup: Option<Startup>,
        login: &LoggedIn,
        session: &mut Session<'_>,
    ) -> Option<(Option<Established>, PathBuf)> {
        let (peer, user) = (&self.peer.name, &login.user);
        let established = match startup.map(Startup::establish).transpose() {
            Ok(established) => established,
            Err(busy) => {
                tracing::info!(%peer, %user, "session refused: {busy}");
                say_goodbye(session, ErrorCode::Busy, BUSY).await;
                return None;
            }
        };
        match login.policy.resolve_root(&self.handler.root) {
            Ok(root) => Some((established, root)),
            Err(refusal) => {
                tracing::warn!(%peer, %user, "session refused: {refusal}");
                say_goodbye(session, ErrorCode::Permission, refusal.to_string()).await;
                None
            }
        }
    }

    /// What the services of this session see.
    fn context(
        &self,
        login: &LoggedIn,
        root: PathBuf,
        client: Option<SocketAddr>,
    ) -> ServiceContext {
        let h = self.handler;
        let accept_env = h
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .accept_env
            .clone();
        ServiceContext {
            root,
            exec_enabled: h.exec_enabled,
            user: login.user.clone(),
            policy: login.policy.clone(),
            client,
            peer: self.peer.name.clone(),
            audit: h.audit.clone(),
            base_env: h.base_env.clone(),
            accept_env,
            staging: h.staging.clone(),
            joins: h.joins.clone(),
            idle_timeout: h.idle_timeout,
            shutdown: self.shutdown.clone(),
        }
    }

    /// Serves the session's requests until it ends, between its start and
    /// end lines in the logs.
    async fn serve(&self, mut session: Session<'_>, ctx: ServiceContext) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let (peer, user) = (ctx.peer.clone(), ctx.user.clone());
        tracing::info!(%peer, %user, "session start");
        self.handler.audit.record(Event::AuthOk {
            user: user.clone(),
            peer: peer.clone(),
        });
        session.set_read_limits(skiff_wire::Limits::default());
        session.set_write_timeout(self.handler.write_timeout);
        let (result, reason) = match service::serve(&mut session, &ctx).await {
            Ok(()) => {
                let _ = session.close().await;
                (Ok(()), "closed".to_string())
            }
            Err(SessionError::Io(e)) => {
                let reason = format!("connection error: {e}");
                (Err(e), reason)
            }
            Err(e) => (Ok(()), e.to_string()),
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(%peer, %user, duration_ms, "session end: {reason}");
        self.handler.audit.record(Event::SessionEnd {
            user,
            peer,
            duration_ms,
            reason,
        });
        result
    }
}

/// How long a last word to a peer may take: one that stops reading cannot
/// hold the connection open.
const GOODBYE: Duration = Duration::from_secs(1);

/// What a client over the connection limit is told.
const BUSY: &str = "server is at its connection limit; try again later";

/// Sends a last error, bounded by [`GOODBYE`].
async fn say_goodbye(session: &mut Session<'_>, code: ErrorCode, message: impl Into<String>) {
    let _ = tokio::time::timeout(GOODBYE, session.send_error(code, message)).await;
}

impl StreamHandler for SessionHandler {
    /// `busy` must reach a TLS client inside TLS, or it reads as a broken
    /// handshake instead of "try again later".
    async fn reject_busy(&self, mut conn: Connection) {
        let io: Box<dyn Io + '_> = match &self.tls {
            Some((acceptor, _)) => {
                // skiff-net bounds the whole rejection with a short deadline.
                match acceptor.accept(conn.stream()).await {
                    Ok(tls) => Box::new(tls),
                    Err(_) => return,
                }
            }
            None => Box::new(conn.stream()),
        };
        let mut session = Session::new(io);
        let _ = session.send_error(ErrorCode::Busy, BUSY).await;
        let _ = session.close().await;
    }

    async fn handle(&self, conn: &mut Connection) -> std::io::Result<()> {
        let peer = Peer {
            ip: conn.peer().ip(),
            name: conn.peer().to_string(),
        };
        let client = match conn.peer() {
            skiff_net::PeerAddr::Ip(a) => Some(*a),
            skiff_net::PeerAddr::Unix(_) => None,
        };
        // Counted as a startup until it has logged in (skiff-net's caps
        // per source and in total), then as a session.
        let startup = conn.take_startup();
        let shutdown = conn.shutdown_token();
        if !self.wait_out_penalty(&peer, &shutdown).await {
            return Ok(());
        }
        let arrival = Arrival {
            handler: self,
            peer,
            shutdown,
            deadline: tokio::time::Instant::now() + self.handshake_timeout,
        };
        let Some((io, cb)) = arrival.secure(conn.stream()).await else {
            return Ok(());
        };
        let mut session = Session::unauthenticated(io);
        let Some(login) = arrival.log_in(&mut session, &cb).await else {
            return Ok(());
        };
        let Some((_established, root)) = arrival.admit(startup, &login, &mut session).await else {
            return Ok(());
        };
        let ctx = arrival.context(&login, root, client);
        arrival.serve(session, ctx).await
    }
}

/// Opens the staging area (`STATE_DIR/partial`), removes partial uploads
/// older than the limit, and says what it found.
fn open_staging(cfg: &ServeConfig, root: &std::path::Path) -> anyhow::Result<StagingArea> {
    let path = cfg.state_dir.join("partial");
    let staging = StagingArea::open(&path)
        .with_context(|| format!("opening the staging directory {}", path.display()))?;
    let report = staging
        .sweep(crate::transfer::fault::now(), cfg.partial_max_age)
        .with_context(|| format!("reading the staging directory {}", path.display()))?;
    announce(format_args!(
        "partial uploads in {}: {} kept ({} bytes), {} expired and removed ({} bytes; limit {} days)",
        path.display(),
        report.kept,
        report.kept_bytes,
        report.removed,
        report.removed_bytes,
        cfg.partial_max_age.as_secs_f64() / 86_400.0
    ));
    let root_dev = std::fs::metadata(root).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.dev()
    });
    if let (Ok(a), Ok(b)) = (root_dev, staging.device()) {
        if a != b {
            announce(format_args!(
                "note: {} is on another file system than the root; each upload is copied once more when it is committed (put --state-dir on the root's file system to avoid it)",
                path.display()
            ));
        }
    }
    Ok(staging)
}

/// Expires partial uploads once an hour while the server runs.
async fn sweep_periodically(staging: Arc<StagingArea>, max_age: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = staging.clone();
        let r =
            tokio::task::spawn_blocking(move || s.sweep(crate::transfer::fault::now(), max_age))
                .await;
        match r {
            Ok(Ok(r)) if r.removed > 0 => {
                tracing::info!(
                    removed = r.removed,
                    bytes = r.removed_bytes,
                    "expired partial uploads removed"
                )
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping the staging directory failed"),
            _ => {}
        }
    }
}

/// Says in words why a TLS handshake failed, for the log.
fn tls_failure(e: &std::io::Error) -> String {
    use rustls::AlertDescription as A;
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateUnknown)) => {
            "the client does not trust this server's certificate (not pinned, or the fingerprint changed)".into()
        }
        Some(rustls::Error::AlertReceived(alert)) => format!("the client aborted TLS: {alert:?}"),
        Some(rustls::Error::InvalidMessage(_)) => {
            "not a TLS client: it sent something else (plain skiff on a tcp:// port, or another protocol)".into()
        }
        Some(rustls::Error::PeerIncompatible(why)) => {
            format!("the client's TLS is incompatible (skiff needs TLS 1.3): {why:?}")
        }
        Some(other) => format!("TLS handshake failed: {other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the client closed the connection during the TLS handshake".into()
        }
        None => format!("TLS handshake failed: {e}"),
    }
}

/// Binds every listener, prints how to connect, and serves until
/// SIGINT/SIGTERM. SIGHUP re-reads the users file and the configuration
/// and reopens the audit log; it never stops the server.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    // First, so that a SIGHUP at any moment from here on reloads instead
    // of killing us.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let root = open_root(&cfg)?;
    let users = open_users(&cfg)?;
    let audit = match &cfg.audit {
        Some(dest) => Audit::open(dest.clone())?,
        None => Audit::disabled(),
    };
    let accept_env = AcceptEnv::new(&cfg.accept_env).map_err(anyhow::Error::msg)?;
    let live = Arc::new(RwLock::new(LiveSettings {
        accept_env: Arc::new(accept_env),
    }));
    let welcome = Welcome {
        server: format!("skiff {}", env!("CARGO_PKG_VERSION")),
        services: ServiceContext::services(!cfg.no_exec),
    };
    let staging = Arc::new(open_staging(&cfg, &root)?);
    let tls = match cfg.listen.iter().any(|l| l.tls) {
        true => Some(open_identity(&cfg.state_dir)?),
        false => None,
    };
    let sessions = SessionHandler {
        tls: None,
        auth: Arc::new(Authenticator::new(users.clone(), cfg.auth.clone(), welcome)),
        root: root.clone(),
        exec_enabled: !cfg.no_exec,
        handshake_timeout: cfg.handshake_timeout,
        idle_timeout: cfg.idle_timeout,
        write_timeout: cfg.write_timeout,
        staging: staging.clone(),
        joins: Arc::default(),
        audit: audit.clone(),
        live: live.clone(),
        base_env: Arc::new(BaseEnv::from_server()),
    };
    let udp_ping = Arc::new(UdpPingService::new(users.clone()));
    let mut builder = Server::builder()
        .max_connections(cfg.max_connections)
        .max_startups(cfg.startups)
        .shutdown_on_signals(true);
    let listeners: Vec<_> = cfg
        .listen
        .iter()
        .map(|l| {
            let id = match l.addr.is_datagram() {
                true => builder.add_datagram(l.addr.clone(), udp_ping.clone()),
                false => builder.add_stream(
                    l.addr.clone(),
                    Arc::new(SessionHandler {
                        tls: tls.as_ref().filter(|_| l.tls).map(|t| t.tls.clone()),
                        ..sessions.clone()
                    }),
                ),
            };
            (id, l.tls && !l.addr.is_datagram())
        })
        .collect();
    let server = builder.bind().await?;
    tokio::spawn(sweep_periodically(staging, cfg.partial_max_age));
    let urls: Vec<String> = listeners
        .into_iter()
        .filter_map(|(id, tls)| server.local_addr(id).map(|addr| Listen::url(addr, tls)))
        .collect();
    for url in &urls {
        announce(format_args!("listening on {url}"));
    }
    announce(format_args!("serving {}", root.display()));
    let fingerprint = tls.as_ref().map(|t| t.fingerprint.as_str());
    announce_how_to_connect(&urls, &users, fingerprint, cfg.audit.as_ref());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::spawn(on_hangups(hangups, cfg, users, audit, live));
    server.run().await?;
    Ok(())
}

/// The root, resolved once: every path a client names is checked against
/// this.
fn open_root(cfg: &ServeConfig) -> anyhow::Result<PathBuf> {
    if !cfg.root.is_dir() {
        bail!("root {} is not a directory", cfg.root.display());
    }
    cfg.root
        .canonicalize()
        .with_context(|| format!("resolving root {}", cfg.root.display()))
}

/// The users file, refused when it lists nobody (a server nobody can log
/// in to is a mistake, not a configuration).
fn open_users(cfg: &ServeConfig) -> anyhow::Result<LiveUsers> {
    let users = LiveUsers::open(&cfg.users_file)?;
    service::files::ignore_file_size_signal();
    if users.snapshot().is_empty() {
        bail!(
            "{} lists no users; add one with `skiff keygen --user NAME`",
            cfg.users_file.display()
        );
    }
    Ok(users)
}

/// The server's TLS identity as the listeners and the start-up lines use
/// it.
struct Identity {
    /// The acceptor, and the channel binding its handshake proofs cover.
    tls: (tokio_rustls::TlsAcceptor, Block),
    /// What clients pin.
    fingerprint: String,
}

/// Loads (or creates, on first start) the certificate in `state_dir` and
/// says so, with its fingerprint and, when it is near or past its end, a
/// warning.
fn open_identity(state_dir: &std::path::Path) -> anyhow::Result<Identity> {
    let (identity, created) = ServerIdentity::load_or_create(state_dir)?;
    let (cert, key) = (state_dir.join("cert.pem"), state_dir.join("key.pem"));
    if created {
        announce(format_args!(
            "created server certificate in {}",
            cert.display()
        ));
    }
    let fingerprint = identity.fingerprint();
    announce(format_args!("certificate fingerprint {fingerprint}"));
    match identity.days_left() {
        Ok(days) if days < 0 => warn_start(format_args!(
            "the server certificate expired {} days ago; clients pin it, so it still works, \
             but replace it: stop the server, remove {} and {}, start it and let clients \
             re-pin with `skiff known remove`",
            -days,
            cert.display(),
            key.display()
        )),
        Ok(days) if days < tls::CERT_WARN_DAYS => warn_start(format_args!(
            "the server certificate expires in {days} days; to renew it, stop the server, \
             remove {} and {}, and start it again (clients must re-pin it)",
            cert.display(),
            key.display()
        )),
        Ok(_) => {}
        Err(e) => warn_start(format_args!("{e:#}")),
    }
    Ok(Identity {
        tls: (identity.acceptor()?, identity.binding()),
        fingerprint,
    })
}

/// The lines after `listening on`: where the users are, and the two
/// commands that let someone on another machine in.
fn announce_how_to_connect(
    urls: &[String],
    users: &LiveUsers,
    fingerprint: Option<&str>,
    audit: Option<&Destination>,
) {
    let n = users.snapshot().len();
    let file = users.path().display();
    announce(format_args!(
        "users file {file} ({n} user{}; re-read when it changes)",
        if n == 1 { "" } else { "s" }
    ));
    match audit {
        Some(Destination::File(p)) => announce(format_args!("audit log {}", p.display())),
        Some(Destination::Stderr) => announce(format_args!("audit log on stderr")),
        None => {}
    }
    let Some(url) = urls.iter().find(|u| u.starts_with("tcp://")) else {
        return;
    };
    let hostport = url.trim_start_matches("tcp://");
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "7878"));
    let wildcard = host == "0.0.0.0" || host == "[::]";
    let host = if wildcard { "THIS_HOST" } else { host };
    let target = if port == crate::target::DEFAULT_PORT.to_string() {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    announce(format_args!("to connect from another machine:"));
    announce(format_args!(
        "  there: skiff keygen --user NAME --out ~/.config/skiff/key"
    ));
    announce(format_args!(
        "  here:  append the line it prints to {file} (no restart needed)"
    ));
    match fingerprint {
        Some(fp) => announce(format_args!(
            "  then:  skiff exec NAME@{target} -- uname   (first use pins {fp})"
        )),
        None => announce(format_args!("  then:  skiff exec NAME@{target} -- uname")),
    }
}

/// SIGHUP: users file, audit log, configuration. Reports what changed and
/// what needs a restart; a bad file changes nothing.
async fn on_hangups(
    mut hangups: tokio::signal::unix::Signal,
    cfg: ServeConfig,
    users: LiveUsers,
    audit: Audit,
    live: Arc<RwLock<LiveSettings>>,
) {
    let mut running = cfg.effective.clone();
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading");
        users.reload();
        audit.reopen();
        let new = match cfg.source.effective() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("configuration not reloaded, keeping the running one: {e}");
                continue;
            }
        };
        let changed = running.changed_keys(&new);
        let mut applied = Vec::new();
        let mut restart = Vec::new();
        for key in changed {
            match key {
                "accept-env" => {
                    let patterns = new.accept_env.clone().unwrap_or_default();
                    match AcceptEnv::new(&patterns) {
                        Ok(a) => {
                            live.write().unwrap_or_else(|p| p.into_inner()).accept_env =
                                Arc::new(a);
                            running.accept_env = new.accept_env.clone();
                            applied.push(key);
                        }
                        Err(e) => tracing::warn!("accept-env not applied: {e}"),
                    }
                }
                other => restart.push(other),
            }
        }
        if !applied.is_empty() {
            tracing::info!("configuration reloaded: {} applied", applied.join(", "));
        }
        if !restart.is_empty() {
            tracing::warn!(
                "configuration changed but needs a restart to apply: {}",
                restart.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_urls() {
        let l: Listen = "tcp://127.0.0.1:0".parse().unwrap();
        assert!(l.tls);
        let l: Listen = "tcp+plain://[::1]:5".parse().unwrap();
        assert!(!l.tls);
        assert!("tcp+plain://0.0.0.0:5".parse::<Listen>().is_err());
        assert!("tcp+plain://192.0.2.1:5".parse::<Listen>().is_err());
        let l: Listen = "unix:///tmp/s".parse().unwrap();
        assert_eq!(l.addr, ListenAddr::Unix("/tmp/s".into()));
        let bare: Listen = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(bare, "tcp://127.0.0.1:7000".parse::<Listen>().unwrap());
        let v6: Listen = "[::1]:0".parse().unwrap();
        assert!(v6.tls);
        assert!("".parse::<Listen>().is_err());
    }
}
