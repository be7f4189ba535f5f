//! The client side: connect, authenticate, and run operations.

pub mod bench;
pub mod exec;
pub mod files;
pub mod handshake;
pub mod known_servers;
pub mod ping;
pub mod udp_ping;

use std::path::PathBuf;
use std::time::Duration;

use skiff_wire::message::handshake::Welcome;
use skiff_wire::{ErrorCode, ErrorMsg};
use thiserror::Error;
use tokio::net::{TcpStream, UnixStream};

use crate::auth::handshake::{self as hs, Block};
use crate::keys::UserKey;
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
    /// The key file could not be used.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// The session broke (protocol error, connection lost, timeout).
    #[error(transparent)]
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

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Deadline for TCP connect + TLS + handshake.
    pub timeout: Duration,
    /// Where pinned certificates live; `None` disables pinning.
    pub known_servers: Option<PathBuf>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(10),
            known_servers: std::env::var_os("SKIFF_KNOWN_SERVERS")
                .map(PathBuf::from)
                .or_else(|| Some(crate::keys::config_dir().join("known_servers"))),
        }
    }
}

/// An authenticated session to a server.
pub struct Client {
    /// The framed, authenticated session.
    pub session: Session<'static>,
    /// What the server said in `welcome`.
    pub welcome: Welcome,
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
    let mut to_pin: Option<(&PathBuf, String, Vec<u8>)> = None;
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
                    .connect(tls::server_name(host), tcp)
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
                if let Some(file) = &opts.known_servers {
                    if known_servers::check(file, &addr, &cert)? == PinState::New {
                        to_pin = Some((file, addr, cert));
                    }
                }
                (Box::new(tls), cb)
            } else {
                (Box::new(tcp), hs::NO_BINDING)
            }
        }
    };
    let mut session = Session::new(io);
    let welcome = authenticate(&mut session, key, &cb).await?;
    if let Some((file, addr, cert)) = to_pin {
        known_servers::pin(file, &addr, &cert);
    }
    Ok(Client { session, welcome })
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
