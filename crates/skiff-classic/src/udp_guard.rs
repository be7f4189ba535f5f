//! Which datagrams an echo server may answer.
//!
//! An echo server answers whoever a datagram says it came from, and UDP
//! source addresses can be forged. Two dangers follow. A datagram whose
//! source is the server itself (or another echo-like service: echo,
//! chargen, daytime, ...) makes the server talk to itself or to that
//! service forever, one reply provoking the next (inetd's `check_loop`
//! refuses these). And a flood with a victim's address as source makes
//! the server a reflector. So: no answer to a source that could loop
//! ([`loop_risk`]), and at most so many answers per second to one source
//! ([`ReplyGuard`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Source ports of services that answer whatever they are sent (or send
/// unasked), so that a reply to them could come back as a new request:
/// the classic inetd loop ports (echo 7, discard 9, daytime 13, qotd 17,
/// chargen 19, time 37), and services that answer junk with an error or a
/// large reply (DNS 53, TFTP 69, portmap 111, NTP 123, NetBIOS 137/138,
/// SNMP 161/162, CLDAP 389, IKE 500, RIP 520, SSDP 1900, mDNS 5353,
/// memcached 11211).
pub const LOOP_PORTS: &[u16] = &[
    7, 9, 13, 17, 19, 37, 53, 69, 111, 123, 137, 138, 161, 162, 389, 500, 520, 1900, 5353, 11211,
];

/// Why a datagram is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Port 0 is never a real sender: the source is forged.
    #[error("source port 0 (forged)")]
    PortZero,
    /// From the server's own port, on this host (the server itself,
    /// forged) or another (a second echo server): answering would loop.
    #[error("source port is the server's own port {0}: an answer would loop")]
    OwnPort(u16),
    /// From a service port that answers what it is sent ([`LOOP_PORTS`]).
    #[error("source port {0} belongs to a service that answers back: an answer could loop")]
    LoopPort(u16),
    /// From an address no single host sends from (unspecified, broadcast,
    /// multicast): forged.
    #[error("source address {0} cannot be a sender")]
    SourceAddress(IpAddr),
    /// Over this source's reply rate.
    #[error("over the reply rate for this source")]
    RateLimited,
}

/// Whether answering `peer` could start a loop or answers a forged source.
/// `own_port` is the port the server is bound to.
pub fn loop_risk(peer: SocketAddr, own_port: u16) -> Option<Refusal> {
    let port = peer.port();
    if port == 0 {
        return Some(Refusal::PortZero);
    }
    if port == own_port {
        return Some(Refusal::OwnPort(port));
    }
    if LOOP_PORTS.contains(&port) {
        return Some(Refusal::LoopPort(port));
    }
    let ip = canonical(peer.ip());
    let impossible = match ip {
        IpAddr::V4(a) => a.is_unspecified() || a.is_broadcast() || a.is_multicast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
    };
    impossible.then_some(Refusal::SourceAddress(ip))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What one rate-limit bucket stands for: an IPv4 address, or an IPv6 /64
/// (one host usually holds a whole /64, so per-address limits would be
/// no limit at all).
fn source_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// How fast one source may be answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Replies per second, sustained.
    pub per_second: f64,
    /// Replies allowed at once after a quiet spell.
    pub burst: f64,
}

impl RateLimit {
    /// `per_second` sustained, with a burst of twice that (at least 1).
    pub fn per_second(per_second: f64) -> Self {
        RateLimit {
            per_second,
            burst: (per_second * 2.0).max(1.0),
        }
    }
}

/// Most sources whose rate is tracked at once (about 40 bytes each).
pub const MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The server's answer policy: [`loop_risk`], then a token bucket per
/// source. Its memory is bounded by [`MAX_SOURCES`]: when the table is
/// full, sources whose bucket has refilled (quiet for a while) are
/// forgotten; if every tracked source is still active, a new source is
/// not answered until some go quiet. That fails closed: a flood of forged
/// sources can make the server ignore newcomers for a couple of seconds,
/// but never turns it into a reflector.
#[derive(Debug)]
pub struct ReplyGuard {
    own_port: u16,
    limit: RateLimit,
    max_sources: usize,
    sources: HashMap<IpAddr, Bucket>,
}

impl ReplyGuard {
    /// A guard for a server bound to port `own_port`.
    pub fn new(own_port: u16, limit: RateLimit) -> Self {
        Self::with_capacity(own_port, limit, MAX_SOURCES)
    }

    fn with_capacity(own_port: u16, limit: RateLimit, max_sources: usize) -> Self {
        ReplyGuard {
            own_port,
            limit,
            max_sources: max_sources.max(1),
            sources: HashMap::new(),
        }
    }

    /// Whether to answer a datagram from `peer` arriving at `now`; an
    /// answer is counted against the source's rate.
    pub fn check(&mut self, peer: SocketAddr, now: Instant) -> Result<(), Refusal> {
        if let Some(refusal) = loop_risk(peer, self.own_port) {
            return Err(refusal);
        }
        let key = source_key(peer.ip());
        if !self.sources.contains_key(&key) && self.sources.len() >= self.max_sources {
            self.forget_quiet(now);
            if self.sources.len() >= self.max_sources {
                return Err(Refusal::RateLimited);
            }
        }
        let limit = self.limit;
        let bucket = self.sources.entry(key).or_insert(Bucket {
            tokens: limit.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(limit.burst);
        bucket.last = now;
        if bucket.tokens < 1.0 {
            return Err(Refusal::RateLimited);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Drops the sources whose bucket would be full again by `now`: they
    /// are indistinguishable from sources never seen.
    fn forget_quiet(&mut self, now: Instant) {
        let refill = Duration::from_secs_f64(if self.limit.per_second > 0.0 {
            self.limit.burst / self.limit.per_second
        } else {
            f64::from(u32::MAX)
        });
        self.sources
            .retain(|_, b| now.saturating_duration_since(b.last) < refill);
    }

    /// How many sources are tracked (for tests and monitoring).
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loops_and_forged_sources_are_not_answered() {
        let own = 8080;
        assert_eq!(loop_risk(addr("127.0.0.1:0"), own), Some(Refusal::PortZero));
        // The server's own address and port (a forged self-addressed
        // datagram), and the same port elsewhere (a twin echo server).
        assert_eq!(
            loop_risk(addr("127.0.0.1:8080"), own),
            Some(Refusal::OwnPort(8080))
        );
        assert_eq!(
            loop_risk(addr("[::1]:8080"), own),
            Some(Refusal::OwnPort(8080))
        );
        assert_eq!(
            loop_risk(addr("192.0.2.7:8080"), own),
            Some(Refusal::OwnPort(8080))
        );
        for port in [7, 13, 19, 37, 53, 123] {
            let peer = SocketAddr::new("198.51.100.1".parse().unwrap(), port);
            assert_eq!(loop_risk(peer, own), Some(Refusal::LoopPort(port)));
        }
        for bad in [
            "0.0.0.0:5000",
            "255.255.255.255:5000",
            "224.0.0.1:5000",
            "[::]:5000",
            "[ff02::1]:5000",
            "[::ffff:255.255.255.255]:5000",
        ] {
            assert!(
                matches!(loop_risk(addr(bad), own), Some(Refusal::SourceAddress(_))),
                "{bad}"
            );
        }
        for ok in ["127.0.0.1:40000", "[::1]:40000", "10.1.2.3:1024"] {
            assert_eq!(loop_risk(addr(ok), own), None, "{ok}");
        }
    }

    #[test]
    fn replies_per_source_are_rate_limited_and_refill() {
        let mut guard = ReplyGuard::new(8080, RateLimit::per_second(10.0));
        let t0 = Instant::now();
        let a = addr("127.0.0.1:40000");
        // The burst (20), then nothing more at the same instant.
        let answered = (0..100).filter(|_| guard.check(a, t0).is_ok()).count();
        assert_eq!(answered, 20);
        // Another port of the same host shares the bucket.
        assert_eq!(
            guard.check(addr("127.0.0.1:40001"), t0),
            Err(Refusal::RateLimited)
        );
        // Another host does not.
        assert!(guard.check(addr("127.0.0.2:40000"), t0).is_ok());
        // Half a second later: five more (10 per second).
        let t1 = t0 + Duration::from_millis(500);
        let answered = (0..100).filter(|_| guard.check(a, t1).is_ok()).count();
        assert_eq!(answered, 5);
        // A long quiet spell refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        let answered = (0..100).filter(|_| guard.check(a, t2).is_ok()).count();
        assert_eq!(answered, 20);
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let mut guard = ReplyGuard::new(8080, RateLimit::per_second(1.0));
        let t = Instant::now();
        assert!(guard.check(addr("[2001:db8:1:2::1]:5000"), t).is_ok());
        assert!(guard.check(addr("[2001:db8:1:2:ffff::9]:5001"), t).is_ok());
        // The /64's burst of 2 is used up, whatever the interface id.
        assert_eq!(
            guard.check(addr("[2001:db8:1:2:abcd::1]:5002"), t),
            Err(Refusal::RateLimited)
        );
        assert!(guard.check(addr("[2001:db8:1:3::1]:5000"), t).is_ok());
        // IPv4-mapped is the IPv4 address.
        assert!(guard.check(addr("192.0.2.1:5000"), t).is_ok());
        assert!(guard.check(addr("[::ffff:192.0.2.1]:5000"), t).is_ok());
        assert_eq!(
            guard.check(addr("192.0.2.1:5000"), t),
            Err(Refusal::RateLimited)
        );
    }

    #[test]
    fn the_source_table_stays_bounded_and_fails_closed() {
        let mut guard = ReplyGuard::with_capacity(8080, RateLimit::per_second(1.0), 3);
        let t0 = Instant::now();
        for i in 1..=3 {
            assert!(guard.check(addr(&format!("10.0.0.{i}:5000")), t0).is_ok());
        }
        // Full of active sources: a fourth is not answered, and not stored.
        assert_eq!(
            guard.check(addr("10.0.0.4:5000"), t0),
            Err(Refusal::RateLimited)
        );
        assert_eq!(guard.tracked_sources(), 3);
        // Once they have been quiet long enough to refill, they make room.
        let later = t0 + Duration::from_secs(3);
        assert!(guard.check(addr("10.0.0.4:5000"), later).is_ok());
        assert!(guard.tracked_sources() <= 3);
        // A forged flood from many addresses never grows the table.
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let _ = guard.check(SocketAddr::new(ip.into(), 5000), later);
        }
        assert!(guard.tracked_sources() <= 3);
    }
}
