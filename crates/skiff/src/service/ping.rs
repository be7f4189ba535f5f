//! `ping` over a session: the body comes back in a `pong`.

use skiff_wire::message::ping::Pong;

use crate::session::{Session, SessionError};

/// Queues the `pong` for a `ping` with this body (the dispatcher flushes).
pub fn handle(session: &mut Session<'_>, body: &[u8]) -> Result<(), SessionError> {
    session.queue(&Pong {}, body)
}
