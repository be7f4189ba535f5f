//! Messages to bytes.

use bytes::{BufMut, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::{FrameError, Limits, Message};

/// Finds whether a serialized message has fields of its own named `op` or
/// `len`: the frame layer owns those names, and a message `len` would make
/// the receiver wait for a body that never comes.
#[derive(Deserialize)]
struct ReservedFields {
    op: Option<IgnoredAny>,
    len: Option<IgnoredAny>,
}

/// Appends one frame carrying `msg` and `body` to `dst`.
///
/// The header is `{"op":M::OP` (plus `"len"` when `body` is not empty)
/// followed by the message's own fields, written straight into `dst`
/// without an intermediate JSON tree. A message that does not serialize to
/// a JSON object, or has its own `op` or `len` field, is refused with
/// [`FrameError::NotAnObject`] / [`FrameError::BadMessage`]: the frame layer
/// owns those names. On error nothing is appended to `dst`.
pub fn encode_frame<M: Message>(
    msg: &M,
    body: &[u8],
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    dst.reserve(64 + body.len());
    encode_header(msg, body.len(), dst)?;
    dst.put_slice(body);
    Ok(())
}

/// Appends the length prefix and JSON header of a frame whose body of
/// `body_len` bytes the caller writes next, from wherever it lives (a
/// vectored write sends a large body straight from its own buffer). With
/// the body appended, the bytes are exactly [`encode_frame`]'s. On error
/// nothing is appended to `dst`.
pub(crate) fn encode_header<M: Message>(
    msg: &M,
    body_len: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let start = dst.len();
    let result = encode_header_into(msg, body_len, dst);
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// [`encode_header`] without the clean-up on error. The header is written
/// in place behind a length placeholder (no intermediate buffers: this runs
/// once per frame, and small frames are dominated by such costs).
fn encode_header_into<M: Message>(
    msg: &M,
    body_len: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let bad = |e: serde_json::Error| FrameError::BadMessage {
        op: M::OP.to_string(),
        reason: e.to_string(),
    };
    let start = dst.len();
    dst.reserve(64);
    dst.put_u32(0);
    dst.put_slice(b"{\"op\":");
    // Ops are plain identifiers, but quote them properly anyway.
    serde_json::to_writer((&mut *dst).writer(), M::OP).map_err(bad)?;
    if body_len > 0 {
        use std::io::Write;
        write!((&mut *dst).writer(), ",\"len\":{body_len}")
            .map_err(|e| bad(serde_json::Error::io(e)))?;
    }
    let fields_at = dst.len();
    serde_json::to_writer((&mut *dst).writer(), msg).map_err(bad)?;
    let fields = &dst[fields_at..];
    // A struct serializes to `{...}`; anything else cannot carry op/len.
    if fields.first() != Some(&b'{') {
        return Err(FrameError::NotAnObject);
    }
    if fields == b"{}" {
        dst.truncate(fields_at);
        dst.put_u8(b'}');
    } else {
        if has_reserved_field(fields).map_err(bad)? {
            return Err(FrameError::BadMessage {
                op: M::OP.to_string(),
                reason: "a message may not have its own \"op\" or \"len\" field".into(),
            });
        }
        // `{a,b}` becomes `,a,b}` after the op (and len) already written.
        dst[fields_at] = b',';
    }
    let limits = Limits::default();
    let header_len = dst.len() - start - 4;
    if header_len > limits.max_header {
        return Err(FrameError::HeaderTooLarge {
            len: u32::try_from(header_len).unwrap_or(u32::MAX),
            max: limits.max_header,
        });
    }
    if body_len > limits.max_body {
        return Err(FrameError::BodyTooLarge {
            len: body_len as u64,
            max: limits.max_body,
        });
    }
    dst[start..start + 4].copy_from_slice(&(header_len as u32).to_be_bytes());
    Ok(())
}

/// Whether a serialized object has a top-level `op` or `len` field. The
/// full parse runs only when those names appear in the bytes at all (a
/// key is always written as a plain `"op"` / `"len"` string), so the common
/// case costs a byte scan.
fn has_reserved_field(fields: &[u8]) -> Result<bool, serde_json::Error> {
    let mentions = |needle: &[u8]| fields.windows(needle.len()).any(|w| w == needle);
    if !mentions(b"\"op\"") && !mentions(b"\"len\"") {
        return Ok(false);
    }
    let reserved = serde_json::from_slice::<ReservedFields>(fields)?;
    Ok(reserved.op.is_some() || reserved.len.is_some())
}

/// Appends one frame with an already-serialized JSON header to `dst`.
///
/// The caller guarantees the header is a JSON object with `op` and the right
/// `len`; only the size limits are checked here.
pub fn encode_raw(header: &[u8], body: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
    dst.reserve(4 + header.len() + body.len());
    encode_raw_header(header, body.len(), dst)?;
    dst.put_slice(body);
    Ok(())
}

/// [`encode_raw`] without the body: the length prefix and `header`, for a
/// body of `body_len` bytes the caller writes next (see [`encode_header`]).
pub(crate) fn encode_raw_header(
    header: &[u8],
    body_len: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
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
    if body_len > limits.max_body {
        return Err(FrameError::BodyTooLarge {
            len: body_len as u64,
            max: limits.max_body,
        });
    }
    dst.reserve(4 + header.len());
    dst.put_u32(header.len() as u32);
    dst.put_slice(header);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::handshake::{Hello, Welcome};
    use crate::{ErrorCode, ErrorMsg, FrameReader, MAX_BODY_LEN, MAX_HEADER_LEN};
    use serde::Serialize;

    fn header_json(buf: &[u8]) -> serde_json::Value {
        let h = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        serde_json::from_slice(&buf[4..4 + h]).unwrap()
    }

    #[test]
    fn typed_message_round_trips() {
        let hello = Hello {
            v: 1,
            user: "ana \"q\" é".into(),
            nonce: "AAAA".into(),
        };
        let mut buf = BytesMut::new();
        encode_frame(&hello, b"", &mut buf).unwrap();
        let mut r = FrameReader::new();
        r.feed(&buf);
        let f = r.next_frame().unwrap().unwrap();
        assert!(f.is::<Hello>());
        assert_eq!(f.parse::<Hello>().unwrap(), hello);
        assert!(f.parse::<Welcome>().is_err(), "op is checked");
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn len_is_added_only_with_a_body() {
        let msg = ErrorMsg::new(ErrorCode::Busy, "full");
        let mut buf = BytesMut::new();
        encode_frame(&msg, b"", &mut buf).unwrap();
        let h = header_json(&buf);
        assert_eq!(h["op"], "error");
        assert_eq!(h["code"], "busy");
        assert!(h.get("len").is_none());

        let mut buf = BytesMut::new();
        encode_frame(&msg, b"xyz", &mut buf).unwrap();
        let h = header_json(&buf);
        assert_eq!(h["len"], 3);
        assert_eq!(&buf[buf.len() - 3..], b"xyz");
        let mut r = FrameReader::new();
        r.feed(&buf);
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!(f.parse::<ErrorMsg>().unwrap(), msg);
        assert_eq!(&f.body()[..], b"xyz");
    }

    #[test]
    fn empty_message_is_just_the_op() {
        let mut buf = BytesMut::new();
        encode_frame(&crate::message::ping::Ping {}, b"", &mut buf).unwrap();
        assert_eq!(&buf[4..], br#"{"op":"ping"}"#);
    }

    #[derive(Serialize, serde::Deserialize)]
    struct WithLen {
        len: u64,
    }
    crate::messages!(WithLen => "with_len");

    #[derive(Serialize, serde::Deserialize)]
    struct WithOp {
        op: String,
    }
    crate::messages!(WithOp => "with_op");

    #[derive(Serialize, serde::Deserialize)]
    struct Unit;
    crate::messages!(Unit => "unit");

    #[test]
    fn messages_may_not_claim_op_or_len() {
        let mut buf = BytesMut::new();
        assert!(matches!(
            encode_frame(&WithLen { len: 5 }, b"", &mut buf),
            Err(FrameError::BadMessage { .. })
        ));
        assert!(matches!(
            encode_frame(&WithOp { op: "x".into() }, b"", &mut buf),
            Err(FrameError::BadMessage { .. })
        ));
        assert_eq!(
            encode_frame(&Unit, b"", &mut buf),
            Err(FrameError::NotAnObject)
        );
        assert!(buf.is_empty(), "a refused message writes nothing");
    }

    #[test]
    fn raw_frames_respect_the_limits() {
        let mut buf = BytesMut::new();
        assert_eq!(encode_raw(b"", b"", &mut buf), Err(FrameError::EmptyHeader));
        assert!(matches!(
            encode_raw(&vec![b' '; MAX_HEADER_LEN + 1], b"", &mut buf),
            Err(FrameError::HeaderTooLarge { .. })
        ));
        assert!(matches!(
            encode_raw(b"{}", &vec![0; MAX_BODY_LEN + 1], &mut buf),
            Err(FrameError::BodyTooLarge { .. })
        ));
        assert!(buf.is_empty());
        let msg = ErrorMsg::new(ErrorCode::Internal, "");
        assert!(matches!(
            encode_frame(&msg, &vec![0; MAX_BODY_LEN + 1], &mut buf),
            Err(FrameError::BodyTooLarge { .. })
        ));
    }
}
