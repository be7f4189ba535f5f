//! Bytes to frames: the sans-IO decoder.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Deserializer};

use crate::recycle::{BodyBuffers, LARGE_BODY};
use crate::{Frame, FrameError, Limits};

/// Decodes frames from a caller-owned buffer.
///
/// Call [`decode`](Self::decode) whenever new bytes have been appended to the
/// buffer; it returns a frame as soon as one is complete and leaves any
/// following bytes in place (so frames that arrive glued together, or cut
/// into pieces, come out exactly as they were sent). It never reserves more
/// than [`Limits`] allow, and only after the lengths have been checked.
///
/// A large body (128 KiB or more) is read into a buffer of its own, and
/// the buffers of bodies the caller has dropped are reused for the next
/// ones, so a stream of large frames does not allocate (and page-fault)
/// a fresh buffer per frame.
///
/// After an error the stream is out of sync and the decoder must not be used
/// again on it.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    limits: Limits,
    /// Header already validated, waiting for its body.
    pending: Option<PendingBody>,
    /// Read buffers of earlier large bodies, for reuse.
    pub(crate) buffers: BodyBuffers,
}

#[derive(Debug)]
struct PendingBody {
    op: String,
    header: Bytes,
    len: usize,
    /// Whether a buffer was chosen for this (large) body yet.
    placed: bool,
}

/// How far ahead of the bytes actually received the decoder reserves buffer
/// space for an announced body. Memory follows what the peer has sent, not
/// what its header claims: a 12-byte header announcing 8 MiB costs 256 KiB
/// until the body really arrives.
const RESERVE_AHEAD: usize = 256 * 1024;

/// Only the fields the frame layer itself checks; everything else in the
/// header is skipped without being materialized.
#[derive(Deserialize)]
struct HeaderProbe {
    #[serde(default)]
    op: Field,
    #[serde(default)]
    len: Field,
}

/// A header field as present or absent. Unlike `Option`, a JSON `null` is
/// *present* (so `"op":null` is "op is not a string", not "missing op").
#[derive(Default)]
enum Field {
    #[default]
    Absent,
    Present(serde_json::Value),
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(Field::Present)
    }
}

impl FrameDecoder {
    /// A decoder with the protocol's default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with tighter limits (clamped to the protocol maxima).
    pub fn with_limits(limits: Limits) -> Self {
        FrameDecoder {
            limits: limits.clamped(),
            pending: None,
            buffers: BodyBuffers::default(),
        }
    }

    /// Changes the limits for the frames still to come (clamped to the
    /// protocol maxima): a server reads the handshake under
    /// [`Limits::HANDSHAKE`] and widens them after authentication. A frame
    /// whose header was already accepted keeps the body length it announced.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits.clamped();
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes one complete frame off the front of `buf`, if there is one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.pending.is_none() {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if len == 0 {
                return Err(FrameError::EmptyHeader);
            }
            if len as usize > self.limits.max_header {
                return Err(FrameError::HeaderTooLarge {
                    len,
                    max: self.limits.max_header,
                });
            }
            let len = len as usize;
            if buf.len() < 4 + len {
                reserve_for(buf, 4 + len);
                return Ok(None);
            }
            buf.advance(4);
            let header = buf.split_to(len).freeze();
            let (op, body_len) = self.check_header(&header)?;
            self.pending = Some(PendingBody {
                op,
                header,
                len: body_len,
                placed: false,
            });
        }
        let Some(p) = self.pending.as_mut() else {
            return Ok(None);
        };
        if buf.len() < p.len {
            if p.len >= LARGE_BODY && !p.placed {
                p.placed = true;
                let missing = p.len - buf.len();
                self.buffers.place(buf, missing, missing.min(RESERVE_AHEAD));
            } else {
                reserve_for(buf, p.len);
            }
            return Ok(None);
        }
        let Some(p) = self.pending.take() else {
            return Ok(None);
        };
        if p.len < LARGE_BODY {
            self.buffers.release();
        }
        let body = buf.split_to(p.len).freeze();
        Ok(Some(Frame::from_parts(p.op, p.header, body)))
    }

    /// Like [`decode`](Self::decode), for when the stream has ended: leftover
    /// bytes of an incomplete frame are a [`FrameError::Truncated`].
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && self.pending.is_none() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: buf.len() + self.pending.as_ref().map_or(0, |p| p.header.len() + 4),
            }),
        }
    }

    fn check_header(&self, header: &[u8]) -> Result<(String, usize), FrameError> {
        let text = std::str::from_utf8(header).map_err(|_| FrameError::InvalidUtf8)?;
        // A derived struct would also accept a JSON array; insist on an object.
        // Only JSON's own whitespace may precede it.
        match text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .as_bytes()
            .first()
        {
            Some(b'{') => {}
            Some(_) => {
                // Distinguish "valid JSON but not an object" from garbage.
                return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                    Ok(_) => Err(FrameError::NotAnObject),
                    Err(e) => Err(FrameError::InvalidJson(e.to_string())),
                };
            }
            None => return Err(FrameError::InvalidJson("empty header".into())),
        }
        let probe: HeaderProbe =
            serde_json::from_str(text).map_err(|e| FrameError::InvalidJson(e.to_string()))?;
        let op = match probe.op {
            Field::Absent => return Err(FrameError::MissingOp),
            Field::Present(serde_json::Value::String(op)) => op,
            Field::Present(_) => return Err(FrameError::OpNotString),
        };
        let len = match probe.len {
            Field::Absent => 0,
            Field::Present(serde_json::Value::Number(n)) => {
                if let Some(v) = n.as_u64() {
                    if v > self.limits.max_body as u64 {
                        return Err(FrameError::BodyTooLarge {
                            len: v,
                            max: self.limits.max_body,
                        });
                    }
                    v as usize
                } else if let Some(v) = n.as_i64() {
                    return Err(FrameError::NegativeLen(v));
                } else {
                    return Err(FrameError::LenNotInteger);
                }
            }
            Field::Present(_) => return Err(FrameError::LenNotInteger),
        };
        Ok((op, len))
    }
}

/// Makes room for a frame part of `total` bytes that has partly arrived, but
/// never more than [`RESERVE_AHEAD`] beyond what is already buffered.
fn reserve_for(buf: &mut BytesMut, total: usize) {
    let missing = total.saturating_sub(buf.len());
    buf.reserve(missing.min(RESERVE_AHEAD));
}

/// A decoder that owns its buffer: feed it bytes as they arrive, take frames
/// out. Convenient for tests, fuzzing and non-tokio callers.
#[derive(Debug, Default)]
pub struct FrameReader {
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl FrameReader {
    /// A reader with the protocol's default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader with tighter limits.
    pub fn with_limits(limits: Limits) -> Self {
        FrameReader {
            decoder: FrameDecoder::with_limits(limits),
            buf: BytesMut::new(),
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if the bytes fed so far hold one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.decoder.decode(&mut self.buf)
    }

    /// Declares the end of the stream: an incomplete frame is an error.
    pub fn finish(&mut self) -> Result<Option<Frame>, FrameError> {
        self.decoder.decode_eof(&mut self.buf)
    }

    /// Bytes held but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
            + self
                .decoder
                .pending
                .as_ref()
                .map_or(0, |p| p.header.len() + 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, MAX_BODY_LEN, MAX_HEADER_LEN};

    /// One frame on the wire: length prefix, header, body.
    fn wire(header: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(header);
        v.extend_from_slice(body);
        v
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        FrameDecoder::new().decode(&mut BytesMut::from(bytes))
    }

    fn header_error(header: &str) -> FrameError {
        decode_one(&wire(header.as_bytes(), b"")).unwrap_err()
    }

    #[test]
    fn handshake_limits_refuse_bodies_and_big_headers_before_buffering() {
        let mut d = FrameDecoder::with_limits(Limits::HANDSHAKE);
        // An 8 MiB body announced in a small header: refused on the header.
        let mut buf = BytesMut::from(&wire(br#"{"op":"hello","len":8388608}"#, b"xx")[..]);
        let e = d.decode(&mut buf).unwrap_err();
        assert!(matches!(e, FrameError::BodyTooLarge { max: 0, .. }), "{e}");
        assert_eq!(e.code(), ErrorCode::TooLarge);
        assert!(buf.capacity() < 4096, "reserved {}", buf.capacity());
        // A 4097-byte header: refused on its 4 length bytes alone.
        let mut d = FrameDecoder::with_limits(Limits::HANDSHAKE);
        let mut buf = BytesMut::from(&4097u32.to_be_bytes()[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::HeaderTooLarge {
                len: 4097,
                max: 4096
            })
        ));
        // Widened after authentication, the same decoder takes big frames.
        let mut d = FrameDecoder::with_limits(Limits::HANDSHAKE);
        let mut buf = BytesMut::from(&wire(br#"{"op":"auth"}"#, b"")[..]);
        assert!(d.decode(&mut buf).unwrap().is_some());
        d.set_limits(Limits::default());
        let mut buf = BytesMut::from(&wire(br#"{"op":"data","len":3}"#, b"abc")[..]);
        assert_eq!(&d.decode(&mut buf).unwrap().unwrap().body()[..], b"abc");
        assert_eq!(d.limits(), Limits::default());
    }

    #[test]
    fn decodes_a_frame_with_and_without_body() {
        let f = decode_one(&wire(br#"{"op":"ping"}"#, b""))
            .unwrap()
            .unwrap();
        assert_eq!(f.op(), "ping");
        assert!(f.body().is_empty());
        let mut buf = BytesMut::from(&wire(br#"{"len":3,"op":"data","x":[1]}"#, b"abcrest")[..]);
        let f = FrameDecoder::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!((f.op(), &f.body()[..]), ("data", &b"abc"[..]));
        assert_eq!(
            &buf[..],
            b"rest",
            "bytes after the frame stay in the buffer"
        );
    }

    #[test]
    fn zero_header_length_is_empty_header() {
        assert_eq!(decode_one(&[0, 0, 0, 0]), Err(FrameError::EmptyHeader));
    }

    #[test]
    fn oversized_header_length_fails_before_the_header_arrives() {
        let mut buf = BytesMut::from(&(65537u32).to_be_bytes()[..]);
        let err = FrameDecoder::new().decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            FrameError::HeaderTooLarge {
                len: 65537,
                max: 65536
            }
        );
        assert_eq!(err.code(), ErrorCode::TooLarge);
        assert!(buf.capacity() < 65537, "nothing reserved for the header");
        let err = decode_one(&u32::MAX.to_be_bytes()).unwrap_err();
        assert!(matches!(
            err,
            FrameError::HeaderTooLarge { len: u32::MAX, .. }
        ));
    }

    #[test]
    fn header_limit_is_inclusive() {
        let pad = "x".repeat(MAX_HEADER_LEN - r#"{"op":"a","p":""}"#.len());
        let header = format!(r#"{{"op":"a","p":"{pad}"}}"#);
        assert_eq!(header.len(), MAX_HEADER_LEN);
        assert_eq!(
            decode_one(&wire(header.as_bytes(), b""))
                .unwrap()
                .unwrap()
                .op(),
            "a"
        );
    }

    #[test]
    fn invalid_utf8_header() {
        assert_eq!(
            decode_one(&wire(b"{\"op\":\"\xff\"}", b"")),
            Err(FrameError::InvalidUtf8)
        );
    }

    #[test]
    fn malformed_json_header() {
        for h in [
            "{\"op\":",
            "{op:1}",
            "not json",
            "{\"op\":\"a\"} trailing",
            "   ",
        ] {
            assert!(
                matches!(header_error(h), FrameError::InvalidJson(_)),
                "{h:?}: {:?}",
                header_error(h)
            );
        }
    }

    #[test]
    fn json_that_is_not_an_object() {
        for h in ["[1]", "\"op\"", "3", "null", " [{\"op\":\"a\"}]"] {
            assert_eq!(header_error(h), FrameError::NotAnObject, "{h:?}");
        }
    }

    #[test]
    fn missing_op() {
        assert_eq!(header_error("{}"), FrameError::MissingOp);
        assert_eq!(header_error(r#"{"len":0,"OP":"x"}"#), FrameError::MissingOp);
    }

    #[test]
    fn op_not_a_string() {
        for h in [
            r#"{"op":1}"#,
            r#"{"op":null}"#,
            r#"{"op":["a"]}"#,
            r#"{"op":{}}"#,
        ] {
            assert_eq!(header_error(h), FrameError::OpNotString, "{h:?}");
        }
    }

    #[test]
    fn duplicate_op_is_rejected() {
        assert!(matches!(
            header_error(r#"{"op":"a","op":"b"}"#),
            FrameError::InvalidJson(_)
        ));
    }

    #[test]
    fn oversized_len_fails_before_the_body_arrives() {
        let header = format!(r#"{{"op":"data","len":{}}}"#, MAX_BODY_LEN + 1);
        let mut buf = BytesMut::from(&wire(header.as_bytes(), b"")[..]);
        let err = FrameDecoder::new().decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            FrameError::BodyTooLarge {
                len: MAX_BODY_LEN as u64 + 1,
                max: MAX_BODY_LEN
            }
        );
        assert_eq!(err.code(), ErrorCode::TooLarge);
        assert!(buf.capacity() < MAX_BODY_LEN);
        assert!(matches!(
            header_error(&format!(r#"{{"op":"d","len":{}}}"#, u64::MAX)),
            FrameError::BodyTooLarge { len: u64::MAX, .. }
        ));
    }

    #[test]
    fn body_limit_is_inclusive_and_tighter_limits_apply() {
        let header = format!(r#"{{"op":"data","len":{MAX_BODY_LEN}}}"#);
        let f = decode_one(&wire(header.as_bytes(), &vec![7u8; MAX_BODY_LEN]))
            .unwrap()
            .unwrap();
        assert_eq!(f.body().len(), MAX_BODY_LEN);

        let limits = Limits {
            max_header: 16,
            max_body: 4,
        };
        let mut d = FrameDecoder::with_limits(limits);
        let mut buf = BytesMut::from(&wire(br#"{"op":"a","len":5}"#, b"12345")[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::HeaderTooLarge { max: 16, .. })
        ));
        // The 18-byte header passes a 32-byte limit; the body does not fit in 4.
        let mut buf = BytesMut::from(&wire(br#"{"op":"a","len":5}"#, b"12345")[..]);
        let mut d = FrameDecoder::with_limits(Limits {
            max_header: 32,
            ..limits
        });
        assert_eq!(
            d.decode(&mut buf),
            Err(FrameError::BodyTooLarge { len: 5, max: 4 })
        );
        // Limits above the protocol maxima are clamped.
        let d = FrameDecoder::with_limits(Limits {
            max_header: usize::MAX,
            max_body: usize::MAX,
        });
        assert_eq!(d.limits(), Limits::default());
    }

    #[test]
    fn negative_len() {
        assert_eq!(
            header_error(r#"{"op":"a","len":-1}"#),
            FrameError::NegativeLen(-1)
        );
        assert_eq!(
            header_error(&format!(r#"{{"op":"a","len":{}}}"#, i64::MIN)),
            FrameError::NegativeLen(i64::MIN)
        );
    }

    #[test]
    fn len_not_an_integer() {
        for h in [
            r#"{"op":"a","len":1.5}"#,
            r#"{"op":"a","len":1e3}"#,
            r#"{"op":"a","len":"3"}"#,
            r#"{"op":"a","len":null}"#,
            r#"{"op":"a","len":[3]}"#,
            r#"{"op":"a","len":true}"#,
        ] {
            assert_eq!(header_error(h), FrameError::LenNotInteger, "{h:?}");
        }
    }

    #[test]
    fn len_zero_means_no_body() {
        let f = decode_one(&wire(br#"{"op":"a","len":0}"#, b""))
            .unwrap()
            .unwrap();
        assert!(f.body().is_empty());
    }

    #[test]
    fn unknown_fields_are_ignored_and_kept_in_the_header() {
        let h = br#"{"x":{"deep":[1,2,{"y":null}]},"op":"a","z":"\u00e9"}"#;
        let f = decode_one(&wire(h, b"")).unwrap().unwrap();
        assert_eq!(f.op(), "a");
        assert_eq!(&f.header()[..], &h[..]);
    }

    #[test]
    fn every_error_maps_to_bad_frame_or_too_large() {
        assert_eq!(FrameError::EmptyHeader.code(), ErrorCode::BadFrame);
        assert_eq!(FrameError::LenNotInteger.code(), ErrorCode::BadFrame);
        assert_eq!(
            FrameError::Truncated { buffered: 1 }.code(),
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn truncated_stream_via_decode_eof() {
        let full = wire(br#"{"op":"a","len":4}"#, b"body");
        // Cut inside the length, inside the header, inside the body.
        for cut in [1, 3, 4, 10, full.len() - 1] {
            let mut d = FrameDecoder::new();
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(d.decode(&mut buf), Ok(None));
            assert_eq!(
                d.decode_eof(&mut buf),
                Err(FrameError::Truncated { buffered: cut }),
                "cut at {cut}"
            );
        }
        // A clean end between frames is not an error; complete frames still
        // come out at the end of the stream.
        let mut d = FrameDecoder::new();
        let mut buf = BytesMut::from(&full[..]);
        assert!(d.decode_eof(&mut buf).unwrap().is_some());
        assert_eq!(d.decode_eof(&mut buf), Ok(None));
    }

    #[test]
    fn reader_reports_buffered_bytes_and_finish() {
        let full = wire(br#"{"op":"a","len":4}"#, b"body");
        let mut r = FrameReader::new();
        r.feed(&full[..full.len() - 2]);
        assert_eq!(r.next_frame(), Ok(None));
        assert_eq!(r.buffered(), full.len() - 2);
        r.feed(&full[full.len() - 2..]);
        assert_eq!(r.next_frame().unwrap().unwrap().body(), &b"body"[..]);
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.finish(), Ok(None));
    }

    #[test]
    fn announced_body_reserves_only_a_bounded_amount() {
        let header = format!(r#"{{"op":"data","len":{MAX_BODY_LEN}}}"#);
        let mut buf = BytesMut::from(&wire(header.as_bytes(), b"x")[..]);
        assert_eq!(FrameDecoder::new().decode(&mut buf), Ok(None));
        assert!(
            buf.capacity() <= 2 * RESERVE_AHEAD,
            "reserved {} bytes for 1 byte of body",
            buf.capacity()
        );
    }
}
