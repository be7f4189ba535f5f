//! The client side: connect, authenticate, and run operations.

pub(crate) mod bench;
pub(crate) mod config;
pub mod exec;
pub mod files;
pub(crate) mod handshake;
pub mod identity;
pub(crate) mod known_servers;
pub mod ping;
pub(crate) mod sync;
pub(crate) mod udp_ping;

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_wire::message::handshake::Welcome;
use skiff_wire::{ErrorCode, ErrorMsg};
use thiserror::Error;
use tokio::net::{TcpStream, UnixStream};

use crate::auth::handshake::{self as hs, Block};
use crate::keys::UserKey;
use crate::session::read_ahead::ReadAhead;
use crate::session::{tls, Io, Session, SessionError};
use crate::target::Target;
use handshake::authenticate;
use known_servers::PinState;

/// Why a client operation failed. [`ClientError::Remote`] and
/// [`ClientError::Local`] mean "the operation failed" (exit 1); everything
/// else means "could not talk to the server properly" (exit 255).
#[derive(Debug, Error)]
pub enum ClientError {
    /// No connection could be made.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// Where we tried.
        target: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The handshake failed: wrong key, unknown user, or a man in the middle.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server's certificate differs from the one pinned on first use.
    #[error("server certificate changed for {target}: was {pinned}, now {seen}. If the server was reinstalled, remove its line from {file} and try again; otherwise someone may be intercepting the connection")]
    CertificateChanged {
        /// The server.
        target: String,
        /// The pinned fingerprint.
        pinned: String,
        /// The fingerprint seen now.
        seen: String,
        /// The known-servers file.
        file: PathBuf,
    },
    /// The certificate is not the one given by `--fingerprint` or the
    /// host alias.
    #[error("server certificate of {target} is {seen}, not the expected {expected} (from --fingerprint or the host's alias); refusing to connect")]
    FingerprintMismatch {
        /// The server.
        target: String,
        /// What the user said to expect.
        expected: String,
        /// What the server presented.
        seen: String,
    },
    /// The known-servers file could not be read.
    #[error("known servers file {file}: {source}")]
    KnownServers {
        /// The file.
        file: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file could not be used.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// No usable key: missing key file, or no line for the user.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The client config is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The session broke (protocol error, connection lost, timeout).
    #[error("{}", session_message(.0))]
    Session(SessionError),
    /// The server refused or failed the operation.
    #[error("{}", .0.message)]
    Remote(ErrorMsg),
    /// The operation failed on the local side (a local file, say).
    #[error("{0}")]
    Local(String),
}

impl From<SessionError> for ClientError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Remote(m) if m.code == ErrorCode::AuthFailed => {
                // Our Display already says "authentication failed".
                let reason = m
                    .message
                    .strip_prefix("authentication failed")
                    .unwrap_or(&m.message)
                    .trim_start_matches([':', ' ']);
                ClientError::Auth(if reason.is_empty() {
                    "the server rejected our proof".to_string()
                } else {
                    reason.to_string()
                })
            }
            SessionError::Remote(m) if m.code == ErrorCode::Busy => {
                ClientError::Session(SessionError::Remote(m))
            }
            SessionError::Remote(m) => ClientError::Remote(m),
            e => ClientError::Session(e),
        }
    }
}

/// What a user is told when the session broke. A server that went away
/// shows up as whatever the transport noticed first (a clean EOF, rustls's
/// "peer closed connection without sending TLS close_notify", a reset, a
/// broken pipe): all of them mean the same thing to the user, so they get
/// one message that says what happened and what to do.
fn session_message(e: &SessionError) -> String {
    let lost = match e {
        SessionError::Closed => true,
        SessionError::Io(io) => connection_lost(io),
        _ => false,
    };
    if lost {
        "the server closed the connection before the operation finished (it was stopped, \
         restarted or crashed, or the network cut the connection); check that the server \
         is running, then try again"
            .to_string()
    } else {
        e.to_string()
    }
}

/// Whether an I/O error on an established session means the peer is gone.
fn connection_lost(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected
    )
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Deadline for TCP connect + TLS + handshake.
    pub timeout: Duration,
    /// Where pinned certificates live; `None` disables pinning.
    pub known_servers: Option<PathBuf>,
    /// The certificate fingerprint to insist on (`SHA256:hex`, from
    /// `--fingerprint` or an alias): anything else is refused, whatever the
    /// known-servers file says, and a match is pinned there.
    pub fingerprint: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(10),
            known_servers: std::env::var_os("SKIFF_KNOWN_SERVERS")
                .map(PathBuf::from)
                .or_else(|| Some(crate::keys::config_dir().join("known_servers"))),
            fingerprint: None,
        }
    }
}

/// An authenticated session to a server.
pub struct Client {
    /// The framed, authenticated session.
    pub session: Session<'static>,
    /// What the server said in `welcome`.
    pub welcome: Welcome,
    /// How the server's certificate was trusted; `None` without TLS.
    pub trust: Option<Trust>,
}

/// How the server's certificate came to be trusted, for the user to see.
#[derive(Debug, Clone)]
pub struct Trust {
    /// `HOST:PORT` as pinned.
    pub host_port: String,
    /// The certificate's `SHA256:hex`.
    pub fingerprint: String,
    /// Whether the fingerprint was given explicitly (`--fingerprint`, alias).
    pub explicit: bool,
    /// Set when this connection wrote a new pin: the file, or why writing
    /// it failed.
    pub new_pin: Option<Result<PathBuf, String>>,
}

/// Connects to `target`, authenticates as `key.user` and returns a ready
/// session.
pub async fn connect(
    target: &Target,
    key: &UserKey,
    opts: &ConnectOptions,
) -> Result<Client, ClientError> {
    match tokio::time::timeout(opts.timeout, connect_inner(target, key, opts)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Session(SessionError::Timeout(opts.timeout))),
    }
}

async fn connect_inner(
    target: &Target,
    key: &UserKey,
    opts: &ConnectOptions,
) -> Result<Client, ClientError> {
    let connect_err = |source| ClientError::Connect {
        target: target.to_string(),
        source: friendly(source),
    };
    // A certificate seen for the first time, pinned once the server has
    // proved it knows our key.
    let mut trust: Option<(Trust, Option<Vec<u8>>)> = None;
    let (io, cb): (Box<dyn Io>, Block) = match target {
        Target::Unix(path) => {
            let s = UnixStream::connect(path).await.map_err(connect_err)?;
            (Box::new(s), hs::NO_BINDING)
        }
        Target::Plain { .. } | Target::Tls { .. } => {
            let addr = target.host_port().unwrap_or_default();
            let tcp = TcpStream::connect(&addr).await.map_err(connect_err)?;
            let _ = tcp.set_nodelay(true);
            if let Target::Tls { host, .. } = target {
                let tls = tls::connector()
                    .map_err(|e| ClientError::Local(e.to_string()))?
                    .connect(tls::server_name(host), ReadAhead::new(tcp))
                    .await
                    .map_err(connect_err)?;
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec())
                    .ok_or_else(|| ClientError::Auth("server sent no certificate".into()))?;
                let cb = hs::channel_binding(&cert);
                trust = Some(check_trust(opts, &addr, cert)?);
                (Box::new(tls), cb)
            } else {
                (Box::new(tcp), hs::NO_BINDING)
            }
        }
    };
    let mut session = Session::new(io);
    // The test hook that shortens the client's read waits shortens its
    // write waits too, so a test sees every wait on a stalled server end.
    if let Some(wait) = crate::transfer::fault::idle_timeout() {
        session.set_write_timeout(wait);
    }
    let welcome = authenticate(&mut session, key, &cb).await?;
    let trust = trust.map(|(mut t, cert)| {
        if let (Some(cert), Some(file)) = (cert, &opts.known_servers) {
            t.new_pin = Some(record_pin(file, &t.host_port, &cert, t.explicit));
        }
        t
    });
    Ok(Client {
        session,
        welcome,
        trust,
    })
}

/// Checks the certificate against `--fingerprint` (or the alias) or the
/// known-servers file; returns what to tell the user and, when the
/// certificate is to be pinned after the handshake, the certificate.
fn check_trust(
    opts: &ConnectOptions,
    addr: &str,
    cert: Vec<u8>,
) -> Result<(Trust, Option<Vec<u8>>), ClientError> {
    let seen = tls::fingerprint(&cert);
    let mut trust = Trust {
        host_port: addr.to_string(),
        fingerprint: seen.clone(),
        explicit: opts.fingerprint.is_some(),
        new_pin: None,
    };
    if let Some(expected) = &opts.fingerprint {
        if *expected != seen {
            return Err(ClientError::FingerprintMismatch {
                target: addr.to_string(),
                expected: expected.clone(),
                seen,
            });
        }
        // Explicit trust wins over an old pin; record it unless it is
        // already there.
        let pinned = match &opts.known_servers {
            Some(file) => known_servers::check(file, addr, &cert)
                .map(|s| s == PinState::Known)
                .unwrap_or(false),
            None => true,
        };
        return Ok((trust, (!pinned).then_some(cert)));
    }
    let Some(file) = &opts.known_servers else {
        return Ok((trust, None));
    };
    match known_servers::check(file, addr, &cert)? {
        PinState::Known => Ok((trust, None)),
        PinState::New => {
            trust.new_pin = None;
            Ok((trust, Some(cert)))
        }
    }
}

/// Writes a pin (replacing an older one for the address when the
/// certificate was given explicitly).
fn record_pin(file: &Path, addr: &str, cert: &[u8], replace: bool) -> Result<PathBuf, String> {
    let result = (|| {
        if replace {
            known_servers::remove(file, |h| h == addr)?;
        }
        known_servers::pin(file, addr, cert)
    })();
    result
        .map(|()| file.to_path_buf())
        .map_err(|e| e.to_string())
}

/// The usual reasons a connection fails, worded like ssh does
/// (`connection refused`) instead of the OS text with its errno; the kind
/// is kept.
fn friendly(e: std::io::Error) -> std::io::Error {
    use std::io::ErrorKind as K;
    let reason = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset by peer",
        K::TimedOut => "connection timed out",
        K::NotFound => "no such socket",
        K::PermissionDenied => "permission denied",
        _ => return e,
    };
    std::io::Error::new(e.kind(), reason)
}
