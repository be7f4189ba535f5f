//! The server's side of the handshake, with per-address rate limiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_wire::message::handshake::{Auth, Challenge, Hello, Welcome};
use skiff_wire::{ErrorCode, Message};

use super::{Session, SessionError};
use crate::auth::handshake::{self as hs, Block};
use crate::keys::Key;
use crate::policy::Policy;
use crate::users::live::LiveUsers;

/// Server-side authentication policy: who may log in, and how failures
/// are slowed down.
pub struct Authenticator {
    users: LiveUsers,
    /// Answers for unknown users, so they look exactly like wrong keys.
    dummy_key: Key,
    limiter: Mutex<FailureLimiter>,
    fail_delay: Duration,
    welcome: Welcome,
}

/// Tuning of the failure limiter.
#[derive(Debug, Clone, Copy)]
pub struct AuthPolicy {
    /// Pause before answering a failed attempt.
    pub fail_delay: Duration,
    /// Failed attempts per address per window before it is turned away.
    pub max_failures: u32,
    /// The window.
    pub window: Duration,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            fail_delay: Duration::from_millis(500),
            max_failures: 10,
            window: Duration::from_secs(60),
        }
    }
}

impl Authenticator {
    /// An authenticator for `users` (re-read on each handshake when the
    /// file changed), announcing `welcome` on success.
    pub fn new(users: LiveUsers, policy: AuthPolicy, welcome: Welcome) -> Authenticator {
        Authenticator {
            users,
            dummy_key: Key::generate(),
            limiter: Mutex::new(FailureLimiter::new(policy.max_failures, policy.window)),
            fail_delay: policy.fail_delay,
            welcome,
        }
    }

    /// Runs the handshake on a fresh session; returns who logged in. On
    /// failure the peer has been sent an error (when possible) and the
    /// caller closes the connection. The caller bounds this with a timeout.
    pub async fn handshake(
        &self,
        session: &mut Session<'_>,
        cb: &Block,
        peer: Option<IpAddr>,
    ) -> Result<LoggedIn, AuthFailure> {
        if let Some(ip) = peer {
            if self.limiter().is_blocked(ip) {
                // Read the hello first, so the refusal answers it (and the
                // close does not reset a connection with unread data).
                let user = match session.recv_required().await {
                    Ok(f) => f.parse::<Hello>().ok().map(|h| h.user),
                    Err(_) => None,
                };
                tokio::time::sleep(self.fail_delay).await;
                let _ = session
                    .send_error(
                        ErrorCode::AuthFailed,
                        "too many failed attempts from your address; wait a minute",
                    )
                    .await;
                return Err(AuthFailure {
                    user,
                    reason: "too many failed attempts from this address".into(),
                    blocked: true,
                });
            }
        }
        let fail = |user: Option<&str>, reason: String| AuthFailure {
            user: user.map(String::from),
            reason,
            blocked: false,
        };
        let hello: Hello = expect_handshake(session)
            .await
            .map_err(|e| fail(None, e.to_string()))?;
        let who = Some(hello.user.as_str());
        if hello.v != hs::VERSION {
            let _ = session
                .send_error(
                    ErrorCode::Unsupported,
                    format!(
                        "protocol version {} is not supported (this server speaks 1)",
                        hello.v
                    ),
                )
                .await;
            return Err(fail(
                who,
                format!("unsupported protocol version {}", hello.v),
            ));
        }
        let Some(cn) = hs::unb64(&hello.nonce) else {
            let why = "hello nonce must be 32 bytes of base64";
            reject(session, why).await;
            return Err(fail(who, why.into()));
        };
        let users = self.users.current();
        // Outside the user's `from=` networks the user is treated as
        // unknown from here on (a dummy key): even a client holding the
        // right key learns neither that the user exists nor that its key
        // is right. Only the log says why.
        let entry = users.entry(&hello.user);
        let outside = entry.and_then(|e| e.policy.check_login(peer).err());
        let known = entry.filter(|_| outside.is_none());
        let unknown = || match &outside {
            Some(refusal) => refusal.0.clone(),
            None => "unknown user".to_string(),
        };
        let key = known.map(|e| &e.key).unwrap_or(&self.dummy_key);
        let sn = hs::nonce();
        let proof = hs::proof(key, hs::SERVER_LABEL, cb, &cn, &sn);
        session
            .send(
                &Challenge {
                    nonce: hs::b64(&sn),
                    proof: hs::b64(&proof),
                },
                &[],
            )
            .await
            .map_err(|e| fail(who, e.to_string()))?;
        let auth = match expect_handshake::<Auth>(session).await {
            Ok(a) => a,
            Err(e) => {
                // A client that gives up here found our proof wrong (or
                // never had the key): that is a failed attempt too.
                self.record_failure(peer);
                let reason = match known {
                    Some(_) => format!("client left before proving its key ({e}); it may not trust this server's proof"),
                    None => format!("{}; client left before proving a key ({e})", unknown()),
                };
                return Err(fail(who, reason));
            }
        };
        let given = hs::proof_bytes(&auth.proof);
        let valid = hs::verify(key, hs::CLIENT_LABEL, cb, &cn, &sn, &given);
        // Checked again here: attempts started in parallel before the
        // address was blocked must not each get a guess.
        let blocked = peer.is_some_and(|ip| self.limiter().is_blocked(ip));
        let entry = match known {
            Some(entry) if valid && !blocked => entry,
            _ => {
                self.record_failure(peer);
                tokio::time::sleep(self.fail_delay).await;
                let _ = session
                    .send_error(ErrorCode::AuthFailed, "authentication failed")
                    .await;
                let reason = if blocked {
                    "too many failed attempts from this address".to_string()
                } else if known.is_none() {
                    unknown()
                } else {
                    "wrong key".to_string()
                };
                return Err(AuthFailure {
                    user: who.map(String::from),
                    reason,
                    blocked,
                });
            }
        };
        let mut welcome = self.welcome.clone();
        if !entry.policy.may_exec() {
            welcome.services.retain(|s| s != "exec");
        }
        session
            .send(&welcome, &[])
            .await
            .map_err(|e| fail(who, e.to_string()))?;
        Ok(LoggedIn {
            user: hello.user,
            policy: entry.policy.clone(),
        })
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_failure(&self, peer: Option<IpAddr>) {
        if let Some(ip) = peer {
            self.limiter().record(ip);
        }
    }
}

/// A user who passed the handshake.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// The user name.
    pub user: String,
    /// What the user may do.
    pub policy: Arc<Policy>,
}

/// A handshake that did not end in `welcome`, for the logs.
#[derive(Debug, Clone)]
pub struct AuthFailure {
    /// The user the client claimed to be, when it got that far.
    pub user: Option<String>,
    /// Why, in words for an administrator.
    pub reason: String,
    /// The source address is over its failure limit (a penalty).
    pub blocked: bool,
}

async fn reject(session: &mut Session<'_>, why: &str) -> SessionError {
    let _ = session.send_error(ErrorCode::BadFrame, why).await;
    SessionError::Unexpected {
        expected: "valid handshake",
        got: why.to_string(),
    }
}

/// The next frame must be handshake message `M`; anything else (a service
/// request before `welcome`, say) is answered with an error and ends it.
async fn expect_handshake<M: Message>(session: &mut Session<'_>) -> Result<M, SessionError> {
    let frame = match session.recv_required().await {
        Ok(f) => f,
        Err(SessionError::Frame(e)) => {
            let _ = session.send_error(e.code(), e.to_string()).await;
            return Err(SessionError::Frame(e));
        }
        Err(e) => return Err(e),
    };
    if !frame.is::<M>() {
        let why = format!(
            "expected \"{}\" (authenticate first), got \"{}\"",
            M::OP,
            frame.op()
        );
        return Err(reject(session, &why).await);
    }
    match frame.parse::<M>() {
        Ok(m) => Ok(m),
        Err(e) => Err(reject(session, &e.to_string()).await),
    }
}

/// The unit failures are counted per: an IPv4 address, or the /64 prefix
/// of an IPv6 address (one host usually owns a whole /64, so counting
/// single IPv6 addresses would let it rotate through 2^64 of them).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Counts failed attempts per source (see [`source_of`]) in fixed windows.
/// Its size is bounded: when full, expired entries go, and if none have
/// expired the table starts over (an attacker with that many addresses
/// gains little).
struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    table: HashMap<IpAddr, (u32, Instant)>,
}

const MAX_TRACKED: usize = 4096;

impl FailureLimiter {
    fn new(max_failures: u32, window: Duration) -> Self {
        FailureLimiter {
            max_failures,
            window,
            table: HashMap::new(),
        }
    }

    fn is_blocked(&mut self, ip: IpAddr) -> bool {
        let ip = source_of(ip);
        match self.table.get(&ip) {
            Some(&(n, start)) if start.elapsed() < self.window => n >= self.max_failures,
            Some(_) => {
                self.table.remove(&ip);
                false
            }
            None => false,
        }
    }

    fn record(&mut self, ip: IpAddr) {
        let ip = source_of(ip);
        if self.table.len() >= MAX_TRACKED && !self.table.contains_key(&ip) {
            let window = self.window;
            self.table.retain(|_, (_, start)| start.elapsed() < window);
            if self.table.len() >= MAX_TRACKED {
                self.table.clear();
            }
        }
        let now = Instant::now();
        let entry = self.table.entry(ip).or_insert((0, now));
        if entry.1.elapsed() >= self.window {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_max_and_forgets_after_window() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut l = FailureLimiter::new(3, Duration::from_millis(50));
        for _ in 0..3 {
            assert!(!l.is_blocked(ip));
            l.record(ip);
        }
        assert!(l.is_blocked(ip));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!l.is_blocked(ip));
    }

    #[test]
    fn ipv6_counts_per_64_prefix() {
        let mut l = FailureLimiter::new(2, Duration::from_secs(60));
        l.record("2001:db8::1".parse().unwrap());
        l.record("2001:db8::ffff:2".parse().unwrap());
        assert!(l.is_blocked("2001:db8::3".parse().unwrap()));
        assert!(!l.is_blocked("2001:db8:0:1::1".parse().unwrap()));
        l.record("::ffff:192.0.2.7".parse().unwrap());
        l.record("192.0.2.7".parse().unwrap());
        assert!(l.is_blocked("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn limiter_stays_bounded() {
        let mut l = FailureLimiter::new(3, Duration::from_secs(60));
        for i in 0..(MAX_TRACKED as u32 * 2) {
            l.record(IpAddr::from(i.to_be_bytes()));
        }
        assert!(l.table.len() <= MAX_TRACKED);
    }
}
