//! The `tokio_util::codec` adapter.

use bytes::BytesMut;

use crate::{Frame, FrameDecoder, FrameError, Limits};

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
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.decoder.decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.decoder.decode_eof(src)
    }
}

impl tokio_util::codec::Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        crate::encode_raw(item.header(), item.body(), dst)
    }
}
