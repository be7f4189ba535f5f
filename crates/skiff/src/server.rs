//! `skiff serve`: assembles listeners, TLS, authentication and services on
//! top of skiff-net.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use skiff_net::{Connection, ListenAddr, Server, StartupLimits, StreamHandler};
use skiff_wire::message::handshake::Welcome;

use crate::audit::{Audit, Destination, Event};
use crate::auth::handshake::{Block, NO_BINDING};
use crate::policy::env::{AcceptEnv, BaseEnv};
use crate::serve_config::{ConfigSource, ServeFile};
use crate::service::udp_ping::UdpPingService;
use crate::service::{self, ServiceContext};
use crate::session::accept::{AuthPolicy, Authenticator};
use crate::session::penalty::Recorded;
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

struct SessionHandler {
    tls: Option<(tokio_rustls::TlsAcceptor, Block)>,
    auth: Arc<Authenticator>,
    root: PathBuf,
    exec_enabled: bool,
    handshake_timeout: Duration,
    idle_timeout: Option<Duration>,
    write_timeout: Duration,
    staging: Arc<StagingArea>,
    audit: Audit,
    live: Arc<RwLock<LiveSettings>>,
    base_env: Arc<BaseEnv>,
}

impl SessionHandler {
    /// A failed handshake: one log line and one audit event; it counts
    /// towards its source's penalty, and when it starts one, that is
    /// logged (once per penalty) too.
    fn refused(&self, peer_ip: Option<IpAddr>, peer: &str, user: Option<&str>, reason: &str) {
        tracing::info!(peer, user = user.unwrap_or("-"), "login refused: {reason}");
        let (user, peer, reason) = (user.map(String::from), peer.to_string(), reason.to_string());
        let recorded = self.auth.record_failure(peer_ip);
        self.audit.record(Event::AuthFailed {
            user: user.clone(),
            peer: peer.clone(),
            reason,
        });
        if let Recorded::PenaltyBegins { delay, failures } = recorded {
            let why = format!(
                "{failures} recent failed logins: new connections from this source wait {} ms",
                delay.as_millis()
            );
            tracing::warn!(%peer, "penalty: {why}");
            self.audit.record(Event::Penalty {
                user,
                peer,
                reason: why,
            });
        }
    }
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
        let _ = session
            .send_error(
                skiff_wire::ErrorCode::Busy,
                "server is at its connection limit; try again later",
            )
            .await;
        let _ = session.close().await;
    }

    async fn handle(&self, conn: &mut Connection) -> std::io::Result<()> {
        let peer_ip: Option<IpAddr> = conn.peer().ip();
        let peer = conn.peer().to_string();
        // Counted as a startup until it has logged in (skiff-net's caps
        // per source and in total), then as a session.
        let startup = conn.take_startup();
        // Shutdown reaches every wait from here on: a connection still in
        // its handshake is dropped (told so when TLS is up), an idle
        // session is closed with `shutting_down`.
        let shutdown = conn.shutdown_token();
        // A source that keeps failing waits before it costs anything (TLS,
        // HMACs); bounded, so a right key from there still gets in.
        let penalty = self.auth.penalty(peer_ip);
        if !penalty.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(penalty) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
        let client = match conn.peer() {
            skiff_net::PeerAddr::Ip(a) => Some(*a),
            skiff_net::PeerAddr::Unix(_) => None,
        };
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let (io, cb): (Box<dyn Io + '_>, Block) = match &self.tls {
            Some((acceptor, cb)) => {
                let accept = acceptor.accept(conn.stream());
                let accepted = tokio::select! {
                    r = tokio::time::timeout_at(deadline, accept) => r,
                    _ = shutdown.cancelled() => return Ok(()),
                };
                match accepted {
                    Ok(Ok(tls)) => (Box::new(tls), *cb),
                    Ok(Err(e)) => {
                        self.refused(peer_ip, &peer, None, &tls_failure(&e));
                        return Ok(());
                    }
                    Err(_) => {
                        self.refused(peer_ip, &peer, None, "TLS handshake timed out");
                        return Ok(());
                    }
                }
            }
            None => (Box::new(conn.stream()), NO_BINDING),
        };
        let mut session = Session::unauthenticated(io);
        let handshake =
            tokio::time::timeout_at(deadline, self.auth.handshake(&mut session, &cb, peer_ip));
        let outcome = tokio::select! {
            r = handshake => Some(r),
            _ = shutdown.cancelled() => None,
        };
        let Some(outcome) = outcome else {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = session
                    .send_error(
                        skiff_wire::ErrorCode::ShuttingDown,
                        "the server is shutting down",
                    )
                    .await;
                let _ = session.close().await;
            })
            .await;
            return Ok(());
        };
        let login = match outcome {
            Ok(Ok(login)) => login,
            Ok(Err(f)) => {
                self.refused(peer_ip, &peer, f.user.as_deref(), &f.reason);
                // Bounded: a peer that stops reading cannot hold us here.
                let _ = tokio::time::timeout(Duration::from_secs(1), session.close()).await;
                return Ok(());
            }
            Err(_) => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    session.send_error(skiff_wire::ErrorCode::Timeout, "handshake timed out"),
                )
                .await;
                self.refused(peer_ip, &peer, None, "authentication timed out");
                return Ok(());
            }
        };
        let user = login.user.clone();
        let _established = match startup.map(|s| s.establish()) {
            Some(Err(busy)) => {
                tracing::info!(%peer, %user, "session refused: {busy}");
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    session.send_error(
                        skiff_wire::ErrorCode::Busy,
                        "server is at its connection limit; try again later",
                    ),
                )
                .await;
                return Ok(());
            }
            Some(Ok(established)) => Some(established),
            None => None,
        };
        let root = match login.policy.resolve_root(&self.root) {
            Ok(r) => r,
            Err(refusal) => {
                tracing::warn!(%peer, %user, "session refused: {refusal}");
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    session.send_error(skiff_wire::ErrorCode::Permission, refusal.to_string()),
                )
                .await;
                return Ok(());
            }
        };
        let started = std::time::Instant::now();
        tracing::info!(%peer, %user, "session start");
        self.audit.record(Event::AuthOk {
            user: user.clone(),
            peer: peer.clone(),
        });
        let accept_env = self
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .accept_env
            .clone();
        session.set_read_limits(skiff_wire::Limits::default());
        session.set_write_timeout(self.write_timeout);
        let ctx = ServiceContext {
            root,
            exec_enabled: self.exec_enabled,
            user: user.clone(),
            policy: login.policy.clone(),
            client,
            peer: peer.clone(),
            audit: self.audit.clone(),
            base_env: self.base_env.clone(),
            accept_env,
            staging: self.staging.clone(),
            idle_timeout: self.idle_timeout,
            shutdown,
        };
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
        self.audit.record(Event::SessionEnd {
            user,
            peer,
            duration_ms,
            reason,
        });
        result
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
    if !cfg.root.is_dir() {
        bail!("root {} is not a directory", cfg.root.display());
    }
    let root = cfg
        .root
        .canonicalize()
        .with_context(|| format!("resolving root {}", cfg.root.display()))?;
    let users = LiveUsers::open(&cfg.users_file)?;
    service::files::ignore_file_size_signal();
    if users.snapshot().is_empty() {
        bail!(
            "{} lists no users; add one with `skiff keygen --user NAME`",
            cfg.users_file.display()
        );
    }
    let audit = match &cfg.audit {
        Some(dest) => Audit::open(dest.clone())?,
        None => Audit::disabled(),
    };
    let accept_env = AcceptEnv::new(&cfg.accept_env).map_err(anyhow::Error::msg)?;
    let live = Arc::new(RwLock::new(LiveSettings {
        accept_env: Arc::new(accept_env),
    }));
    let base_env = Arc::new(BaseEnv::from_server());
    let welcome = Welcome {
        server: format!("skiff {}", env!("CARGO_PKG_VERSION")),
        services: ServiceContext::services(!cfg.no_exec),
    };
    let staging = Arc::new(open_staging(&cfg, &root)?);
    let udp_ping = Arc::new(UdpPingService::new(users.clone()));
    let auth = Arc::new(Authenticator::new(users.clone(), cfg.auth.clone(), welcome));
    let needs_tls = cfg.listen.iter().any(|l| l.tls);
    let mut fingerprint = None;
    let tls = if needs_tls {
        let (identity, created) = ServerIdentity::load_or_create(&cfg.state_dir)?;
        if created {
            announce(format_args!(
                "created server certificate in {}",
                cfg.state_dir.join("cert.pem").display()
            ));
        }
        announce(format_args!(
            "certificate fingerprint {}",
            identity.fingerprint()
        ));
        match identity.days_left() {
            Ok(days) if days < 0 => warn_start(format_args!(
                "the server certificate expired {} days ago; clients pin it, so it still works, \
                 but replace it: stop the server, remove {} and {}, start it and let clients \
                 re-pin with `skiff known remove`",
                -days,
                cfg.state_dir.join("cert.pem").display(),
                cfg.state_dir.join("key.pem").display()
            )),
            Ok(days) if days < tls::CERT_WARN_DAYS => warn_start(format_args!(
                "the server certificate expires in {days} days; to renew it, stop the server, \
                 remove {} and {}, and start it again (clients must re-pin it)",
                cfg.state_dir.join("cert.pem").display(),
                cfg.state_dir.join("key.pem").display()
            )),
            Ok(_) => {}
            Err(e) => warn_start(format_args!("{e:#}")),
        }
        fingerprint = Some(identity.fingerprint());
        Some((identity.acceptor()?, identity.binding()))
    } else {
        None
    };
    let mut builder = Server::builder()
        .max_connections(cfg.max_connections)
        .max_startups(cfg.startups)
        .shutdown_on_signals(true);
    let mut listeners = Vec::new();
    for l in &cfg.listen {
        if l.addr.is_datagram() {
            listeners.push((
                builder.add_datagram(l.addr.clone(), udp_ping.clone()),
                false,
            ));
            continue;
        }
        let handler = Arc::new(SessionHandler {
            tls: if l.tls { tls.clone() } else { None },
            auth: auth.clone(),
            root: root.clone(),
            exec_enabled: !cfg.no_exec,
            handshake_timeout: cfg.handshake_timeout,
            idle_timeout: cfg.idle_timeout,
            write_timeout: cfg.write_timeout,
            staging: staging.clone(),
            audit: audit.clone(),
            live: live.clone(),
            base_env: base_env.clone(),
        });
        listeners.push((builder.add_stream(l.addr.clone(), handler), l.tls));
    }
    let server = builder.bind().await?;
    tokio::spawn(sweep_periodically(staging.clone(), cfg.partial_max_age));
    let urls: Vec<String> = listeners
        .into_iter()
        .filter_map(|(id, tls)| server.local_addr(id).map(|addr| Listen::url(addr, tls)))
        .collect();
    for url in &urls {
        announce(format_args!("listening on {url}"));
    }
    announce(format_args!("serving {}", root.display()));
    announce_how_to_connect(&urls, &users, fingerprint.as_deref(), cfg.audit.as_ref());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::spawn(on_hangups(hangups, cfg, users, audit, live));
    server.run().await?;
    Ok(())
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
