//! `skiff serve`: assembles listeners, TLS, authentication and services on
//! top of skiff-net.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use skiff_net::{Connection, ListenAddr, Server, StreamHandler};
use skiff_wire::message::handshake::Welcome;

use crate::keys::Users;
use crate::service::udp_ping::UdpPingService;
use crate::service::{self, ServiceContext};
use crate::session::accept::{AuthPolicy, Authenticator};
use crate::session::handshake::{Block, NO_BINDING};
use crate::session::tls::ServerIdentity;
use crate::session::{Io, Session, SessionError};
use crate::transfer::staging::StagingArea;

/// Prints a startup line on stdout. Unlike `println!` it ignores a closed
/// stdout (`skiff serve | head -3`), which must not bring the server down.
pub(crate) fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
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

impl Listen {
    /// The URL users connect to, with the real port.
    pub fn url(addr: &ListenAddr, tls: bool) -> String {
        match addr {
            ListenAddr::Tcp(a) if !tls => format!("tcp+plain://{a}"),
            other => other.to_string(),
        }
    }
}

/// Everything `skiff serve` needs, resolved from flags and defaults.
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
    /// Failure delay and rate limit.
    pub auth: AuthPolicy,
    /// Partial uploads untouched for longer are removed.
    pub partial_max_age: Duration,
}

struct SessionHandler {
    tls: Option<(tokio_rustls::TlsAcceptor, Block)>,
    auth: Arc<Authenticator>,
    root: PathBuf,
    exec_enabled: bool,
    handshake_timeout: Duration,
    staging: Arc<StagingArea>,
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
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let (io, cb): (Box<dyn Io + '_>, Block) = match &self.tls {
            Some((acceptor, cb)) => {
                let accept = acceptor.accept(conn.stream());
                match tokio::time::timeout_at(deadline, accept).await {
                    Ok(Ok(tls)) => (Box::new(tls), *cb),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return Ok(());
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return Ok(());
                    }
                }
            }
            None => (Box::new(conn.stream()), NO_BINDING),
        };
        let mut session = Session::unauthenticated(io);
        let user = match tokio::time::timeout_at(
            deadline,
            self.auth.handshake(&mut session, &cb, peer_ip),
        )
        .await
        {
            Ok(Ok(user)) => user,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "authentication failed");
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
                tracing::info!(%peer, "handshake timed out");
                return Ok(());
            }
        };
        tracing::info!(%peer, %user, "authenticated");
        session.set_read_limits(skiff_wire::Limits::default());
        let ctx = ServiceContext {
            root: self.root.clone(),
            exec_enabled: self.exec_enabled,
            user,
            staging: self.staging.clone(),
        };
        match service::serve(&mut session, &ctx).await {
            Ok(()) => {
                let _ = session.close().await;
                Ok(())
            }
            Err(SessionError::Io(e)) => Err(e),
            Err(e) => {
                tracing::info!(%peer, error = %e, "session ended");
                Ok(())
            }
        }
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

/// Binds every listener, prints `listening on URL` for each, and serves
/// until SIGINT/SIGTERM.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    if !cfg.root.is_dir() {
        bail!("root {} is not a directory", cfg.root.display());
    }
    let root = cfg
        .root
        .canonicalize()
        .with_context(|| format!("resolving root {}", cfg.root.display()))?;
    let users = Users::load(&cfg.users_file)?;
    service::files::ignore_file_size_signal();
    if users.is_empty() {
        bail!(
            "{} lists no users; add one with `skiff keygen --user NAME`",
            cfg.users_file.display()
        );
    }
    let welcome = Welcome {
        server: format!("skiff {}", env!("CARGO_PKG_VERSION")),
        services: ServiceContext::services(!cfg.no_exec),
    };
    let staging = Arc::new(open_staging(&cfg, &root)?);
    let udp_ping = Arc::new(UdpPingService::new(users.clone()));
    let auth = Arc::new(Authenticator::new(users, cfg.auth, welcome));
    let needs_tls = cfg.listen.iter().any(|l| l.tls);
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
        Some((identity.acceptor()?, identity.binding()))
    } else {
        None
    };
    let mut builder = Server::builder()
        .max_connections(cfg.max_connections)
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
            staging: staging.clone(),
        });
        listeners.push((builder.add_stream(l.addr.clone(), handler), l.tls));
    }
    let server = builder.bind().await?;
    tokio::spawn(sweep_periodically(staging.clone(), cfg.partial_max_age));
    for (id, tls) in listeners {
        if let Some(addr) = server.local_addr(id) {
            announce(format_args!("listening on {}", Listen::url(addr, tls)));
        }
    }
    announce(format_args!("serving {}", root.display()));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.run().await?;
    Ok(())
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
