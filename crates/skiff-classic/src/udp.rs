//! The UDP program (基于UDP的套接字): the server answers each datagram
//! (`recvfrom`) with the same bytes upper-cased (`sendto`). No connection,
//! no sticky packets, and no promise that anything arrives.

use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use skiff_net::{Datagram, DatagramHandler, DatagramSocket};

/// The tutorial's UDP address is `('127.0.0.1', 8080)` (its socketserver
/// UDP example).
pub const DEFAULT_PORT: u16 = 8080;
/// Receive buffer: the largest UDP payload, so nothing is cut (the
/// tutorial's `recvfrom(1024)` would drop the rest of a longer datagram).
pub const MAX_DATAGRAM: usize = 65_535;

/// The server side: one socket, one datagram at a time.
#[derive(Debug, Clone, Default)]
pub struct UdpUpperServer;

impl DatagramHandler for UdpUpperServer {
    async fn handle(&self, datagram: Datagram<'_>, socket: &DatagramSocket) {
        if datagram.truncated() {
            tracing::warn!(peer = %datagram.peer, len = datagram.len, "datagram cut to the buffer size");
        }
        let reply = datagram.data.to_ascii_uppercase();
        if let Err(e) = socket.send_to(&reply, &datagram.peer).await {
            tracing::debug!(peer = %datagram.peer, error = %e, "cannot answer");
        }
    }
}

/// The client side: the `>>: ` loop, one datagram out and one back.
#[derive(Debug, Clone)]
pub struct UdpClient {
    /// The server.
    pub addr: SocketAddr,
    /// How long to wait for each answer: UDP never retransmits.
    pub timeout: Duration,
}

impl UdpClient {
    /// Sends each line and prints the answer; returns how many got none.
    pub fn run(&self, input: &mut impl BufRead, out: &mut impl Write) -> io::Result<u64> {
        let any: SocketAddr = if self.addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(io::Error::other)?;
        let socket = UdpSocket::bind(any)?;
        // Connected: the kernel drops datagrams from anyone else, and an
        // ICMP "port unreachable" shows up as an error instead of silence.
        socket.connect(self.addr)?;
        socket.set_read_timeout(Some(self.timeout))?;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut lost = 0u64;
        crate::prompt::each_line(input, out, |msg, out| {
            socket.send(msg)?;
            match socket.recv(&mut buf) {
                Ok(n) => {
                    out.write_all(String::from_utf8_lossy(&buf[..n]).as_bytes())?;
                    out.write_all(b"\n")
                }
                Err(e) => {
                    lost += 1;
                    match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => eprintln!(
                            "skiff: no answer from {} within {}s (UDP does not retransmit)",
                            self.addr,
                            self.timeout.as_secs_f64()
                        ),
                        io::ErrorKind::ConnectionRefused => {
                            eprintln!("skiff: nothing listens on udp {}", self.addr)
                        }
                        _ => return Err(e),
                    }
                    Ok(())
                }
            }
        })?;
        Ok(lost)
    }
}
