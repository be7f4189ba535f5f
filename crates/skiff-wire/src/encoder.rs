//! Messages to bytes.

use bytes::{BufMut, BytesMut};

use crate::{FrameError, Limits, Message};

/// Appends one frame carrying `msg` and `body` to `dst`.
///
/// The header is `{"op":M::OP` (plus `"len"` when `body` is not empty)
/// followed by the message's own fields, written straight into `dst`
/// without an intermediate JSON tree.
pub fn encode_frame<M: Message>(
    msg: &M,
    body: &[u8],
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let fields = serde_json::to_vec(msg).map_err(|e| FrameError::BadMessage {
        op: M::OP.to_string(),
        reason: e.to_string(),
    })?;
    // `fields` is `{...}`: a struct always serializes to an object.
    if fields.first() != Some(&b'{') {
        return Err(FrameError::NotAnObject);
    }
    let inner = &fields[1..fields.len() - 1];
    let mut head = Vec::with_capacity(fields.len() + M::OP.len() + 24);
    head.extend_from_slice(b"{\"op\":");
    // Ops are plain identifiers, but quote them properly anyway.
    head.extend_from_slice(&serde_json::to_vec(M::OP).unwrap_or_default());
    if !body.is_empty() {
        head.extend_from_slice(b",\"len\":");
        head.extend_from_slice(body.len().to_string().as_bytes());
    }
    if !inner.is_empty() {
        head.push(b',');
        head.extend_from_slice(inner);
    }
    head.push(b'}');
    encode_raw(&head, body, dst)
}

/// Appends one frame with an already-serialized JSON header to `dst`.
///
/// The caller guarantees the header is a JSON object with `op` and the right
/// `len`; only the size limits are checked here.
pub fn encode_raw(header: &[u8], body: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
    let limits = Limits::default();
    if header.is_empty() {
        return Err(FrameError::EmptyHeader);
    }
    if header.len() > limits.max_header {
        return Err(FrameError::HeaderTooLarge {
            len: u32::try_from(header.len()).unwrap_or(u32::MAX),
            max: limits.max_header,
        });
    }
    if body.len() > limits.max_body {
        return Err(FrameError::BodyTooLarge {
            len: body.len() as u64,
            max: limits.max_body,
        });
    }
    dst.reserve(4 + header.len() + body.len());
    dst.put_u32(header.len() as u32);
    dst.put_slice(header);
    dst.put_slice(body);
    Ok(())
}
