//! Turning the bytes a classic server sends into text on the terminal.
//!
//! The tutorial decodes whole replies with `data.decode('utf-8')` or
//! `data.decode('gbk')`; skiff decodes them as they stream in, so a large
//! reply never has to sit in memory, and replaces bad bytes with U+FFFD
//! instead of crashing as Python's strict decoding does.

use crate::gbk::GbkDecoder;

/// The text encoding of a server's output (`--encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Encoding {
    /// UTF-8, what Linux and macOS commands print.
    #[cfg_attr(feature = "clap", value(name = "utf-8", alias = "utf8"))]
    Utf8,
    /// GBK, what Chinese Windows commands print (`decode('gbk')`).
    #[cfg_attr(feature = "clap", value(name = "gbk", alias = "cp936"))]
    Gbk,
}

/// A streaming decoder for one [`Encoding`].
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Bytes of a UTF-8 sequence cut by a chunk boundary (at most 3).
    Utf8(Vec<u8>),
    Gbk(GbkDecoder),
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new(encoding: Encoding) -> Self {
        let state = match encoding {
            Encoding::Utf8 => State::Utf8(Vec::new()),
            Encoding::Gbk => State::Gbk(GbkDecoder::default()),
        };
        Decoder { state }
    }

    /// Decodes the next piece of the stream onto `out`.
    pub fn decode(&mut self, bytes: &[u8], out: &mut String) {
        match &mut self.state {
            State::Gbk(d) => d.decode(bytes, out),
            State::Utf8(pending) => {
                if pending.is_empty() {
                    decode_utf8(bytes, pending, out);
                } else {
                    let mut joined = std::mem::take(pending);
                    joined.extend_from_slice(bytes);
                    decode_utf8(&joined, pending, out);
                }
            }
        }
    }

    /// Ends the stream: an incomplete trailing sequence becomes U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
        match &mut self.state {
            State::Gbk(d) => d.finish(out),
            State::Utf8(pending) => {
                if !pending.is_empty() {
                    pending.clear();
                    out.push(char::REPLACEMENT_CHARACTER);
                }
            }
        }
    }
}

/// Decodes `bytes`, keeping an incomplete sequence at the very end in
/// `pending` for the next piece.
fn decode_utf8(mut bytes: &[u8], pending: &mut Vec<u8>, out: &mut String) {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return;
            }
            Err(e) => {
                let (good, rest) = bytes.split_at(e.valid_up_to());
                // `good` is valid UTF-8 by construction.
                out.push_str(&String::from_utf8_lossy(good));
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        bytes = &rest[bad..];
                    }
                    None => {
                        pending.extend_from_slice(rest);
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_anywhere_decodes_the_same() {
        let text = "héllo, 世界 🦀!";
        let bytes = text.as_bytes();
        for piece in 1..=bytes.len() {
            let mut d = Decoder::new(Encoding::Utf8);
            let mut s = String::new();
            for chunk in bytes.chunks(piece) {
                d.decode(chunk, &mut s);
            }
            d.finish(&mut s);
            assert_eq!(s, text, "piece {piece}");
        }
    }

    #[test]
    fn bad_utf8_is_replaced_not_fatal() {
        let mut d = Decoder::new(Encoding::Utf8);
        let mut s = String::new();
        d.decode(b"a\xffb\xe4\xb8", &mut s);
        d.finish(&mut s);
        assert_eq!(s, "a\u{fffd}b\u{fffd}");
    }
}
