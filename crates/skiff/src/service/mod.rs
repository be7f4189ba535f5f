//! What an authenticated session can ask for. The dispatcher reads one
//! request at a time and hands it to its service; answers therefore go out
//! in request order, and a client may pipeline. Services see only the
//! [`Session`] (frames), never sockets or TLS.

pub(crate) mod exec;
pub mod files;
pub(crate) mod ping;
pub(crate) mod sync;
pub(crate) mod udp_ping;

#[cfg(test)]
pub(crate) mod testing;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skiff_wire::message::exec::{Exec, ExecInput};
use skiff_wire::message::files::UploadData;
use skiff_wire::message::{Phase, Request};
use skiff_wire::{ErrorMsg, Message, MessageError};
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::policy::env::{AcceptEnv, BaseEnv};
use crate::policy::Policy;
use crate::session::{Session, SessionError, SessionReader};

/// What every service may need to know about the server.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// Everything is confined to this directory.
    pub root: PathBuf,
    /// Whether `exec` is offered (`--no-exec` turns it off).
    pub exec_enabled: bool,
    /// The authenticated user.
    pub user: String,
    /// What this user may do; every service asks it before acting.
    pub policy: Arc<Policy>,
    /// The client's address (`None` on a Unix socket), for `SKIFF_CLIENT`.
    pub client: Option<SocketAddr>,
    /// The client as logs and the audit log name it.
    pub peer: String,
    /// Where commands and file changes are recorded.
    pub audit: Audit,
    /// The environment every command starts from.
    pub base_env: Arc<BaseEnv>,
    /// Client variables a restricted user may set.
    pub accept_env: Arc<AcceptEnv>,
    /// Where uploads are written until they are verified (outside the
    /// root, so no client path can name them).
    pub staging: Arc<crate::transfer::staging::StagingArea>,
    /// The uploads over several connections in progress (shared by every
    /// session of the server, so one connection can join another's).
    pub joins: Arc<files::streams::Joins>,
    /// A session idle this long between requests is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
}

impl ServiceContext {
    /// The next frame of a request in progress (an upload's data), within
    /// the idle timeout: a client that stops sending in the middle of a
    /// request holds its slot no longer than an idle one, and a frame
    /// dribbled a byte at a time must still be complete in time. `None`
    /// (`idle-timeout 0`) waits as long as the peer stays connected.
    pub async fn next_input<P: Phase>(
        &self,
        reader: &mut SessionReader<'_>,
    ) -> Result<P, SessionError> {
        crate::maybe::timeout(self.idle_timeout, reader.recv_msg::<P>())
            .await
            .unwrap_or_else(|d| Err(SessionError::Stalled(d)))
    }

    /// The operations this server offers, as announced in `welcome`.
    pub fn services(exec_enabled: bool) -> Vec<String> {
        Request::OPS
            .iter()
            .filter(|op| exec_enabled || **op != Exec::OP)
            .map(|op| op.to_string())
            .collect()
    }
}

/// Serves requests until the client closes. A protocol violation is
/// answered with an error frame and ends the session. Between requests the
/// session is closed (an error frame, then TLS close_notify) when it has
/// been idle past [`ServiceContext::idle_timeout`] or the server is
/// shutting down; a request in progress is finished first.
pub async fn serve(session: &mut Session<'_>, ctx: &ServiceContext) -> Result<(), SessionError> {
    // One shutdown wait and one idle timer for the whole session, not one
    // of each per request: registering a waiter and a timer (and removing
    // them again) on every ping was a measurable part of its cost.
    let shutdown = ctx.shutdown.cancelled();
    tokio::pin!(shutdown);
    let mut idle = IdleClock::new(ctx.idle_timeout);
    loop {
        idle.restart();
        let next = tokio::select! {
            biased;
            _ = &mut shutdown => Err(Ending::ShuttingDown),
            _ = idle.expired() => Err(Ending::Idle),
            r = session.recv() => Ok(r),
        };
        let received = match next {
            Ok(r) => r,
            Err(ending) => return end_session(session, ending, ctx.idle_timeout).await,
        };
        let frame = match received {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(SessionError::Frame(e)) => {
                let _ = session.send_error(e.code(), e.to_string()).await;
                return Err(SessionError::Frame(e));
            }
            Err(e) => return Err(e),
        };
        match Request::from_frame(frame) {
            Ok(req) => match dispatch(session, ctx, req).await {
                Ok(()) => {}
                Err(SessionError::Stalled(d)) => {
                    return end_session(session, Ending::Stalled(d), ctx.idle_timeout).await
                }
                Err(e) => return Err(e),
            },
            // Input for an exec that already ended (a client may send it
            // while the `exit` is on its way), or the data of an upload
            // whose request was refused as malformed (a client may send
            // data without waiting for `ready`): discarded.
            Err(e) if ExecInput::knows(e.op()) || UploadData::knows(e.op()) => {}
            Err(e) => session.queue(&refusal(&e), &[])?,
        }
        session.answered().await?;
    }
}

/// The idle limit between requests, as one timer per session. A request
/// only notes when it ended (a clock read); the timer, armed once, is
/// moved on to the real deadline when it fires early, instead of being
/// re-registered with the runtime on every request.
struct IdleClock {
    limit: Option<Duration>,
    /// Idle since this instant (the end of the last request).
    since: tokio::time::Instant,
    /// Armed on the first wait; its deadline may lag behind `since + limit`.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl IdleClock {
    fn new(limit: Option<Duration>) -> IdleClock {
        IdleClock {
            limit,
            since: tokio::time::Instant::now(),
            timer: None,
        }
    }

    /// The session is idle from now on.
    fn restart(&mut self) {
        if self.limit.is_some() {
            self.since = tokio::time::Instant::now();
        }
    }

    /// Completes once the session has been idle for the limit since the
    /// last [`restart`](Self::restart); never without a limit.
    async fn expired(&mut self) {
        let Some(limit) = self.limit else {
            return std::future::pending().await;
        };
        loop {
            let due = self.since + limit;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            timer.as_mut().await;
            if tokio::time::Instant::now() >= self.since + limit {
                return;
            }
            // A request came meanwhile: wait for the rest of the new limit.
            let due = self.since + limit;
            timer.as_mut().reset(due);
        }
    }
}

/// Why the server ends a session.
enum Ending {
    /// Between requests: the server is stopping.
    ShuttingDown,
    /// Between requests: nothing came for the idle timeout.
    Idle,
    /// In the middle of a request: its input stopped for this long.
    Stalled(Duration),
}

/// Tells the client why, closes the connection cleanly, and reports it.
async fn end_session(
    session: &mut Session<'_>,
    ending: Ending,
    idle: Option<Duration>,
) -> Result<(), SessionError> {
    let (message, err) = match ending {
        Ending::ShuttingDown => (
            "the server is shutting down".to_string(),
            SessionError::ShuttingDown,
        ),
        Ending::Idle => {
            let d = idle.unwrap_or_default();
            (
                format!("session idle for {:.0} s; closing it", d.as_secs_f64()),
                SessionError::IdleTimeout(d),
            )
        }
        Ending::Stalled(d) => (
            format!(
                "no data for {:.0} s in the middle of a request; closing the session \
                 (a single-file upload's partial data is kept for `put --resume`)",
                d.as_secs_f64()
            ),
            SessionError::Stalled(d),
        ),
    };
    let _ = session.send_error(err.code(), message).await;
    let _ = session.close().await;
    Err(err)
}

/// Hands one request to its service.
async fn dispatch(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    req: Request,
) -> Result<(), SessionError> {
    match req {
        Request::Ping(body) => ping::handle(session, &body),
        Request::Exec(req) => exec::handle(session, ctx, req).await,
        Request::Sync(req) => sync::handle(session, ctx, req).await,
        files => files::handle(session, ctx, files).await,
    }
}

/// The answer to a request frame that is not a request: the session goes
/// on (the stream is still in sync), only this frame is refused.
fn refusal(e: &MessageError) -> ErrorMsg {
    match e {
        MessageError::UnknownOp { op, expected } => ErrorMsg::new(
            e.code(),
            format!(
                "unknown operation {op:?} (requests are: {})",
                expected.join(", ")
            ),
        ),
        MessageError::BadFields { .. } => ErrorMsg::new(e.code(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use skiff_wire::message::ping::Ping;
    use skiff_wire::{ErrorCode, ErrorMsg};
    use tokio::time::Instant;

    use super::testing::{assert_pings, Harness};
    use crate::session::SessionError;

    /// A session idle past the limit gets a `timeout` error frame and a
    /// clean close, at the limit exactly; each request restarts the clock.
    #[tokio::test(start_paused = true)]
    async fn idle_sessions_are_closed_and_requests_restart_the_clock() {
        let mut h = Harness::new();
        h.ctx.idle_timeout = Some(Duration::from_secs(30));
        let (mut client, server) = h.connect(64 * 1024);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_pings(&mut client).await;
        let (e, _) = client.expect::<ErrorMsg>().await.expect("error frame");
        assert_eq!(e.code, ErrorCode::Timeout, "{e:?}");
        assert!(e.message.contains("idle for 30 s"), "{e:?}");
        assert_eq!(t0.elapsed(), Duration::from_secs(50));
        assert!(matches!(client.recv().await, Ok(None)));
        let ended = server.await.expect("server task");
        assert!(
            matches!(ended, Err(SessionError::IdleTimeout(_))),
            "{ended:?}"
        );
    }

    /// Shutdown between requests: `shutting_down`, then a clean close.
    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_sessions_between_requests() {
        let h = Harness::new();
        let (mut client, server) = h.connect(64 * 1024);
        client.send(&Ping {}, b"").await.expect("ping");
        assert_eq!(client.recv_required().await.expect("pong").op(), "pong");
        h.ctx.shutdown.cancel();
        let (e, _) = client.expect::<ErrorMsg>().await.expect("error frame");
        assert_eq!(e.code, ErrorCode::ShuttingDown, "{e:?}");
        assert!(matches!(client.recv().await, Ok(None)));
        let ended = server.await.expect("server task");
        assert!(
            matches!(ended, Err(SessionError::ShuttingDown)),
            "{ended:?}"
        );
    }
}
