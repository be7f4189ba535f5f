//! The UDP program (基于UDP的套接字): the server answers each datagram
//! (`recvfrom`) with the same bytes upper-cased (`sendto`). No connection,
//! no sticky packets, and no promise that anything arrives. Unlike the
//! tutorial's, this server does not answer sources that could make it loop
//! or reflect ([`crate::udp_guard`]).

use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skiff_net::{Datagram, DatagramHandler, DatagramSocket, PeerAddr};

use crate::udp_guard::{RateLimit, Refusal, ReplyGuard};

/// The tutorial's UDP address is `('127.0.0.1', 8080)` (its socketserver
/// UDP example).
pub const DEFAULT_PORT: u16 = 8080;
/// Replies per second to one source by default: far more than a person at
/// the prompt types, few enough that the server is no use as a reflector.
pub const DEFAULT_REPLIES_PER_SECOND: f64 = 50.0;
/// Receive buffer: the largest UDP payload, so nothing is cut (the
/// tutorial's `recvfrom(1024)` would drop the rest of a longer datagram).
pub const MAX_DATAGRAM: usize = 65_535;

/// The server side: one socket, one datagram at a time, answering only
/// what [`ReplyGuard`] allows (no loops, a rate per source).
#[derive(Debug)]
pub struct UdpUpperServer {
    limit: RateLimit,
    /// Made on the first datagram, when the bound port is known.
    guard: Mutex<Option<ReplyGuard>>,
    refused: Mutex<RefusalLog>,
}

/// Counts unanswered datagrams and logs them at most every
/// [`LOG_EVERY`], so a flood cannot fill the log.
#[derive(Debug, Default)]
struct RefusalLog {
    since_last: u64,
    last: Option<Instant>,
}

/// How often unanswered datagrams are reported.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl UdpUpperServer {
    /// A server answering each source at most `limit` times per second.
    pub fn new(limit: RateLimit) -> Self {
        UdpUpperServer {
            limit,
            guard: Mutex::new(None),
            refused: Mutex::new(RefusalLog::default()),
        }
    }

    /// Whether to answer `peer`; `socket` tells the server's own port.
    fn allowed(&self, peer: &PeerAddr, socket: &DatagramSocket) -> Result<(), Refusal> {
        let (PeerAddr::Ip(peer), DatagramSocket::Udp(udp)) = (peer, socket) else {
            // A Unix datagram sender's path is set by the kernel: no forging.
            return Ok(());
        };
        let mut guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        let guard = match &mut *guard {
            Some(g) => g,
            None => {
                let own_port = udp.local_addr().map(|a| a.port()).unwrap_or(0);
                guard.insert(ReplyGuard::new(own_port, self.limit))
            }
        };
        guard.check(*peer, Instant::now())
    }

    fn log_refusal(&self, peer: &PeerAddr, refusal: Refusal) {
        tracing::debug!(%peer, %refusal, "not answered");
        let mut log = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        log.since_last += 1;
        let now = Instant::now();
        if log.last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            tracing::warn!(
                count = log.since_last,
                last_peer = %peer,
                last_reason = %refusal,
                "datagrams not answered (possible loop or reflection attempt)"
            );
            log.since_last = 0;
            log.last = Some(now);
        }
    }
}

impl DatagramHandler for UdpUpperServer {
    async fn handle(&self, datagram: Datagram<'_>, socket: &DatagramSocket) {
        if let Err(refusal) = self.allowed(&datagram.peer, socket) {
            self.log_refusal(&datagram.peer, refusal);
            return;
        }
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
