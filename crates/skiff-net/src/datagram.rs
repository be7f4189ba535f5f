//! Datagram sockets (UDP and Unix datagram) with truncation detection.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

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
                s.async_io(Interest::READABLE, || recv_trunc_ip(s.as_raw_fd(), buf))
                    .await?
            }
            DatagramSocket::Unix(s) => {
                s.async_io(Interest::READABLE, || recv_trunc_unix(s.as_raw_fd(), buf))
                    .await?
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

fn recv_trunc_ip(fd: i32, buf: &mut [u8]) -> io::Result<(usize, PeerAddr)> {
    // SAFETY: sockaddr_storage is plain data; recvfrom writes at most
    // `addr_len` bytes into it and at most `buf.len()` bytes into `buf`.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut addr_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut addr_len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let addr = sockaddr_to_std(&storage)?;
    Ok((n as usize, PeerAddr::Ip(addr)))
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> io::Result<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Ok(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )
            .into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Ok(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )
            .into())
        }
        f => Err(io::Error::other(format!("unexpected address family {f}"))),
    }
}

fn recv_trunc_unix(fd: i32, buf: &mut [u8]) -> io::Result<(usize, PeerAddr)> {
    // SAFETY: as in recv_trunc_ip, with a sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut addr_len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
            (&mut addr as *mut libc::sockaddr_un).cast(),
            &mut addr_len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let path_offset = std::mem::size_of::<libc::sa_family_t>();
    let path_len = (addr_len as usize).saturating_sub(path_offset);
    let peer = if path_len == 0 || addr.sun_path[0] == 0 {
        None
    } else {
        let bytes: Vec<u8> = addr.sun_path[..path_len.min(addr.sun_path.len())]
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        use std::os::unix::ffi::OsStringExt;
        Some(std::path::PathBuf::from(std::ffi::OsString::from_vec(
            bytes,
        )))
    };
    Ok((n as usize, PeerAddr::Unix(peer)))
}

pub(crate) fn bind_unix_datagram(path: &Path) -> io::Result<UnixDatagram> {
    crate::listener::clear_stale_socket(path, true)?;
    UnixDatagram::bind(path)
}
