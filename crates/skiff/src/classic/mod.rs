//! The socket tutorial's programs, speaking their exact wire formats, so the
//! tutorial's Python clients and servers work against skiff (DESIGN section
//! 6), and a learner can swap either side and see the same bytes.
//!
//! One module per program, each with its server (a [`skiff_net`] handler,
//! one task per connection, as the tutorial's `ThreadingTCPServer`) and its
//! client (plain blocking sockets with timeouts, as the tutorial's clients):
//! [`cmd`] (the custom-header command server), [`upper`] (the HMAC
//! challenge, then upper-case echo), [`upload`] (the header with file name,
//! size and md5) and [`udp`] (`recvfrom`/`sendto` echo). What each program
//! fixes in the tutorial, and why, is in `docs/CLASSIC.md`.

pub mod cmd;
mod gbk;
mod prompt;
pub mod text;
pub mod udp;
pub mod upload;
pub mod upper;

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use skiff_net::{ListenAddr, Server, ServerBuilder};

/// The tutorial's host: every program binds and connects to `127.0.0.1`.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// How long a server waits for an idle peer before closing, by default: the
/// tutorial's clients are people typing at a `>>: ` prompt, so minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long running connections get to finish after SIGINT/SIGTERM.
const GRACE_PERIOD: Duration = Duration::from_secs(2);

/// Resolves the tutorial's `(host, port)` tuple to a socket address
/// (`localhost` and other names included; the first address wins).
pub fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host} resolves to no address"),
        )
    })
}

/// Whether only this machine can reach `addr` (127.0.0.0/8, ::1, and
/// IPv4-mapped loopback). `0.0.0.0` and `::` mean every interface: not.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The settings every classic server shares.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Most connections served at once; more are closed at once (skiff-net's
    /// default: the tutorial's protocols have no way to say "busy").
    pub max_connections: usize,
    /// Closes a connection whose peer sends or reads nothing for this long.
    pub idle_timeout: Duration,
}

impl ServerSettings {
    /// A skiff-net builder with these settings and graceful shutdown on
    /// SIGINT/SIGTERM, ready for a listener.
    pub fn builder(&self) -> ServerBuilder {
        Server::builder()
            .max_connections(self.max_connections)
            .idle_timeout(Some(self.idle_timeout))
            .grace_period(GRACE_PERIOD)
            .shutdown_on_signals(true)
    }
}

/// Binds `builder`, prints `listening on URL` for every listener (with the
/// real port when port 0 was asked for), and serves until SIGINT/SIGTERM.
pub async fn serve(builder: ServerBuilder) -> io::Result<()> {
    let server = builder.bind().await?;
    for (_, addr) in server.listeners() {
        println!("listening on {addr}");
    }
    server.run().await
}

/// The TCP listen address for `addr`.
pub fn tcp(addr: SocketAddr) -> ListenAddr {
    ListenAddr::Tcp(addr)
}

/// Connects like the tutorial's `connect(ip_port)`, but fails with the
/// address in the message, and gives every later read and write `timeout`.
pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {addr}: {e}")))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `struct.pack('i', n)`: a 4-byte little-endian signed length (the
/// tutorial's machines are all little-endian, and `'i'` is native order).
pub fn pack_len(n: usize) -> io::Result<[u8; 4]> {
    i32::try_from(n).map(i32::to_le_bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{n} bytes do not fit struct.pack('i')"),
        )
    })
}

/// Turns a timeout from a blocking read into a message a person understands.
pub(crate) fn explain_timeout(e: io::Error, what: &str, timeout: Duration) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no {what} within {}s", timeout.as_secs_f64()),
        ),
        io::ErrorKind::UnexpectedEof => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the server closed the connection before sending the {what}"),
        ),
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_only_this_machine() {
        for ok in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(&ok.parse().unwrap()), "{ok}");
        }
        for bad in ["0.0.0.0:1", "[::]:1", "10.0.0.1:1", "[::ffff:10.0.0.1]:1"] {
            assert!(!is_loopback(&bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn pack_len_is_struct_pack_i() {
        assert_eq!(pack_len(1).unwrap(), [1, 0, 0, 0]);
        assert_eq!(pack_len(0x0102_0304).unwrap(), [4, 3, 2, 1]);
        assert!(pack_len(1 << 31).is_err());
    }
}
