//! UDP ping, server side: answers authentic, fresh, first-seen `udp_ping`
//! datagrams with a tagged `udp_pong` carrying the same body.
//!
//! Everything else is dropped without an answer (so the server is no
//! oracle and no reflector), counted by reason, and logged at most once per
//! [`LOG_EVERY`]. Checks, in order: the datagram was not truncated and is
//! exactly one `udp_ping` frame; its tag verifies under the named user's
//! key (unknown users are checked against a dummy key and fail the same
//! way, in the same time); its timestamp is within the freshness window of
//! the server's clock; its `(sid, seq)` was not seen before. Only that last
//! check keeps state, and only for users whose key verified: at most
//! [`MAX_RUNS_PER_USER`] replay windows of [`REPLAY_WINDOW`] bits per
//! known user, whatever unauthenticated senders do.
//!
//! A reply is never larger than its request: it has the same fields with an
//! op of the same length, the same body and a tag of the same length; a
//! reply that would still come out larger (a request spelled in some
//! unusually short JSON) is dropped instead of sent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use skiff_net::{Datagram, DatagramHandler, DatagramSocket, PeerAddr};
use skiff_wire::message::udp::{decode_datagram, UdpPing, PING_LABEL};

use crate::auth::udp::{now_micros, seal_reply, verify_tag};
use crate::keys::Key;
use crate::users::live::LiveUsers;

/// How far a request's timestamp may be from the server's clock.
pub const FRESHNESS: Duration = Duration::from_secs(30);
/// Sequence numbers remembered per run, behind the highest one seen.
pub const REPLAY_WINDOW: u64 = 1024;
/// Runs (distinct `sid`s) per user tracked within the freshness window;
/// datagrams of a further run are dropped until one goes quiet.
pub const MAX_RUNS_PER_USER: usize = 64;
/// At most one log line about dropped datagrams per this period.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a datagram got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Larger than the receive buffer: its tail was lost.
    Truncated,
    /// Not exactly one `udp_ping` frame.
    Malformed,
    /// Unknown user, wrong tag, or a user outside its `from=` networks
    /// (indistinguishable on purpose).
    Unauthenticated,
    /// Timestamp outside the freshness window.
    Stale,
    /// Seen before, or too far behind its run's newest sequence number.
    Replayed,
    /// The user already has [`MAX_RUNS_PER_USER`] active runs.
    TooManyRuns,
    /// The reply would have been larger than the request.
    Oversize,
}

/// Totals since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpPingCounts {
    /// Requests answered.
    pub answered: u64,
    /// Dropped: truncated.
    pub truncated: u64,
    /// Dropped: malformed.
    pub malformed: u64,
    /// Dropped: unknown user or bad tag.
    pub unauthenticated: u64,
    /// Dropped: outside the freshness window.
    pub stale: u64,
    /// Dropped: replayed.
    pub replayed: u64,
    /// Dropped: too many runs for one user.
    pub too_many_runs: u64,
    /// Dropped: reply would have been larger.
    pub oversize: u64,
}

#[derive(Default)]
struct Counters([AtomicU64; 8]);

impl Counters {
    fn slot(reason: Option<DropReason>) -> usize {
        match reason {
            None => 0,
            Some(DropReason::Truncated) => 1,
            Some(DropReason::Malformed) => 2,
            Some(DropReason::Unauthenticated) => 3,
            Some(DropReason::Stale) => 4,
            Some(DropReason::Replayed) => 5,
            Some(DropReason::TooManyRuns) => 6,
            Some(DropReason::Oversize) => 7,
        }
    }

    fn bump(&self, reason: Option<DropReason>) {
        self.0[Self::slot(reason)].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> UdpPingCounts {
        let v = |i: usize| self.0[i].load(Ordering::Relaxed);
        UdpPingCounts {
            answered: v(0),
            truncated: v(1),
            malformed: v(2),
            unauthenticated: v(3),
            stale: v(4),
            replayed: v(5),
            too_many_runs: v(6),
            oversize: v(7),
        }
    }
}

/// One run's sliding window (RFC 6479 style): the highest sequence number
/// seen and a bitmap of the [`REPLAY_WINDOW`] numbers below it.
struct RunWindow {
    sid: u64,
    highest: u64,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
    /// Newest timestamp accepted in this run: once it is stale, every
    /// datagram of the run is, and the window can be forgotten safely.
    newest_ts: u64,
}

impl RunWindow {
    fn new(sid: u64, seq: u64, ts: u64) -> RunWindow {
        let mut w = RunWindow {
            sid,
            highest: seq,
            bits: [0; (REPLAY_WINDOW / 64) as usize],
            newest_ts: ts,
        };
        w.set(seq);
        w
    }

    fn index(seq: u64) -> (usize, u64) {
        let bit = seq % REPLAY_WINDOW;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn set(&mut self, seq: u64) {
        let (word, mask) = Self::index(seq);
        self.bits[word] |= mask;
    }

    fn is_set(&self, seq: u64) -> bool {
        let (word, mask) = Self::index(seq);
        self.bits[word] & mask != 0
    }

    /// Records `seq`; false when it was seen or is too old to tell.
    fn accept(&mut self, seq: u64, ts: u64) -> bool {
        if seq > self.highest {
            if seq - self.highest >= REPLAY_WINDOW {
                self.bits = [0; (REPLAY_WINDOW / 64) as usize];
            } else {
                for s in self.highest + 1..seq {
                    let (word, mask) = Self::index(s);
                    self.bits[word] &= !mask;
                }
                let (word, mask) = Self::index(seq);
                self.bits[word] &= !mask;
            }
            self.highest = seq;
        } else if self.highest - seq >= REPLAY_WINDOW || self.is_set(seq) {
            return false;
        }
        self.set(seq);
        self.newest_ts = self.newest_ts.max(ts);
        true
    }
}

/// Replay state of every user that has pinged within the window.
#[derive(Default)]
struct ReplayGuard {
    runs: HashMap<String, Vec<RunWindow>>,
}

impl ReplayGuard {
    fn check(
        &mut self,
        user: &str,
        sid: u64,
        seq: u64,
        ts: u64,
        now: u64,
        fresh: u64,
    ) -> Result<(), DropReason> {
        if !self.runs.contains_key(user) {
            self.runs.insert(user.to_string(), Vec::new());
        }
        let runs = self.runs.get_mut(user).ok_or(DropReason::Replayed)?;
        runs.retain(|r| r.newest_ts.saturating_add(fresh) >= now);
        if let Some(run) = runs.iter_mut().find(|r| r.sid == sid) {
            return if run.accept(seq, ts) {
                Ok(())
            } else {
                Err(DropReason::Replayed)
            };
        }
        if runs.len() >= MAX_RUNS_PER_USER {
            return Err(DropReason::TooManyRuns);
        }
        runs.push(RunWindow::new(sid, seq, ts));
        Ok(())
    }
}

/// The UDP ping service: one per server, shared by its UDP listeners.
pub struct UdpPingService {
    users: LiveUsers,
    /// Checked for unknown users, so they cost and look like a bad tag.
    dummy_key: Key,
    fresh_us: u64,
    replay: Mutex<ReplayGuard>,
    counters: Counters,
    last_log: Mutex<Option<Instant>>,
}

impl UdpPingService {
    /// A service answering `users` (the table in force, which the stream
    /// side keeps current), with the default [`FRESHNESS`].
    pub fn new(users: LiveUsers) -> UdpPingService {
        UdpPingService {
            users,
            dummy_key: Key::generate(),
            fresh_us: u64::try_from(FRESHNESS.as_micros()).unwrap_or(u64::MAX),
            replay: Mutex::new(ReplayGuard::default()),
            counters: Counters::default(),
            last_log: Mutex::new(None),
        }
    }

    /// Totals so far.
    pub fn counts(&self) -> UdpPingCounts {
        self.counters.snapshot()
    }

    /// Decides about one datagram received at `now_us` (microseconds since
    /// the epoch): the reply to send, or why there is none. Sans-IO, so the
    /// policy is testable without sockets; counts the outcome.
    /// `peer` is the sender's address (`None` on a Unix socket), checked
    /// against the user's `from=` networks.
    pub fn answer(
        &self,
        datagram: &[u8],
        truncated: bool,
        now_us: u64,
        peer: Option<IpAddr>,
    ) -> Result<BytesMut, DropReason> {
        let result = self.decide(datagram, truncated, now_us, peer);
        self.counters.bump(result.as_ref().err().copied());
        result
    }

    fn decide(
        &self,
        datagram: &[u8],
        truncated: bool,
        now_us: u64,
        peer: Option<IpAddr>,
    ) -> Result<BytesMut, DropReason> {
        if truncated {
            return Err(DropReason::Truncated);
        }
        let frame = decode_datagram(datagram).map_err(|_| DropReason::Malformed)?;
        let ping = frame
            .parse::<UdpPing>()
            .map_err(|_| DropReason::Malformed)?;
        let users = self.users.snapshot();
        let (key, known) = match users.entry(&ping.stamp.user) {
            // Outside its `from=` networks a user counts as unknown.
            Some(e) => (&e.key, e.policy.check_login(peer).is_ok()),
            None => (&self.dummy_key, false),
        };
        let authentic = verify_tag(key, PING_LABEL, &ping.stamp, frame.body(), &ping.tag);
        if !(authentic && known) {
            return Err(DropReason::Unauthenticated);
        }
        let ts = ping.stamp.ts;
        if ts.abs_diff(now_us) > self.fresh_us {
            return Err(DropReason::Stale);
        }
        self.replay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check(
                &ping.stamp.user,
                ping.stamp.sid,
                ping.stamp.seq,
                ts,
                now_us,
                self.fresh_us,
            )?;
        let reply = seal_reply(key, ping.stamp, frame.body()).ok_or(DropReason::Oversize)?;
        if reply.len() > datagram.len() {
            return Err(DropReason::Oversize);
        }
        Ok(reply)
    }

    fn log_drop(&self, reason: DropReason, peer: &PeerAddr) {
        let mut last = self
            .last_log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let c = self.counts();
        tracing::warn!(
            %peer,
            ?reason,
            answered = c.answered,
            truncated = c.truncated,
            malformed = c.malformed,
            unauthenticated = c.unauthenticated,
            stale = c.stale,
            replayed = c.replayed,
            too_many_runs = c.too_many_runs,
            oversize = c.oversize,
            "udp ping: dropped a datagram (at most one such line per {}s; totals since start follow)",
            LOG_EVERY.as_secs()
        );
    }
}

impl DatagramHandler for UdpPingService {
    async fn handle(&self, datagram: Datagram<'_>, socket: &DatagramSocket) {
        let peer = datagram.peer.ip();
        match self.answer(datagram.data, datagram.truncated(), now_micros(), peer) {
            Ok(reply) => {
                if let Err(e) = socket.send_to(&reply, &datagram.peer).await {
                    tracing::debug!(peer = %datagram.peer, error = %e, "udp pong not sent");
                }
            }
            Err(reason) => self.log_drop(reason, &datagram.peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::udp::seal_request;
    use crate::keys::UserKey;
    use crate::users::Users;
    use skiff_wire::message::udp::Stamp;

    fn setup() -> (UdpPingService, UserKey) {
        let uk = UserKey::generate("alice");
        (
            UdpPingService::new(LiveUsers::fixed(Users::from_keys([uk.clone()]))),
            uk,
        )
    }

    fn request(uk: &UserKey, sid: u64, seq: u64, ts: u64, body: &[u8]) -> Vec<u8> {
        let stamp = Stamp {
            user: uk.user.clone(),
            sid,
            seq,
            ts,
        };
        seal_request(&uk.key, stamp, body).unwrap().to_vec()
    }

    #[test]
    fn from_networks_apply_to_udp_pings() {
        let uk = UserKey::generate("alice");
        let text = format!("{} from=::1\n", uk.to_line());
        let users = Users::parse(std::path::Path::new("users"), &text).unwrap();
        let svc = UdpPingService::new(LiveUsers::fixed(users));
        let now = now_micros();
        let from = |ip: &str| Some(ip.parse::<IpAddr>().unwrap());
        let r = svc.answer(&request(&uk, 1, 0, now, b""), false, now, from("127.0.0.1"));
        assert_eq!(r, Err(DropReason::Unauthenticated));
        let r = svc.answer(&request(&uk, 1, 1, now, b""), false, now, None);
        assert_eq!(r, Err(DropReason::Unauthenticated));
        assert!(svc
            .answer(&request(&uk, 1, 2, now, b""), false, now, from("::1"))
            .is_ok());
    }

    #[test]
    fn answers_once_then_drops_replays() {
        let (svc, uk) = setup();
        let now = now_micros();
        let req = request(&uk, 1, 0, now, b"hi");
        let reply = svc.answer(&req, false, now, None).unwrap();
        assert_eq!(reply.len(), req.len());
        assert_eq!(
            svc.answer(&req, false, now, None),
            Err(DropReason::Replayed)
        );
        // Another run of the same user has its own window.
        assert!(svc
            .answer(&request(&uk, 2, 0, now, b""), false, now, None)
            .is_ok());
        let c = svc.counts();
        assert_eq!((c.answered, c.replayed), (2, 1));
    }

    #[test]
    fn drops_stale_unknown_truncated_and_garbage() {
        let (svc, uk) = setup();
        let now = now_micros();
        let fresh = FRESHNESS.as_micros() as u64;
        let old = request(&uk, 1, 0, now - fresh - 1, b"");
        assert_eq!(svc.answer(&old, false, now, None), Err(DropReason::Stale));
        let future = request(&uk, 1, 1, now + fresh + 1, b"");
        assert_eq!(
            svc.answer(&future, false, now, None),
            Err(DropReason::Stale)
        );
        let stranger = UserKey::generate("mallory");
        let req = request(&stranger, 1, 0, now, b"");
        assert_eq!(
            svc.answer(&req, false, now, None),
            Err(DropReason::Unauthenticated)
        );
        let wrong_key = UserKey {
            user: "alice".into(),
            key: Key::generate(),
        };
        let req = request(&wrong_key, 1, 0, now, b"");
        assert_eq!(
            svc.answer(&req, false, now, None),
            Err(DropReason::Unauthenticated)
        );
        let good = request(&uk, 1, 2, now, b"");
        assert_eq!(
            svc.answer(&good, true, now, None),
            Err(DropReason::Truncated)
        );
        assert_eq!(
            svc.answer(b"junk", false, now, None),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            svc.answer(b"", false, now, None),
            Err(DropReason::Malformed)
        );
        // No state was allocated for any of these.
        assert!(svc.replay.lock().unwrap().runs.is_empty());
    }

    #[test]
    fn window_slides_and_forgets_old_runs() {
        let (svc, uk) = setup();
        let now = now_micros();
        for seq in [5u64, 3, 4, 2000, 1500] {
            assert!(svc
                .answer(&request(&uk, 9, seq, now, b""), false, now, None)
                .is_ok());
        }
        for seq in [5u64, 3, 2000, 1500, 900] {
            let r = svc.answer(&request(&uk, 9, seq, now, b""), false, now, None);
            assert_eq!(r, Err(DropReason::Replayed), "seq {seq}");
        }
        // Runs are bounded per user; quiet ones are forgotten.
        for sid in 100..100 + MAX_RUNS_PER_USER as u64 - 1 {
            assert!(svc
                .answer(&request(&uk, sid, 0, now, b""), false, now, None)
                .is_ok());
        }
        let r = svc.answer(&request(&uk, 7777, 0, now, b""), false, now, None);
        assert_eq!(r, Err(DropReason::TooManyRuns));
        let later = now + FRESHNESS.as_micros() as u64 + 1;
        assert!(svc
            .answer(&request(&uk, 7777, 0, later, b""), false, later, None)
            .is_ok());
        assert_eq!(svc.replay.lock().unwrap().runs["alice"].len(), 1);
    }
}
