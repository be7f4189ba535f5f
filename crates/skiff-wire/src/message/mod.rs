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
pub mod request;
pub mod streams;
pub mod sync;
pub mod tree;
pub mod udp;

pub use request::Request;

/// A header type with its `op` name.
pub trait Message: Serialize + DeserializeOwned {
    /// The value of `"op"` for this message.
    const OP: &'static str;
}

/// The messages one side may receive in one phase of the protocol (an
/// enum declared with `phase!`), read from a frame in one place.
pub trait Phase: Sized {
    /// The ops the phase accepts.
    const OPS: &'static [&'static str];
    /// Reads one frame as a message of this phase.
    fn from_frame(frame: crate::Frame) -> Result<Self, MessageError>;
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
    /// The server is stopping; it closes the connection right after this
    /// frame.
    ShuttingDown,
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
            ErrorCode::ShuttingDown => "shutting_down",
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

/// Why a valid frame is not a message of the phase that read it.
///
/// Unlike a [`FrameError`](crate::FrameError), the stream is still in sync
/// after either of these: the receiver can answer the one frame (with
/// `unsupported` or `bad_frame`) and decide whether to go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The op is not one this phase accepts.
    #[error("unexpected {op:?} (expected one of: {})", expected.join(", "))]
    UnknownOp {
        /// The op that came.
        op: String,
        /// The ops the phase accepts.
        expected: &'static [&'static str],
    },
    /// The op is known, but its fields are missing or of the wrong type.
    #[error("malformed {op:?} frame: {reason}")]
    BadFields {
        /// The op of the malformed frame.
        op: &'static str,
        /// What was wrong, as the JSON reader said it.
        reason: String,
    },
}

impl MessageError {
    /// The op of the frame that could not be read.
    pub fn op(&self) -> &str {
        match self {
            MessageError::UnknownOp { op, .. } => op,
            MessageError::BadFields { op, .. } => op,
        }
    }

    /// The stable code to answer this frame with: `unsupported` for an op
    /// the phase does not know, `bad_frame` for a malformed known one.
    pub fn code(&self) -> ErrorCode {
        match self {
            MessageError::UnknownOp { .. } => ErrorCode::Unsupported,
            MessageError::BadFields { .. } => ErrorCode::BadFrame,
        }
    }
}

/// Declares the messages one side may receive in one phase of the
/// protocol, as an enum with one variant per op, and its `from_frame`: the
/// one place where that phase's frames become typed values.
///
/// A variant is `Name(Type)` (the header), `Name(Type, body)` (the body
/// only; the header carries nothing) or `Name(Type, with_body)` (both, as
/// a pair). `OPS` lists the accepted ops in declaration order.
macro_rules! phase {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $var:ident($ty:ty $(, $body:ident)?), )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vmeta])* $var(phase!(@payload $ty $(, $body)?)), )*
        }

        impl $name {
            /// The ops of this phase, in declaration order.
            pub const OPS: &'static [&'static str] = &[$(<$ty as $crate::Message>::OP),*];

            /// The op this message travels as.
            pub fn op(&self) -> &'static str {
                match self {
                    $( $name::$var(..) => <$ty as $crate::Message>::OP, )*
                }
            }

            /// Whether `op` is one of this phase's ops.
            pub fn knows(op: &str) -> bool {
                Self::OPS.contains(&op)
            }

            /// Reads one frame as a message of this phase.
            pub fn from_frame(frame: $crate::Frame) -> Result<Self, $crate::MessageError> {
                $(
                    if frame.op() == <$ty as $crate::Message>::OP {
                        return Ok($name::$var(phase!(@decode frame, $ty $(, $body)?)));
                    }
                )*
                Err($crate::MessageError::UnknownOp {
                    op: frame.op().to_string(),
                    expected: Self::OPS,
                })
            }
        }

        impl $crate::message::Phase for $name {
            const OPS: &'static [&'static str] = $name::OPS;

            fn from_frame(frame: $crate::Frame) -> Result<Self, $crate::MessageError> {
                $name::from_frame(frame)
            }
        }
    };
    (@payload $ty:ty) => { $ty };
    (@payload $ty:ty, body) => { ::bytes::Bytes };
    (@payload $ty:ty, with_body) => { ($ty, ::bytes::Bytes) };
    (@decode $f:ident, $ty:ty) => { $f.decode::<$ty>()? };
    (@decode $f:ident, $ty:ty, body) => { $f.into_body() };
    (@decode $f:ident, $ty:ty, with_body) => {{
        let head = $f.decode::<$ty>()?;
        (head, $f.into_body())
    }};
}
pub(crate) use phase;
