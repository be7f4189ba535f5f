//! The `exec` service (not built yet: answers `unsupported`).

use skiff_wire::{ErrorCode, ErrorMsg, Frame};

use super::ServiceContext;
use crate::session::{Session, SessionError};

/// Handles one `exec` request.
pub async fn handle(
    session: &mut Session<'_>,
    _ctx: &ServiceContext,
    frame: Frame,
) -> Result<(), SessionError> {
    let msg = format!(
        "\"{}\" is not built yet in this version of skiff",
        frame.op()
    );
    session.queue(&ErrorMsg::new(ErrorCode::Unsupported, msg), &[])
}
