//! skiff's frame protocol, without sockets.
//!
//! Every skiff message travels as one *frame*:
//!
//! ```text
//! | u32 big-endian H | H bytes: UTF-8 JSON object | B bytes: body |
//! ```
//!
//! The JSON header always has a string `"op"`, and `"len": B` when a body
//! follows. This is the tutorial's fix for the "sticky packet" problem (a
//! length-prefixed JSON header), hardened: every length is checked against
//! [`Limits`] *before* memory is reserved for it, and every malformed input
//! is a specific [`FrameError`], never a panic.
//!
//! The crate is sans-IO: [`FrameDecoder`] turns bytes into [`Frame`]s,
//! [`encode_frame`] turns messages into bytes, [`WriteQueue`] holds frames
//! for a vectored write (large bodies by handle, not copied), and
//! `FrameCodec` (feature
//! `codec`, on by default) adapts both to `tokio_util::codec` for callers
//! that want a `Framed` stream.

#![warn(missing_docs)]

#[cfg(feature = "codec")]
mod codec;
mod decoder;
mod encoder;
mod error;
mod frame;
pub mod message;
mod outgoing;
mod recycle;

#[cfg(feature = "codec")]
pub use codec::{CodecError, FrameCodec};
pub use decoder::{FrameDecoder, FrameReader};
pub use encoder::{encode_frame, encode_raw};
pub use error::FrameError;
pub use frame::{Frame, Limits, HANDSHAKE_MAX_HEADER_LEN, MAX_BODY_LEN, MAX_HEADER_LEN};
pub use message::{ErrorCode, ErrorMsg, Message, MessageError};
pub use outgoing::{WriteQueue, SHARE_MIN};
