//! Datagram sockets (UDP and Unix datagram) with truncation detection.

use std::io;
use std::mem::MaybeUninit;
use std::path::Path;

use socket2::{SockAddr, SockRef};
use tokio::io::Interest;
use tokio::net::{UdpSocket, UnixDatagram};

use crate::PeerAddr;

/// One received datagram.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The bytes that fit in the receive buffer.
    pub data: &'a [u8],
    /// The datagram's real size; larger than `data.len()` when truncated.
    pub len: usize,
    /// Who sent it.
    pub peer: PeerAddr,
}

impl Datagram<'_> {
    /// Whether the datagram was larger than the receive buffer and lost its
    /// tail (the tutorial's UDP data-loss warning, made visible).
    pub fn truncated(&self) -> bool {
        self.len > self.data.len()
    }
}

/// A bound datagram socket a [`DatagramHandler`](crate::DatagramHandler)
/// replies through.
#[derive(Debug)]
pub enum DatagramSocket {
    /// UDP.
    Udp(UdpSocket),
    /// Unix datagram.
    Unix(UnixDatagram),
}

impl DatagramSocket {
    /// Sends one datagram to `peer`. Unnamed Unix peers cannot be answered.
    pub async fn send_to(&self, data: &[u8], peer: &PeerAddr) -> io::Result<usize> {
        match (self, peer) {
            (DatagramSocket::Udp(s), PeerAddr::Ip(a)) => s.send_to(data, a).await,
            (DatagramSocket::Unix(s), PeerAddr::Unix(Some(p))) => s.send_to(data, p).await,
            (DatagramSocket::Unix(_), PeerAddr::Unix(None)) => Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "the peer's Unix datagram socket is unnamed; it cannot be answered",
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "peer address family does not match the socket",
            )),
        }
    }

    /// Receives one datagram into `buf`, reporting its real length even if
    /// it did not fit (Linux `MSG_TRUNC`).
    pub async fn recv_from<'b>(&self, buf: &'b mut [u8]) -> io::Result<Datagram<'b>> {
        let (len, peer) = match self {
            DatagramSocket::Udp(s) => {
                let (len, from) = s
                    .async_io(Interest::READABLE, || recv_trunc(SockRef::from(s), buf))
                    .await?;
                let ip = from.as_socket().ok_or_else(|| {
                    io::Error::other(format!(
                        "UDP datagram from a non-IP address (family {})",
                        from.family()
                    ))
                })?;
                (len, PeerAddr::Ip(ip))
            }
            DatagramSocket::Unix(s) => {
                let (len, from) = s
                    .async_io(Interest::READABLE, || recv_trunc(SockRef::from(s), buf))
                    .await?;
                // An unnamed sender comes with an empty address (no family
                // at all); an abstract one has no path: neither can be
                // answered by path.
                (
                    len,
                    PeerAddr::Unix(from.as_pathname().map(Path::to_path_buf)),
                )
            }
        };
        let kept = len.min(buf.len());
        Ok(Datagram {
            data: &buf[..kept],
            len,
            peer,
        })
    }
}

/// One `recvfrom` with `MSG_TRUNC`, which makes the kernel return the
/// datagram's real length (UDP and Unix datagram alike on Linux) while
/// writing at most `buf.len()` bytes.
fn recv_trunc(socket: SockRef<'_>, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    // SAFETY: `recv_from_with_flags` takes `MaybeUninit` only so it can
    // accept uninitialised buffers; socket2 documents that it never writes
    // uninitialised bytes into it (it hands the buffer to recvfrom(2)), so
    // viewing an initialised `[u8]` this way is sound (socket2's own `Read`
    // impl does the same cast). Same length, same layout.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    socket.recv_from_with_flags(uninit, libc::MSG_TRUNC)
}

pub(crate) fn bind_unix_datagram(path: &Path) -> io::Result<UnixDatagram> {
    crate::listener::clear_stale_socket(path, true)?;
    UnixDatagram::bind(path)
}
