//! Why a byte stream is not a valid frame sequence.

use thiserror::Error;

/// A protocol violation found while decoding or encoding a frame.
///
/// Each variant names one way a peer can break the frame rules, so that the
/// receiver can log precisely what went wrong and answer `bad_frame` or
/// `too_large`. After any of these the stream is out of sync: the connection
/// must be closed. These are about the bytes alone: the crate does no I/O,
/// and the tokio codec reports socket failures separately
/// (`CodecError`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The 4-byte header length was zero; a header is at least `{}`.
    #[error("frame header length is zero")]
    EmptyHeader,
    /// The header length exceeds the limit; nothing was allocated for it.
    #[error("frame header of {len} bytes exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        /// The announced header length.
        len: u32,
        /// The limit in force.
        max: usize,
    },
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
    BodyTooLarge {
        /// The announced body length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes of an incomplete frame)")]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// A typed message could not be read from a valid frame header.
    #[error("frame \"{op}\" has unexpected fields: {reason}")]
    BadMessage {
        /// The frame's op.
        op: String,
        /// What was wrong.
        reason: String,
    },
}

impl FrameError {
    /// The stable error code a receiver sends back for this violation.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            FrameError::HeaderTooLarge { .. } | FrameError::BodyTooLarge { .. } => {
                crate::ErrorCode::TooLarge
            }
            _ => crate::ErrorCode::BadFrame,
        }
    }
}
