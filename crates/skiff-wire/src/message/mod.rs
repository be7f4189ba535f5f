//! Typed messages: the headers skiff peers exchange.
//!
//! Each message is a plain struct with a fixed `op`; the frame layer adds
//! `"op"` and `"len"` when encoding and ignores unknown fields when decoding,
//! so the protocol can grow without breaking older peers. One module per
//! service.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod exec;
pub mod files;
pub mod handshake;
pub mod ping;
pub mod udp;

/// A header type with its `op` name.
pub trait Message: Serialize + DeserializeOwned {
    /// The value of `"op"` for this message.
    const OP: &'static str;
}

/// Declares `impl Message for T { const OP = "..." }` for a list of types.
#[macro_export]
macro_rules! messages {
    ($($ty:ty => $op:literal),* $(,)?) => {
        $(impl $crate::Message for $ty { const OP: &'static str = $op; })*
    };
}

/// The stable error codes of the protocol (DESIGN section 2). Codes a newer
/// peer invents are read as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The peer sent something that is not a valid frame or message.
    BadFrame,
    /// A frame or request exceeded a limit.
    TooLarge,
    /// Authentication failed (wrong key, unknown user, bad proof).
    AuthFailed,
    /// The path does not exist.
    NotFound,
    /// The destination exists and overwriting was not asked for.
    Exists,
    /// The operating system refused access.
    Permission,
    /// The path would lead outside the server root.
    PathEscape,
    /// The data's checksum did not match the announced one.
    ChecksumMismatch,
    /// The disk is full (or a quota was hit).
    NoSpace,
    /// A deadline passed.
    Timeout,
    /// The server does not offer this operation.
    Unsupported,
    /// The server is at its connection limit.
    Busy,
    /// Anything else went wrong on the server.
    Internal,
    /// The destination changed while the operation ran (another upload of
    /// the same path committed first); nothing was replaced.
    Conflict,
    /// A path component is longer than the file system allows (255 bytes).
    NameTooLong,
    /// The request is well formed but cannot be done as asked (moving a
    /// directory into itself, say).
    Invalid,
    /// A code this implementation does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Exists => "exists",
            ErrorCode::Permission => "permission",
            ErrorCode::PathEscape => "path_escape",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NameTooLong => "name_too_long",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"op":"error","code":C,"message":M}`: an operation failed, or the peer
/// broke the protocol (then the connection closes after it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation, ideally saying what to do next.
    #[serde(default)]
    pub message: String,
}

impl ErrorMsg {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorMsg {
            code,
            message: message.into(),
        }
    }
}

messages!(ErrorMsg => "error");
