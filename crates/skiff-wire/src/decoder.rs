//! Bytes to frames: the sans-IO decoder.

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;

use crate::{Frame, FrameError, Limits};

/// Decodes frames from a caller-owned buffer.
///
/// Call [`decode`](Self::decode) whenever new bytes have been appended to the
/// buffer; it returns a frame as soon as one is complete and leaves any
/// following bytes in place (so frames that arrive glued together, or cut
/// into pieces, come out exactly as they were sent). It never reserves more
/// than [`Limits`] allow, and only after the lengths have been checked.
///
/// After an error the stream is out of sync and the decoder must not be used
/// again on it.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    limits: Limits,
    /// Header already validated, waiting for its body.
    pending: Option<PendingBody>,
}

#[derive(Debug)]
struct PendingBody {
    op: String,
    header: Bytes,
    len: usize,
}

/// Only the fields the frame layer itself checks; everything else in the
/// header is skipped without being materialized.
#[derive(Deserialize)]
struct HeaderProbe {
    op: Option<serde_json::Value>,
    len: Option<serde_json::Value>,
}

impl FrameDecoder {
    /// A decoder with the protocol's default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with tighter limits (clamped to the protocol maxima).
    pub fn with_limits(limits: Limits) -> Self {
        let max = Limits::default();
        FrameDecoder {
            limits: Limits {
                max_header: limits.max_header.min(max.max_header),
                max_body: limits.max_body.min(max.max_body),
            },
            pending: None,
        }
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
                buf.reserve(4 + len - buf.len());
                return Ok(None);
            }
            buf.advance(4);
            let header = buf.split_to(len).freeze();
            let (op, body_len) = self.check_header(&header)?;
            self.pending = Some(PendingBody {
                op,
                header,
                len: body_len,
            });
        }
        let need = self.pending.as_ref().map_or(0, |p| p.len);
        if buf.len() < need {
            buf.reserve(need - buf.len());
            return Ok(None);
        }
        let Some(p) = self.pending.take() else {
            return Ok(None);
        };
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
        match text.trim_start().as_bytes().first() {
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
            None => return Err(FrameError::MissingOp),
            Some(serde_json::Value::String(op)) => op,
            Some(_) => return Err(FrameError::OpNotString),
        };
        let len = match probe.len {
            None | Some(serde_json::Value::Null) => 0,
            Some(serde_json::Value::Number(n)) => {
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
            Some(_) => return Err(FrameError::LenNotInteger),
        };
        Ok((op, len))
    }
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
