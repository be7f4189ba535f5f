//! Addresses a server listens on and peers it talks to.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a listener binds, written as a URL: `tcp://HOST:PORT`,
/// `udp://HOST:PORT`, `unix:///path/to/sock`, `unixgram:///path/to/sock`.
/// IPv6 hosts go in brackets (`tcp://[::1]:7878`). Port 0 picks a free port;
/// [`Server::local_addr`](crate::Server::local_addr) tells which.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP stream listener.
    Tcp(SocketAddr),
    /// A Unix stream socket at a path.
    Unix(PathBuf),
    /// A UDP datagram socket.
    Udp(SocketAddr),
    /// A Unix datagram socket at a path.
    UnixDatagram(PathBuf),
}

impl ListenAddr {
    /// Whether this is a datagram (UDP or Unix datagram) address.
    pub fn is_datagram(&self) -> bool {
        matches!(self, ListenAddr::Udp(_) | ListenAddr::UnixDatagram(_))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
            ListenAddr::Udp(a) => write!(f, "udp://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            ListenAddr::UnixDatagram(p) => write!(f, "unixgram://{}", p.display()),
        }
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Parses `HOST:PORT` (or `[V6]:PORT`), resolving names like `localhost`.
pub(crate) fn parse_socket_addr(s: &str) -> io::Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve address {s:?}: {e}")))?
        .next()
        .ok_or_else(|| bad(format!("address {s:?} resolves to nothing")))
}

impl FromStr for ListenAddr {
    type Err = io::Error;

    fn from_str(s: &str) -> io::Result<Self> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad(format!("{s:?} is not a URL like tcp://127.0.0.1:7878")))?;
        match scheme {
            "tcp" => Ok(ListenAddr::Tcp(parse_socket_addr(rest)?)),
            "udp" => Ok(ListenAddr::Udp(parse_socket_addr(rest)?)),
            "unix" | "unixgram" if rest.is_empty() => Err(bad(format!("{s:?} has no socket path"))),
            "unix" => Ok(ListenAddr::Unix(PathBuf::from(rest))),
            "unixgram" => Ok(ListenAddr::UnixDatagram(PathBuf::from(rest))),
            other => Err(bad(format!(
                "unknown scheme {other:?} in {s:?} (use tcp, udp, unix or unixgram)"
            ))),
        }
    }
}

/// The other end of a connection or the sender of a datagram.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// An IP peer.
    Ip(SocketAddr),
    /// A Unix socket peer; `None` when the peer's socket has no name
    /// (an unbound Unix datagram client cannot be answered).
    Unix(Option<PathBuf>),
}

impl PeerAddr {
    /// The IP address, for per-source policies such as rate limiting.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            PeerAddr::Ip(a) => Some(a.ip()),
            PeerAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Ip(a) => write!(f, "{a}"),
            PeerAddr::Unix(Some(p)) => write!(f, "unix:{}", p.display()),
            PeerAddr::Unix(None) => write!(f, "unix:(unnamed)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            "tcp://127.0.0.1:80".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            "udp://[::1]:0".parse::<ListenAddr>().unwrap(),
            ListenAddr::Udp("[::1]:0".parse().unwrap())
        );
        assert_eq!(
            "unix:///tmp/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/x.sock".into())
        );
        assert!("ftp://x".parse::<ListenAddr>().is_err());
        assert!("127.0.0.1:80".parse::<ListenAddr>().is_err());
        assert!("unix://".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "tcp://127.0.0.1:7",
            "udp://[::1]:9",
            "unix:///a/b",
            "unixgram:///c",
        ] {
            assert_eq!(s.parse::<ListenAddr>().unwrap().to_string(), s);
        }
    }
}
