//! The frame: a validated JSON header plus an optional body.

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::{FrameError, Message, MessageError};

/// Largest header the protocol allows (64 KiB).
pub const MAX_HEADER_LEN: usize = 65536;
/// Largest body the protocol allows (8 MiB). Larger data is streamed as
/// several frames.
pub const MAX_BODY_LEN: usize = 8 * 1024 * 1024;

/// The bounds a decoder enforces. Lowering them is allowed (a server may
/// want smaller frames); raising them past the protocol maxima is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum header length in bytes.
    pub max_header: usize,
    /// Maximum body length in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header: MAX_HEADER_LEN,
            max_body: MAX_BODY_LEN,
        }
    }
}

/// Largest header a peer may send before it has authenticated (4 KiB):
/// every handshake message fits in a few hundred bytes.
pub const HANDSHAKE_MAX_HEADER_LEN: usize = 4096;

impl Limits {
    /// The limits before authentication: a header of at most 4 KiB and no
    /// body, so a peer without a key can make a receiver buffer only a few
    /// KiB, not a full 8 MiB frame.
    pub const HANDSHAKE: Limits = Limits {
        max_header: HANDSHAKE_MAX_HEADER_LEN,
        max_body: 0,
    };

    /// These limits, lowered where needed to the protocol maxima.
    pub fn clamped(self) -> Limits {
        Limits {
            max_header: self.max_header.min(MAX_HEADER_LEN),
            max_body: self.max_body.min(MAX_BODY_LEN),
        }
    }

    /// The most bytes one frame can occupy on the wire under these limits.
    pub fn max_frame(&self) -> usize {
        4 + self.max_header + self.max_body
    }
}

/// One decoded frame. The header is known to be a JSON object with a string
/// `op` and, if a body is present, a matching `len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    op: String,
    header: Bytes,
    body: Bytes,
}

impl Frame {
    pub(crate) fn from_parts(op: String, header: Bytes, body: Bytes) -> Self {
        Frame { op, header, body }
    }

    /// Builds a frame from a typed message (as a receiver would see it).
    pub fn from_message<M: Message>(msg: &M, body: Bytes) -> Result<Frame, FrameError> {
        let mut buf = bytes::BytesMut::new();
        crate::encode_frame(msg, &body, &mut buf)?;
        let header_len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let header = buf.split_to(4 + header_len).split_off(4).freeze();
        Ok(Frame {
            op: M::OP.to_string(),
            header,
            body,
        })
    }

    /// The operation name from the header's `"op"`.
    pub fn op(&self) -> &str {
        &self.op
    }

    /// The raw JSON header, exactly as received.
    pub fn header(&self) -> &Bytes {
        &self.header
    }

    /// The body (empty when the header has no `len`).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Takes the body out of the frame without copying.
    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// Whether this frame carries message type `M`.
    pub fn is<M: Message>(&self) -> bool {
        self.op == M::OP
    }

    /// Reads the header as message type `M` (fields other than those of `M`
    /// are ignored, so peers can add fields without breaking older readers).
    pub fn parse<M: Message>(&self) -> Result<M, FrameError> {
        self.parse_as(M::OP)
    }

    /// Reads the header as any deserializable type, without checking `op`.
    pub fn parse_any<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.header).map_err(|e| FrameError::BadMessage {
            op: self.op.clone(),
            reason: e.to_string(),
        })
    }

    /// Reads the header as message type `M`, whose op the caller has
    /// already matched: a failure says which fields were wrong.
    pub(crate) fn decode<M: Message>(&self) -> Result<M, MessageError> {
        serde_json::from_slice(&self.header).map_err(|e| MessageError::BadFields {
            op: M::OP,
            reason: e.to_string(),
        })
    }

    fn parse_as<T: DeserializeOwned>(&self, op: &str) -> Result<T, FrameError> {
        if self.op != op {
            return Err(FrameError::BadMessage {
                op: self.op.clone(),
                reason: format!("expected \"{op}\""),
            });
        }
        self.parse_any()
    }
}
