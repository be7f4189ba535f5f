//! Why a byte stream is not a valid frame sequence.

use thiserror::Error;

/// A protocol violation found while decoding or encoding a frame.
///
/// Each variant names one way a peer can break the frame rules, so that the
/// receiver can log precisely what went wrong and answer `bad_frame` or
/// `too_large`. After any of these the stream is out of sync: the connection
/// must be closed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The 4-byte header length was zero; a header is at least `{}`.
    #[error("frame header length is zero")]
    EmptyHeader,
    /// The header length exceeds the limit; nothing was allocated for it.
    #[error("frame header of {len} bytes exceeds the limit of {max} bytes")]
    HeaderTooLarge { len: u32, max: usize },
    /// The header bytes are not UTF-8.
    #[error("frame header is not valid UTF-8")]
    InvalidUtf8,
    /// The header is not well-formed JSON.
    #[error("frame header is not valid JSON: {0}")]
    InvalidJson(String),
    /// The header is JSON, but not an object (`[1]`, `"x"`, `3`).
    #[error("frame header is not a JSON object")]
    NotAnObject,
    /// The header object has no `"op"`.
    #[error("frame header has no \"op\"")]
    MissingOp,
    /// `"op"` is present but not a string.
    #[error("frame header \"op\" is not a string")]
    OpNotString,
    /// `"len"` is not a non-negative integer.
    #[error("frame header \"len\" is not an integer")]
    LenNotInteger,
    /// `"len"` is negative.
    #[error("frame header \"len\" is negative ({0})")]
    NegativeLen(i64),
    /// `"len"` exceeds the body limit; nothing was allocated for it.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { len: u64, max: usize },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes of an incomplete frame)")]
    Truncated { buffered: usize },
    /// A typed message could not be read from a valid frame header.
    #[error("frame \"{op}\" has unexpected fields: {reason}")]
    BadMessage { op: String, reason: String },
    /// An I/O error from the underlying stream (codec adapter only).
    #[error("i/o error: {0}")]
    Io(String),
}

impl FrameError {
    /// The stable error code a receiver sends back for this violation.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            FrameError::HeaderTooLarge { .. } | FrameError::BodyTooLarge { .. } => {
                crate::ErrorCode::TooLarge
            }
            FrameError::Io(_) => crate::ErrorCode::Internal,
            _ => crate::ErrorCode::BadFrame,
        }
    }
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e.to_string())
    }
}
