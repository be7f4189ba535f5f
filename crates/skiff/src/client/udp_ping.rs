//! UDP ping, client side, and the datagram codec both sides share.
//!
//! Each datagram is one skiff frame (`udp_ping` or `udp_pong`, see
//! [`skiff_wire::message::udp`]) tagged with HMAC-SHA256 under the user's
//! key over [`signed_bytes`]. The codec functions here ([`seal_request`],
//! [`seal_reply`], [`open_reply`], [`verify_tag`]) are what the server's
//! `service::udp_ping` and the tests use too, so there is one encoding.
//!
//! The pinger ([`run`]) sends one request per interval (or, with interval
//! 0, the next as soon as the previous one is answered or timed out), and
//! reports each reply, duplicate, reordering and timeout as a [`PingEvent`].

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use skiff_wire::message::udp::{
    decode_datagram, signed_bytes, Stamp, UdpPing, UdpPong, MAX_DATAGRAM, PING_LABEL, PONG_LABEL,
};
use skiff_wire::Message;
use tokio::net::UdpSocket;

use super::ping::RttStats;
use super::ClientError;
use crate::keys::{Key, UserKey};

/// How many answered sequence numbers are remembered to recognize
/// duplicates (older ones are forgotten, keeping memory bounded).
const SEEN_WINDOW: u64 = 4096;

fn mac(key: &Key, label: &[u8; 16], stamp: &Stamp, body: &[u8]) -> Option<Hmac<Sha256>> {
    let bytes = signed_bytes(label, stamp, body)?;
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(&bytes);
    Some(m)
}

/// The base64 tag of a datagram (`None` if the stamp cannot be signed: a
/// user name over 255 bytes).
pub fn tag(key: &Key, label: &[u8; 16], stamp: &Stamp, body: &[u8]) -> Option<String> {
    Some(B64.encode(mac(key, label, stamp, body)?.finalize().into_bytes()))
}

/// Checks a received base64 tag in constant time. A tag that is not valid
/// base64 of 32 bytes fails like a wrong one.
pub fn verify_tag(key: &Key, label: &[u8; 16], stamp: &Stamp, body: &[u8], got: &str) -> bool {
    let Some(m) = mac(key, label, stamp, body) else {
        return false;
    };
    let got = B64.decode(got).unwrap_or_default();
    m.verify_slice(&got).is_ok()
}

fn seal<M: Message>(
    key: &Key,
    label: &[u8; 16],
    stamp: Stamp,
    body: &[u8],
    wrap: fn(Stamp, String) -> M,
) -> Option<BytesMut> {
    let tag = tag(key, label, &stamp, body)?;
    let mut out = BytesMut::new();
    skiff_wire::encode_frame(&wrap(stamp, tag), body, &mut out).ok()?;
    (out.len() <= MAX_DATAGRAM).then_some(out)
}

/// Encodes a tagged request datagram. `None` when it cannot be sent (user
/// name too long, or larger than one datagram).
pub fn seal_request(key: &Key, stamp: Stamp, body: &[u8]) -> Option<BytesMut> {
    seal(key, PING_LABEL, stamp, body, |stamp, tag| UdpPing {
        stamp,
        tag,
    })
}

/// Encodes a tagged reply datagram (the server's side).
pub fn seal_reply(key: &Key, stamp: Stamp, body: &[u8]) -> Option<BytesMut> {
    seal(key, PONG_LABEL, stamp, body, |stamp, tag| UdpPong {
        stamp,
        tag,
    })
}

/// Reads a reply datagram and checks its tag under `key`; `None` for
/// anything that is not an authentic `udp_pong`.
pub fn open_reply(key: &Key, datagram: &[u8]) -> Option<(Stamp, Bytes)> {
    let frame = decode_datagram(datagram).ok()?;
    let pong = frame.parse::<UdpPong>().ok()?;
    verify_tag(key, PONG_LABEL, &pong.stamp, frame.body(), &pong.tag)
        .then(|| (pong.stamp, frame.into_body()))
}

/// Microseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

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
    let sid = new_sid();
    let payload: Vec<u8> = (0..opts.size).map(|i| i as u8).collect();
    let mut report = UdpPingReport::default();
    // Sent but not yet answered or timed out: seq -> send time.
    let mut outstanding: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut highest_answered: Option<u64> = None;
    let mut next_send = tokio::time::Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    tokio::pin!(stop);
    loop {
        let more = opts.count.is_none_or(|c| report.transmitted < c);
        let may_send = more && (!opts.interval.is_zero() || outstanding.is_empty());
        if !more && outstanding.is_empty() {
            break;
        }
        let expiry = outstanding
            .values()
            .min()
            .map(|sent| tokio::time::Instant::from_std(*sent + opts.timeout));
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(next_send), if may_send => {
                let seq = report.transmitted;
                let stamp = Stamp { user: key.user.clone(), sid, seq, ts: now_micros() };
                let datagram = seal_request(&key.key, stamp, &payload).ok_or_else(|| {
                    ClientError::Local(format!(
                        "a {}-byte request does not fit in one datagram",
                        opts.size
                    ))
                })?;
                let sent_at = Instant::now();
                if let Err(e) = socket.send(&datagram).await {
                    // An ICMP error from an earlier datagram can surface
                    // here; the request is simply lost.
                    tracing::debug!(error = %e, "udp send failed");
                }
                outstanding.insert(seq, sent_at);
                report.transmitted += 1;
                next_send += opts.interval;
                let now = tokio::time::Instant::now();
                if next_send < now {
                    next_send = now;
                }
            }
            _ = sleep_until_opt(expiry) => {
                let now = Instant::now();
                let expired: Vec<u64> = outstanding
                    .iter()
                    .filter(|(_, sent)| **sent + opts.timeout <= now)
                    .map(|(seq, _)| *seq)
                    .collect();
                for seq in expired {
                    outstanding.remove(&seq);
                    on_event(&PingEvent::Timeout { seq });
                }
            }
            received = socket.recv(&mut buf) => {
                let Ok(n) = received else {
                    // "Connection refused" from ICMP: nobody listens (yet).
                    continue;
                };
                let Some((stamp, body)) = open_reply(&key.key, &buf[..n.min(buf.len())])
                    .filter(|(s, _)| s.sid == sid && s.user == key.user)
                else {
                    report.invalid += 1;
                    continue;
                };
                let seq = stamp.seq;
                if let Some(sent) = outstanding.remove(&seq) {
                    let rtt = sent.elapsed();
                    if body.as_ref() != payload.as_slice() {
                        report.invalid += 1;
                        outstanding.insert(seq, sent);
                        continue;
                    }
                    let reordered = highest_answered.is_some_and(|h| seq < h);
                    highest_answered = Some(highest_answered.map_or(seq, |h| h.max(seq)));
                    report.received += 1;
                    report.reordered += u64::from(reordered);
                    report.rtt.add(rtt);
                    seen.insert(seq);
                    if seen.len() as u64 > 2 * SEEN_WINDOW {
                        let floor = report.transmitted.saturating_sub(SEEN_WINDOW);
                        seen.retain(|s| *s >= floor);
                    }
                    on_event(&PingEvent::Reply { seq, bytes: body.len(), rtt, reordered });
                } else if seen.contains(&seq) {
                    report.duplicates += 1;
                    on_event(&PingEvent::Duplicate { seq });
                }
                // Otherwise: a late reply to a request already counted as
                // lost, ignored as ping(8) does without -O.
            }
        }
    }
    Ok(report)
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            user: "alice".into(),
            sid: 7,
            seq: 1,
            ts: now_micros(),
        }
    }

    #[test]
    fn reply_round_trip_and_direction() {
        let key = Key::generate();
        let reply = seal_reply(&key, stamp(), b"abc").unwrap();
        let (s, body) = open_reply(&key, &reply).unwrap();
        assert_eq!((s.sid, s.seq, body.as_ref()), (7, 1, &b"abc"[..]));
        // A request is never accepted as a reply, even with the right key.
        let request = seal_request(&key, stamp(), b"abc").unwrap();
        assert!(open_reply(&key, &request).is_none());
        // Wrong key, flipped body bit.
        assert!(open_reply(&Key::generate(), &reply).is_none());
        let mut bad = reply.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open_reply(&key, &bad).is_none());
    }

    #[test]
    fn malformed_tags_fail() {
        let key = Key::generate();
        let s = stamp();
        let good = tag(&key, PING_LABEL, &s, b"").unwrap();
        assert!(verify_tag(&key, PING_LABEL, &s, b"", &good));
        assert!(!verify_tag(&key, PONG_LABEL, &s, b"", &good));
        assert!(!verify_tag(&key, PING_LABEL, &s, b"", ""));
        assert!(!verify_tag(&key, PING_LABEL, &s, b"", "!!"));
        assert!(!verify_tag(&key, PING_LABEL, &s, b"", &good[..20]));
    }

    #[test]
    fn oversized_requests_are_refused() {
        let key = Key::generate();
        assert!(seal_request(&key, stamp(), &vec![0u8; MAX_DATAGRAM]).is_none());
        let max = skiff_wire::message::udp::MAX_UDP_BODY;
        assert!(seal_request(&key, stamp(), &vec![0u8; max]).is_some());
    }
}
