//! Caps on connections that have not yet been established (in a protocol
//! with a login: not yet authenticated), after OpenSSH's `MaxStartups` and
//! `PerSourceMaxStartups`.
//!
//! A peer that connects and says nothing costs the server a socket and a
//! task until its handshake times out. Without a cap per source, one
//! address can open thousands of them and leave no room for anybody else;
//! without a cap in total, many addresses can. With [`StartupLimits`] set
//! ([`ServerBuilder::max_startups`](crate::ServerBuilder::max_startups)):
//!
//! - each source (an IPv4 address, an IPv6 /64, a Unix user id) may have
//!   at most `per_source` connections not yet established; more are closed
//!   at once;
//! - in total, from `start` on a new connection is dropped with a
//!   probability that rises linearly from `rate` percent to 100 % at
//!   `full` (random early drop, so a flood cannot predict and fill the
//!   last slots);
//! - established connections (the handler called
//!   [`Startup::establish`]) no longer count here but against
//!   `max_connections`, so a flood of handshakes never evicts or starves a
//!   logged-in session.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Who a connection is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address, or the /64 prefix of an IPv6 address (one host
    /// usually owns a whole /64; IPv4-mapped IPv6 counts as IPv4).
    Ip(IpAddr),
    /// A Unix socket peer's user id.
    Uid(u32),
    /// A Unix peer whose credentials could not be read.
    Unknown,
}

impl Source {
    /// The source an IP address belongs to.
    pub fn of_ip(ip: IpAddr) -> Source {
        Source::Ip(match ip.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ip(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            Source::Ip(ip) => write!(f, "{ip}"),
            Source::Uid(uid) => write!(f, "uid {uid}"),
            Source::Unknown => f.write_str("unknown unix peer"),
        }
    }
}

/// The caps (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupLimits {
    /// From this many connections in the handshake on, new ones are
    /// dropped at random.
    pub start: usize,
    /// The drop probability at `start`, in percent.
    pub rate: u8,
    /// At this many, every new connection is dropped.
    pub full: usize,
    /// Most connections in the handshake from one source.
    pub per_source: usize,
}

impl Default for StartupLimits {
    /// `64:30:256`, 16 per source.
    fn default() -> Self {
        StartupLimits {
            start: 64,
            rate: 30,
            full: 256,
            per_source: 16,
        }
    }
}

impl FromStr for StartupLimits {
    type Err = String;

    /// `START:RATE:FULL` as in sshd_config, or a single `N` (no random
    /// drop: every connection up to N, none past it). `per_source` keeps
    /// its default.
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |v: &str| {
            v.trim().parse::<usize>().map_err(|_| {
                format!("{s:?}: {v:?} is not a number (use START:RATE:FULL, e.g. 64:30:256)")
            })
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (start, rate, full) = match parts.as_slice() {
            [n] => {
                let n = num(n)?;
                (n, 100, n)
            }
            [a, r, f] => (num(a)?, num(r)?, num(f)?),
            _ => return Err(format!("{s:?} is not START:RATE:FULL (e.g. 64:30:256)")),
        };
        if start == 0 || full < start || rate > 100 {
            return Err(format!("{s:?}: need 1 <= START <= FULL and RATE <= 100"));
        }
        Ok(StartupLimits {
            start,
            rate: rate as u8,
            full,
            ..StartupLimits::default()
        })
    }
}

/// Why a new connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Its source has `per_source` connections in the handshake.
    PerSource,
    /// Random early drop between `start` and `full`, or `full` reached.
    Total,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<Source, usize>,
}

/// The live counts, shared by every listener of a server.
#[derive(Debug)]
pub(crate) struct Startups {
    limits: StartupLimits,
    counts: Mutex<Counts>,
}

impl Startups {
    pub(crate) fn new(limits: StartupLimits) -> Arc<Startups> {
        Arc::new(Startups {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection from `source`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, source: Source) -> Result<StartupSlot, Dropped> {
        let l = self.limits;
        let mut c = self.counts();
        if c.per_source.get(&source).copied().unwrap_or(0) >= l.per_source.max(1) {
            return Err(Dropped::PerSource);
        }
        if c.total >= l.full {
            return Err(Dropped::Total);
        }
        if c.total >= l.start {
            // OpenSSH's formula: rate at start, rising linearly to 100 %.
            let span = (l.full - l.start).max(1) as f64;
            let p = f64::from(l.rate) / 100.0
                + (1.0 - f64::from(l.rate) / 100.0) * (c.total - l.start) as f64 / span;
            if rand::random::<f64>() < p {
                return Err(Dropped::Total);
            }
        }
        c.total += 1;
        *c.per_source.entry(source).or_insert(0) += 1;
        Ok(StartupSlot {
            startups: self.clone(),
            source,
        })
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.counts().total
    }
}

/// One counted connection in the handshake; dropping it uncounts it.
#[derive(Debug)]
pub(crate) struct StartupSlot {
    startups: Arc<Startups>,
    source: Source,
}

impl Drop for StartupSlot {
    fn drop(&mut self) {
        let mut c = self.startups.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

/// A connection's place in the server's limits, taken from it with
/// [`Connection::take_startup`](crate::Connection::take_startup) so that a
/// handler can establish the connection while it holds the stream.
#[derive(Debug)]
pub struct Startup {
    slot: Option<StartupSlot>,
    /// Held from accept when the server has no startup limits.
    permit: Option<OwnedSemaphorePermit>,
    sessions: Arc<Semaphore>,
}

/// The server is at `max_connections` established connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server is at its connection limit")]
pub struct Busy;

/// An established connection's slot under `max_connections`; dropping it
/// frees the slot.
#[derive(Debug)]
pub struct Established {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Startup {
    pub(crate) fn new(
        slot: Option<StartupSlot>,
        permit: Option<OwnedSemaphorePermit>,
        sessions: Arc<Semaphore>,
    ) -> Startup {
        Startup {
            slot,
            permit,
            sessions,
        }
    }

    /// The handshake succeeded: stop counting this connection as a startup
    /// and count it against `max_connections` instead. Keep the result for
    /// as long as the connection is served. `Err(Busy)` when every slot is
    /// taken (the handler then says so in its protocol and closes).
    pub fn establish(mut self) -> Result<Established, Busy> {
        if let Some(p) = self.permit.take() {
            return Ok(Established { _permit: Some(p) });
        }
        let permit = self
            .sessions
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        self.slot = None;
        Ok(Established {
            _permit: Some(permit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_sshd() {
        let l: StartupLimits = "10:30:100".parse().unwrap();
        assert_eq!((l.start, l.rate, l.full), (10, 30, 100));
        let l: StartupLimits = "7".parse().unwrap();
        assert_eq!((l.start, l.rate, l.full), (7, 100, 7));
        for bad in ["", "0", "10:30", "10:101:100", "20:30:10", "a:b:c"] {
            assert!(bad.parse::<StartupLimits>().is_err(), "{bad}");
        }
    }

    #[test]
    fn per_source_cap_leaves_room_for_others() {
        let s = Startups::new(StartupLimits {
            start: 100,
            rate: 30,
            full: 100,
            per_source: 3,
        });
        let a = Source::of_ip("192.0.2.1".parse().unwrap());
        let held: Vec<_> = (0..3).map(|_| s.admit(a).unwrap()).collect();
        assert_eq!(s.admit(a).unwrap_err(), Dropped::PerSource);
        // The same /64 is the same source; another address is not.
        let v6 = Source::of_ip("2001:db8::1".parse().unwrap());
        assert_eq!(v6, Source::of_ip("2001:db8::2".parse().unwrap()));
        assert!(s.admit(Source::of_ip("192.0.2.2".parse().unwrap())).is_ok());
        drop(held);
        assert!(s.admit(a).is_ok());
        assert_eq!(s.total(), 0, "every slot given back");
    }

    #[test]
    fn total_drops_early_and_at_full() {
        let s = Startups::new(StartupLimits {
            start: 10,
            rate: 50,
            full: 20,
            per_source: 1,
        });
        let mut held = Vec::new();
        let mut dropped = 0;
        for i in 0..200u32 {
            match s.admit(Source::Uid(i)) {
                Ok(slot) => held.push(slot),
                Err(Dropped::Total) => dropped += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(held.len() >= 10 && held.len() <= 20, "{}", held.len());
        assert!(dropped >= 180);
    }

    #[test]
    fn establishing_moves_the_count() {
        let s = Startups::new(StartupLimits::default());
        let sessions = Arc::new(Semaphore::new(1));
        let slot = s.admit(Source::Uid(1)).unwrap();
        let st = Startup::new(Some(slot), None, sessions.clone());
        let est = st.establish().unwrap();
        assert_eq!(s.total(), 0);
        let slot = s.admit(Source::Uid(1)).unwrap();
        let st = Startup::new(Some(slot), None, sessions.clone());
        assert_eq!(st.establish().unwrap_err(), Busy);
        assert_eq!(s.total(), 0);
        drop(est);
        assert_eq!(sessions.available_permits(), 1);
    }
}
