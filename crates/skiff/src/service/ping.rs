//! `ping` over a session: the body comes back in a `pong`.

use skiff_wire::message::ping::Pong;
use skiff_wire::Frame;

use crate::session::{Session, SessionError};

/// Queues the `pong` for a `ping` frame (the dispatcher flushes).
pub fn handle(session: &mut Session<'_>, frame: Frame) -> Result<(), SessionError> {
    session.queue(&Pong {}, frame.body())
}
