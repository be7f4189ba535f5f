//! Graduated penalties per source address, in the spirit of OpenSSH's
//! `PerSourcePenalties`, but never a lockout.
//!
//! Keys are 256 random bits, so no rate of guessing matters; what a flood
//! of failing handshakes can hurt is the server's CPU (each costs a TLS
//! handshake and two HMACs). So a source that keeps failing is *slowed
//! down*, never refused: each new connection from it waits a delay before
//! the server spends anything on it, and that delay grows with its recent
//! failures, up to a small bound. A correct key from the same address (a
//! colleague behind the same NAT, every local user on `127.0.0.1`) still
//! logs in, at most that bound later.
//!
//! The score of a source is its recent failures: each failure adds one,
//! and one is forgiven per [`PenaltyPolicy::forgive_every`] (a leaky
//! bucket). The first [`PenaltyPolicy::free_failures`] cost nothing; past
//! them the delay is 100 ms, doubling with each further failure, at most
//! [`PenaltyPolicy::max_delay`]. Counting unit: [`Source`], an IPv4
//! address or the /64 of an IPv6 address (one host usually owns a whole
//! /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use skiff_net::Source;

/// The delay of the first failure past the free ones; each further
/// failure doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(100);

/// Most sources remembered at once. When full, sources whose score has
/// decayed go first; if none has, the table starts over (an attacker who
/// controls that many addresses gains one free round).
pub const MAX_TRACKED: usize = 4096;

/// How penalties grow and fade.
#[derive(Debug, Clone)]
pub struct PenaltyPolicy {
    /// Recent failures from one source that cost nothing.
    pub free_failures: u32,
    /// The largest delay a source can earn.
    pub max_delay: Duration,
    /// One failure is forgiven per this much time.
    pub forgive_every: Duration,
    /// Networks never penalized (monitoring hosts, a trusted bastion).
    pub exempt: Vec<IpNet>,
}

impl Default for PenaltyPolicy {
    fn default() -> Self {
        PenaltyPolicy {
            free_failures: 3,
            max_delay: Duration::from_secs(2),
            forgive_every: Duration::from_secs(5),
            exempt: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Score {
    /// Recent failures, decayed to `at`.
    value: f64,
    at: Instant,
    /// The current penalty of this source has been reported.
    announced: bool,
}

/// The penalty table. Bounded in size ([`MAX_TRACKED`]).
#[derive(Debug)]
pub struct Penalties {
    policy: PenaltyPolicy,
    table: HashMap<Source, Score>,
}

/// What a recorded failure did to its source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recorded {
    /// No penalty (yet), or one already reported.
    Quiet,
    /// This failure started a penalty: report it (once).
    PenaltyBegins {
        /// The delay the source's next connections wait.
        delay: Duration,
        /// Its recent failures.
        failures: u32,
    },
}

impl Penalties {
    /// An empty table.
    pub fn new(policy: PenaltyPolicy) -> Penalties {
        Penalties {
            policy,
            table: HashMap::new(),
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.policy.exempt.iter().any(|n| n.contains(&ip))
    }

    /// The score of `key` now (decayed), `None` when it has faded away.
    fn decayed(&self, s: &Score, now: Instant) -> f64 {
        let forgive = self.policy.forgive_every.as_secs_f64().max(1e-3);
        let faded = now.saturating_duration_since(s.at).as_secs_f64() / forgive;
        (s.value - faded).max(0.0)
    }

    fn delay_for(&self, score: f64) -> Duration {
        let excess = score - f64::from(self.policy.free_failures);
        if excess <= 0.0 {
            return Duration::ZERO;
        }
        // Whole failures only: a half-forgiven failure still counts.
        let doublings = (excess.ceil() - 1.0).clamp(0.0, 30.0);
        let d = FIRST_DELAY.as_secs_f64() * 2f64.powf(doublings);
        Duration::from_secs_f64(d).min(self.policy.max_delay)
    }

    /// How long a new connection from `ip` waits before it is served.
    pub fn delay(&mut self, ip: IpAddr) -> Duration {
        if self.exempt(ip) {
            return Duration::ZERO;
        }
        let key = Source::of_ip(ip);
        let now = Instant::now();
        let Some(s) = self.table.get(&key).copied() else {
            return Duration::ZERO;
        };
        let score = self.decayed(&s, now);
        if score <= 0.0 {
            self.table.remove(&key);
            return Duration::ZERO;
        }
        let d = self.delay_for(score);
        if d.is_zero() {
            if let Some(e) = self.table.get_mut(&key) {
                e.announced = false;
            }
        }
        d
    }

    /// Counts one failure (a wrong proof, a client that left after the
    /// challenge, a handshake that timed out or broke the rules).
    pub fn record(&mut self, ip: IpAddr) -> Recorded {
        if self.exempt(ip) {
            return Recorded::Quiet;
        }
        let key = Source::of_ip(ip);
        let now = Instant::now();
        if self.table.len() >= MAX_TRACKED && !self.table.contains_key(&key) {
            let decayed: Vec<Source> = self
                .table
                .iter()
                .filter(|(_, s)| self.decayed(s, now) <= 0.0)
                .map(|(k, _)| *k)
                .collect();
            for k in decayed {
                self.table.remove(&k);
            }
            if self.table.len() >= MAX_TRACKED {
                self.table.clear();
            }
        }
        let old = self.table.get(&key).copied();
        let (before, announced) = match old {
            Some(s) => (self.decayed(&s, now), s.announced),
            None => (0.0, false),
        };
        let value = before + 1.0;
        let delay = self.delay_for(value);
        let begins = !delay.is_zero() && (!announced || self.delay_for(before).is_zero());
        self.table.insert(
            key,
            Score {
                value,
                at: now,
                announced: !delay.is_zero(),
            },
        );
        if begins {
            Recorded::PenaltyBegins {
                delay,
                failures: value.ceil() as u32,
            }
        } else {
            Recorded::Quiet
        }
    }

    /// Sources currently remembered.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(free: u32, forgive_ms: u64) -> PenaltyPolicy {
        PenaltyPolicy {
            free_failures: free,
            max_delay: Duration::from_secs(2),
            forgive_every: Duration::from_millis(forgive_ms),
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    #[test]
    fn delay_grows_doubles_is_bounded_and_reported_once() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut p = Penalties::new(policy(3, 60_000));
        for _ in 0..3 {
            assert_eq!(p.record(ip), Recorded::Quiet);
            assert_eq!(p.delay(ip), Duration::ZERO);
        }
        match p.record(ip) {
            Recorded::PenaltyBegins { delay, failures } => {
                assert_eq!(delay, Duration::from_millis(100));
                assert_eq!(failures, 4);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.delay(ip), Duration::from_millis(100));
        assert_eq!(p.record(ip), Recorded::Quiet, "reported once");
        let d5 = p.delay(ip);
        assert!(d5 >= Duration::from_millis(199), "{d5:?}");
        for _ in 0..100 {
            assert_eq!(p.record(ip), Recorded::Quiet);
        }
        assert_eq!(p.delay(ip), Duration::from_secs(2), "bounded");
        // Another address is untouched.
        assert_eq!(p.delay("192.0.2.2".parse().unwrap()), Duration::ZERO);
    }

    #[test]
    fn penalties_fade_and_a_new_one_is_reported_again() {
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let mut p = Penalties::new(policy(1, 20));
        p.record(ip);
        assert!(matches!(p.record(ip), Recorded::PenaltyBegins { .. }));
        assert!(!p.delay(ip).is_zero());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(p.delay(ip), Duration::ZERO, "forgiven");
        p.record(ip);
        assert!(matches!(p.record(ip), Recorded::PenaltyBegins { .. }));
    }

    #[test]
    fn ipv6_counts_per_64_prefix_and_mapped_v4_as_v4() {
        let mut p = Penalties::new(policy(1, 60_000));
        p.record("2001:db8::1".parse().unwrap());
        p.record("2001:db8::ffff:2".parse().unwrap());
        assert!(!p.delay("2001:db8::3".parse().unwrap()).is_zero());
        assert!(p.delay("2001:db8:0:1::1".parse().unwrap()).is_zero());
        p.record("::ffff:192.0.2.7".parse().unwrap());
        p.record("192.0.2.7".parse().unwrap());
        assert!(!p.delay("192.0.2.7".parse().unwrap()).is_zero());
    }

    #[test]
    fn exempt_networks_are_never_penalized() {
        let mut p = Penalties::new(policy(0, 60_000));
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        for _ in 0..20 {
            assert_eq!(p.record(ip), Recorded::Quiet);
        }
        assert_eq!(p.delay(ip), Duration::ZERO);
        assert_eq!(p.tracked(), 0);
    }

    #[test]
    fn table_stays_bounded() {
        let mut p = Penalties::new(policy(3, 60_000));
        for i in 0..(MAX_TRACKED as u32 * 2) {
            p.record(IpAddr::from((i | 0x0100_0000).to_be_bytes()));
        }
        assert!(p.tracked() <= MAX_TRACKED);
    }
}
