//! GBK decoding, the code page Windows uses for Chinese (the tutorial's
//! `data.decode('gbk')`), without an extra crate.
//!
//! GBK is ASCII plus double-byte characters: a lead byte 0x81..=0xFE then a
//! trail byte 0x40..=0xFE (not 0x7F). Its order is not Unicode's, so a table
//! is unavoidable; `gbk_table.bin` is taken from Python's own `gbk` codec by
//! `gen_gbk_table.py`, so skiff decodes exactly as the tutorial's client.
//! Bad input decodes like Python's `errors='replace'`: one U+FFFD for the
//! offending byte, then decoding resumes at the next byte.

/// One little-endian u16 per (lead, trail) pair, 0 where GBK has no character.
static TABLE: &[u8; TABLE_BYTES] = include_bytes!("gbk_table.bin");

const LEADS: usize = 0xFE - 0x81 + 1;
const TRAILS: usize = 0xFE - 0x40; // 0x40..=0xFE without 0x7F
const TABLE_BYTES: usize = LEADS * TRAILS * 2;

fn is_lead(b: u8) -> bool {
    (0x81..=0xFE).contains(&b)
}

/// The character for a lead/trail pair, if GBK has one.
fn lookup(lead: u8, trail: u8) -> Option<char> {
    if !is_lead(lead) || !(0x40..=0xFE).contains(&trail) || trail == 0x7F {
        return None;
    }
    let t = usize::from(trail - 0x40) - usize::from(trail > 0x7F);
    let i = ((usize::from(lead - 0x81)) * TRAILS + t) * 2;
    let code = u16::from_le_bytes([TABLE[i], TABLE[i + 1]]);
    if code == 0 {
        None
    } else {
        char::from_u32(u32::from(code))
    }
}

/// A GBK decoder that can be fed a byte stream in arbitrary pieces.
#[derive(Debug, Default)]
pub(crate) struct GbkDecoder {
    /// A lead byte whose trail byte has not arrived yet.
    pending: Option<u8>,
}

impl GbkDecoder {
    /// Decodes `bytes` onto `out`, keeping a trailing lead byte for later.
    pub(crate) fn decode(&mut self, bytes: &[u8], out: &mut String) {
        let mut i = 0;
        if let Some(lead) = self.pending.take() {
            match bytes.first() {
                None => {
                    self.pending = Some(lead);
                    return;
                }
                Some(&trail) => match lookup(lead, trail) {
                    Some(c) => {
                        out.push(c);
                        i = 1;
                    }
                    None => out.push(char::REPLACEMENT_CHARACTER),
                },
            }
        }
        while i < bytes.len() {
            let b = bytes[i];
            if b < 0x80 {
                out.push(char::from(b));
                i += 1;
            } else if !is_lead(b) {
                out.push(char::REPLACEMENT_CHARACTER);
                i += 1;
            } else if i + 1 == bytes.len() {
                self.pending = Some(b);
                i += 1;
            } else if let Some(c) = lookup(b, bytes[i + 1]) {
                out.push(c);
                i += 2;
            } else {
                out.push(char::REPLACEMENT_CHARACTER);
                i += 1;
            }
        }
    }

    /// Ends the stream: a lead byte left without its trail is replaced.
    pub(crate) fn finish(&mut self, out: &mut String) {
        if self.pending.take().is_some() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(bytes: &[u8], piece: usize) -> String {
        let mut d = GbkDecoder::default();
        let mut s = String::new();
        for chunk in bytes.chunks(piece) {
            d.decode(chunk, &mut s);
        }
        d.finish(&mut s);
        s
    }

    #[test]
    fn decodes_chinese_and_ascii() {
        // "你好 ok" in GBK.
        let bytes = b"\xc4\xe3\xba\xc3 ok";
        for piece in 1..=bytes.len() {
            assert_eq!(decode_in_pieces(bytes, piece), "你好 ok");
        }
    }

    #[test]
    fn bad_bytes_decode_like_pythons_replace() {
        // Python: b'\xaa\xa1x'.decode('gbk','replace') == '\ufffd\ufffdx'
        assert_eq!(decode_in_pieces(b"\xaa\xa1x", 1), "\u{fffd}\u{fffd}x");
        assert_eq!(decode_in_pieces(b"\x81\x7f", 2), "\u{fffd}\x7f");
        assert_eq!(decode_in_pieces(b"a\xffb", 3), "a\u{fffd}b");
        assert_eq!(decode_in_pieces(b"\xa1", 1), "\u{fffd}");
        assert_eq!(decode_in_pieces(b"\x80", 1), "\u{fffd}");
        assert_eq!(decode_in_pieces(b"\x81\x80", 1), "亐");
    }
}
