//! Listeners: how they are named, and binding their sockets the way
//! servers should.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, UdpSocket, UnixListener};

/// Names one listener of a [`Server`](crate::Server): returned when it is
/// added to the [`ServerBuilder`](crate::ServerBuilder), carried by every
/// [`Connection`](crate::Connection) it accepts, and the key for its bound
/// address ([`Server::local_addr`](crate::Server::local_addr)). Code that
/// keeps per-listener settings (TLS or not, which service) looks them up by
/// id, never by position in a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub(crate) usize);

impl fmt::Display for ListenerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "listener #{}", self.0)
    }
}

/// Binds a TCP listener with `SO_REUSEADDR` (a restarted server does not
/// wait out TIME_WAIT) and, for `[::]`, dual-stack off so that `0.0.0.0`
/// and `[::]` can be bound side by side.
pub(crate) fn bind_tcp(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(backlog)?;
    TcpListener::from_std(socket.into())
}

/// Binds a UDP socket (with `SO_REUSEADDR`).
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    UdpSocket::from_std(socket.into())
}

/// Binds a Unix stream listener, replacing a stale socket file.
pub(crate) fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    clear_stale_socket(path, false)?;
    UnixListener::bind(path)
}

/// Removes `path` if it is a socket nobody listens on any more (left by a
/// server that crashed). A live socket, or anything that is not a socket,
/// is left alone and reported as an error.
pub(crate) fn clear_stale_socket(path: &Path, datagram: bool) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    match probe_socket(path, datagram) {
        // Only "connection refused" proves that nobody listens; anything
        // else (including a full backlog: EAGAIN) leaves the file alone.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        // Gone in the meantime: nothing to clear.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
        _ => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another server is listening on {}", path.display()),
        )),
    }
}

/// Tries to connect to the socket at `path` without blocking (a live server
/// with a full backlog answers `WouldBlock` instead of stalling us).
fn probe_socket(path: &Path, datagram: bool) -> io::Result<()> {
    let ty = if datagram { Type::DGRAM } else { Type::STREAM };
    let socket = Socket::new(Domain::UNIX, ty, None)?;
    socket.set_nonblocking(true)?;
    socket.connect(&SockAddr::unix(path)?)
}
