//! UDP ping, client side (PROTOCOL.md section 6). The tagged datagrams
//! are sealed and opened by [`crate::auth::udp`].
//!
//! The pinger ([`run`]) sends one request per interval (or, with interval
//! 0, the next as soon as the previous one is answered or timed out), and
//! reports each reply, duplicate, reordering and timeout as a [`PingEvent`].

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use skiff_wire::message::udp::{Stamp, MAX_DATAGRAM};
use tokio::net::UdpSocket;

use super::ping::RttStats;
use super::ClientError;
use crate::auth::udp::{now_micros, open_reply, seal_request};
use crate::keys::UserKey;
use crate::maybe::sleep_until;

/// How many answered sequence numbers are remembered to recognize
/// duplicates (older ones are forgotten, keeping memory bounded).
const SEEN_WINDOW: u64 = 4096;

/// A fresh random run id.
pub fn new_sid() -> u64 {
    rand::random()
}

/// What to send.
#[derive(Debug, Clone)]
pub struct UdpPingOptions {
    /// Stop after this many requests (default: until interrupted).
    pub count: Option<u64>,
    /// Pause between requests; zero means "next as soon as the previous one
    /// is answered or timed out".
    pub interval: Duration,
    /// Body bytes per request.
    pub size: usize,
    /// How long to wait for each reply before counting it lost.
    pub timeout: Duration,
}

/// Something the pinger saw, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum PingEvent {
    /// A reply to an outstanding request.
    Reply {
        /// Its sequence number.
        seq: u64,
        /// Body bytes it carried.
        bytes: usize,
        /// Round trip time.
        rtt: Duration,
        /// It arrived after a reply to a later request.
        reordered: bool,
    },
    /// A second (or later) reply to an already answered request.
    Duplicate {
        /// Its sequence number.
        seq: u64,
    },
    /// No reply within the timeout.
    Timeout {
        /// Its sequence number.
        seq: u64,
    },
}

/// Totals of one run, for the summary.
#[derive(Debug, Clone, Default)]
pub struct UdpPingReport {
    /// Requests sent.
    pub transmitted: u64,
    /// Distinct requests answered (in time).
    pub received: u64,
    /// Extra replies to requests already answered.
    pub duplicates: u64,
    /// Replies that arrived after a reply to a later request.
    pub reordered: u64,
    /// Datagrams that were not an authentic reply of this run (wrong tag,
    /// another run's id, garbage), ignored.
    pub invalid: u64,
    /// Round trip times of the answered requests.
    pub rtt: RttStats,
}

/// Resolves `host:port` and opens a UDP socket connected to it (so only
/// that address's datagrams reach us).
pub async fn connect(host_port: &str) -> Result<UdpSocket, ClientError> {
    let connect_err = |source| ClientError::Connect {
        target: format!("udp://{host_port}"),
        source,
    };
    let addr = tokio::net::lookup_host(host_port)
        .await
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| {
            connect_err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolves to no address",
            ))
        })?;
    let local: std::net::SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().unwrap_or_else(|_| unreachable!())
    } else {
        "0.0.0.0:0".parse().unwrap_or_else(|_| unreachable!())
    };
    let socket = UdpSocket::bind(local).await.map_err(connect_err)?;
    socket.connect(addr).await.map_err(connect_err)?;
    Ok(socket)
}

/// Pings over `socket` (already connected) until `opts.count` requests
/// have been answered or timed out, or `stop` resolves. Each event is handed
/// to `on_event` as it happens.
pub async fn run(
    socket: &UdpSocket,
    key: &UserKey,
    opts: &UdpPingOptions,
    stop: impl Future<Output = ()>,
    mut on_event: impl FnMut(&PingEvent),
) -> Result<UdpPingReport, ClientError> {
    let mut pinger = Pinger::new(socket, key, opts);
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    tokio::pin!(stop);
    loop {
        let more = opts.count.is_none_or(|c| pinger.report.transmitted < c);
        let may_send = more && (!opts.interval.is_zero() || pinger.outstanding.is_empty());
        if !more && pinger.outstanding.is_empty() {
            break;
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(pinger.next_send), if may_send => pinger.send().await?,
            _ = sleep_until(pinger.expiry()) => pinger.expire(&mut on_event),
            received = socket.recv(&mut buf) => {
                // An error is "connection refused" from ICMP: nobody
                // listens (yet).
                if let Ok(n) = received {
                    pinger.on_datagram(&buf[..n.min(buf.len())], &mut on_event);
                }
            }
        }
    }
    Ok(pinger.report)
}

/// The state of one run: what was sent, what is still awaited, what was
/// answered.
struct Pinger<'a> {
    socket: &'a UdpSocket,
    key: &'a UserKey,
    opts: &'a UdpPingOptions,
    sid: u64,
    payload: Vec<u8>,
    report: UdpPingReport,
    /// Sent but not yet answered or timed out: seq -> send time.
    outstanding: BTreeMap<u64, Instant>,
    seen: HashSet<u64>,
    highest_answered: Option<u64>,
    next_send: tokio::time::Instant,
}

impl<'a> Pinger<'a> {
    fn new(socket: &'a UdpSocket, key: &'a UserKey, opts: &'a UdpPingOptions) -> Self {
        Pinger {
            socket,
            key,
            opts,
            sid: new_sid(),
            payload: (0..opts.size).map(|i| i as u8).collect(),
            report: UdpPingReport::default(),
            outstanding: BTreeMap::new(),
            seen: HashSet::new(),
            highest_answered: None,
            next_send: tokio::time::Instant::now(),
        }
    }

    /// When the oldest outstanding request times out, if any is.
    fn expiry(&self) -> Option<tokio::time::Instant> {
        self.outstanding
            .values()
            .min()
            .map(|sent| tokio::time::Instant::from_std(*sent + self.opts.timeout))
    }

    /// Sends the next request and schedules the one after it.
    async fn send(&mut self) -> Result<(), ClientError> {
        let seq = self.report.transmitted;
        let stamp = Stamp {
            user: self.key.user.clone(),
            sid: self.sid,
            seq,
            ts: now_micros(),
        };
        let datagram = seal_request(&self.key.key, stamp, &self.payload).ok_or_else(|| {
            ClientError::Local(format!(
                "a {}-byte request does not fit in one datagram",
                self.opts.size
            ))
        })?;
        let sent_at = Instant::now();
        if let Err(e) = self.socket.send(&datagram).await {
            // An ICMP error from an earlier datagram can surface
            // here; the request is simply lost.
            tracing::debug!(error = %e, "udp send failed");
        }
        self.outstanding.insert(seq, sent_at);
        self.report.transmitted += 1;
        self.next_send += self.opts.interval;
        let now = tokio::time::Instant::now();
        if self.next_send < now {
            self.next_send = now;
        }
        Ok(())
    }

    /// Counts every request past its timeout as lost.
    fn expire(&mut self, on_event: &mut impl FnMut(&PingEvent)) {
        let now = Instant::now();
        let timeout = self.opts.timeout;
        let expired: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|(_, sent)| **sent + timeout <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            self.outstanding.remove(&seq);
            on_event(&PingEvent::Timeout { seq });
        }
    }

    /// One datagram from the server: a reply, a duplicate, or not ours.
    fn on_datagram(&mut self, datagram: &[u8], on_event: &mut impl FnMut(&PingEvent)) {
        let Some((stamp, body)) = open_reply(&self.key.key, datagram)
            .filter(|(s, _)| s.sid == self.sid && s.user == self.key.user)
        else {
            self.report.invalid += 1;
            return;
        };
        let seq = stamp.seq;
        if let Some(sent) = self.outstanding.remove(&seq) {
            let rtt = sent.elapsed();
            if body.as_ref() != self.payload.as_slice() {
                self.report.invalid += 1;
                self.outstanding.insert(seq, sent);
                return;
            }
            let reordered = self.answered(seq, rtt);
            on_event(&PingEvent::Reply {
                seq,
                bytes: body.len(),
                rtt,
                reordered,
            });
        } else if self.seen.contains(&seq) {
            self.report.duplicates += 1;
            on_event(&PingEvent::Duplicate { seq });
        }
        // Otherwise: a late reply to a request already counted as
        // lost, ignored as ping(8) does without -O.
    }

    /// Records the first reply to `seq`; says whether it came out of order.
    fn answered(&mut self, seq: u64, rtt: Duration) -> bool {
        let reordered = self.highest_answered.is_some_and(|h| seq < h);
        self.highest_answered = Some(self.highest_answered.map_or(seq, |h| h.max(seq)));
        self.report.received += 1;
        self.report.reordered += u64::from(reordered);
        self.report.rtt.add(rtt);
        self.seen.insert(seq);
        if self.seen.len() as u64 > 2 * SEEN_WINDOW {
            let floor = self.report.transmitted.saturating_sub(SEEN_WINDOW);
            self.seen.retain(|s| *s >= floor);
        }
        reordered
    }
}
