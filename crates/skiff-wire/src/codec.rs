//! The `tokio_util::codec` adapter (feature `codec`, on by default).

use bytes::BytesMut;

use crate::{Frame, FrameDecoder, FrameError, Limits};

/// Why a framed stream stopped: the peer broke the frame rules, or the
/// stream itself failed (with the real `io::Error`, kind included).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid frame sequence.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Reading or writing the underlying stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// The stable error code a receiver sends back, if it still can:
    /// the frame violation's, or `internal` for a failed stream.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            CodecError::Frame(e) => e.code(),
            CodecError::Io(_) => crate::ErrorCode::Internal,
        }
    }
}

/// A `tokio_util` codec: wraps [`FrameDecoder`] for reading and writes
/// `(header, body)` pairs for sending. Use it with `Framed` /
/// `FramedRead` / `FramedWrite`.
#[derive(Debug, Default)]
pub struct FrameCodec {
    decoder: FrameDecoder,
}

impl FrameCodec {
    /// A codec with the protocol's default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec with tighter limits.
    pub fn with_limits(limits: Limits) -> Self {
        FrameCodec {
            decoder: FrameDecoder::with_limits(limits),
        }
    }

    /// Changes the read limits for the frames still to come; see
    /// [`FrameDecoder::set_limits`].
    pub fn set_limits(&mut self, limits: Limits) {
        self.decoder.set_limits(limits);
    }

    /// The read limits in force.
    pub fn limits(&self) -> Limits {
        self.decoder.limits()
    }
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.decoder.decode(src)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.decoder.decode_eof(src)?)
    }
}

impl tokio_util::codec::Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(crate::encode_raw(item.header(), item.body(), dst)?)
    }
}
