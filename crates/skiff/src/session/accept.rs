//! The server's side of the handshake, with graduated per-source
//! penalties (`session::penalty`) for failures.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_wire::message::handshake::{Auth, Challenge, Hello, Welcome};
use skiff_wire::{ErrorCode, Message};

use super::penalty::{Penalties, PenaltyPolicy, Recorded};
use super::{Session, SessionError};
use crate::auth::handshake::{self as hs, Block};
use crate::keys::Key;
use crate::policy::Policy;
use crate::users::live::LiveUsers;
use crate::users::{UserEntry, Users};

/// Server-side authentication policy: who may log in, and how failures
/// are slowed down.
pub struct Authenticator {
    users: LiveUsers,
    /// Answers for unknown users, so they look exactly like wrong keys.
    dummy_key: Key,
    penalties: Mutex<Penalties>,
    fail_delay: Duration,
    welcome: Welcome,
}

/// Tuning of failed logins.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// Pause before answering a failed attempt.
    pub fail_delay: Duration,
    /// How repeated failures from one source slow its next connections.
    pub penalties: PenaltyPolicy,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            fail_delay: Duration::from_millis(500),
            penalties: PenaltyPolicy::default(),
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
            penalties: Mutex::new(Penalties::new(policy.penalties)),
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
        let (hello, cn) = read_hello(session).await?;
        let fail = |reason: String| AuthFailure {
            user: Some(hello.user.clone()),
            reason,
        };
        let users = self.users.current();
        let claim = self.claim(&users, &hello.user, peer);
        let sn = hs::nonce();
        let proof = hs::proof(claim.key, hs::SERVER_LABEL, cb, &cn, &sn);
        let challenge = Challenge {
            nonce: hs::b64(&sn),
            proof: hs::b64(&proof),
        };
        session
            .send(&challenge, &[])
            .await
            .map_err(|e| fail(e.to_string()))?;
        let auth = expect_handshake::<Auth>(session)
            .await
            .map_err(|e| fail(claim.left_early(&e)))?;
        let given = hs::proof_bytes(&auth.proof);
        let valid = hs::verify(claim.key, hs::CLIENT_LABEL, cb, &cn, &sn, &given);
        let Some(entry) = claim.known.filter(|_| valid) else {
            tokio::time::sleep(self.fail_delay).await;
            let _ = session
                .send_error(ErrorCode::AuthFailed, "authentication failed")
                .await;
            return Err(fail(claim.refusal()));
        };
        let mut welcome = self.welcome.clone();
        if !entry.policy.may_exec() {
            welcome.services.retain(|s| s != "exec");
        }
        session
            .send(&welcome, &[])
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(LoggedIn {
            user: hello.user.clone(),
            policy: entry.policy.clone(),
        })
    }

    /// What the handshake may know of the user a client names.
    ///
    /// Outside the user's `from=` networks the user is treated as unknown
    /// from here on (a dummy key): even a client holding the right key
    /// learns neither that the user exists nor that its key is right. Only
    /// the log says why.
    fn claim<'u>(&'u self, users: &'u Users, user: &str, peer: Option<IpAddr>) -> Claim<'u> {
        let entry = users.entry(user);
        let outside = entry.and_then(|e| e.policy.check_login(peer).err());
        let known = entry.filter(|_| outside.is_none());
        Claim {
            known,
            outside: outside.map(|refusal| refusal.0),
            key: known.map(|e| &e.key).unwrap_or(&self.dummy_key),
        }
    }

    /// How long a new connection from `peer` waits before the server
    /// spends anything on it (zero for most; Unix peers are never
    /// penalized: they are local users of the machine anyway).
    pub fn penalty(&self, peer: Option<IpAddr>) -> Duration {
        match peer {
            Some(ip) => self.penalties().delay(ip),
            None => Duration::ZERO,
        }
    }

    /// Counts a failed handshake from `peer`; says when this failure
    /// started a penalty (which the caller reports once).
    pub fn record_failure(&self, peer: Option<IpAddr>) -> Recorded {
        match peer {
            Some(ip) => self.penalties().record(ip),
            None => Recorded::Quiet,
        }
    }

    fn penalties(&self) -> std::sync::MutexGuard<'_, Penalties> {
        self.penalties.lock().unwrap_or_else(|p| p.into_inner())
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
}

/// The user a client names, as far as the handshake may tell.
struct Claim<'u> {
    /// The user's entry, only when it exists and may log in from here.
    known: Option<&'u UserEntry>,
    /// Why a user who exists is treated as unknown (outside `from=`).
    outside: Option<String>,
    /// What proofs are made with: the user's key, or a dummy one.
    key: &'u Key,
}

impl Claim<'_> {
    /// Why an unknown user (or one outside its networks) failed, for the
    /// log.
    fn unknown(&self) -> String {
        match &self.outside {
            Some(refusal) => refusal.clone(),
            None => "unknown user".to_string(),
        }
    }

    /// A client that gives up before its proof found ours wrong (or never
    /// had the key): that is a failed attempt too (the caller records it,
    /// as every failure).
    fn left_early(&self, e: &SessionError) -> String {
        match self.known {
            Some(_) => format!(
                "client left before proving its key ({e}); it may not trust this server's proof"
            ),
            None => format!("{}; client left before proving a key ({e})", self.unknown()),
        }
    }

    /// Why a proof was refused, for the log.
    fn refusal(&self) -> String {
        match self.known {
            None => self.unknown(),
            Some(_) => "wrong key".to_string(),
        }
    }
}

/// The client's `hello` and its nonce, in a version this server speaks.
async fn read_hello(session: &mut Session<'_>) -> Result<(Hello, Block), AuthFailure> {
    let hello: Hello = expect_handshake(session).await.map_err(|e| AuthFailure {
        user: None,
        reason: e.to_string(),
    })?;
    let fail = |reason: String| AuthFailure {
        user: Some(hello.user.clone()),
        reason,
    };
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
        return Err(fail(format!("unsupported protocol version {}", hello.v)));
    }
    let Some(cn) = hs::unb64(&hello.nonce) else {
        let why = "hello nonce must be 32 bytes of base64";
        reject(session, why).await;
        return Err(fail(why.into()));
    };
    Ok((hello, cn))
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
