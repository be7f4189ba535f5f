//! Per-chunk zstd compression, skipped for chunks that do not shrink, so
//! already-compressed data costs one failed attempt and no extra bytes.

/// The level used with `-z`: zstd's fastest regular level compresses at
/// several hundred MB/s per core, which keeps up with a gigabit link on one
/// core while still shrinking text, logs and code 3-5 times.
pub const DEFAULT_LEVEL: i32 = 1;

/// Why a compressed chunk was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// The announced raw length is over the limit the caller allows.
    #[error("compressed chunk announces {announced} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// As announced.
        announced: usize,
        /// The caller's limit.
        limit: usize,
    },
    /// Not valid zstd, or it does not expand to exactly the announced size.
    #[error("bad compressed chunk: {0}")]
    Corrupt(String),
}

/// Compresses chunks one by one with a reused zstd context.
pub struct Compressor {
    ctx: zstd::bulk::Compressor<'static>,
}

impl Compressor {
    /// A compressor at `level` (see [`DEFAULT_LEVEL`]).
    pub fn new(level: i32) -> std::io::Result<Compressor> {
        Ok(Compressor {
            ctx: zstd::bulk::Compressor::new(level)?,
        })
    }

    /// The compressed form of `data`, or `None` when it would not be
    /// smaller (send `data` as it is then).
    pub fn compress(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        if data.len() < 64 {
            return None;
        }
        // A buffer one byte short of the input: zstd fails rather than
        // produce something that does not shrink.
        let mut out = vec![0u8; data.len() - 1];
        match self.ctx.compress_to_buffer(data, &mut out) {
            Ok(n) => {
                out.truncate(n);
                Some(out)
            }
            Err(_) => None,
        }
    }
}

/// Expands a compressed chunk that must be exactly `raw_len` bytes, with
/// `raw_len` checked against `limit` before anything is allocated (a small
/// frame cannot make the receiver reserve a huge buffer).
pub fn decompress(data: &[u8], raw_len: usize, limit: usize) -> Result<Vec<u8>, DecompressError> {
    if raw_len > limit {
        return Err(DecompressError::TooLarge {
            announced: raw_len,
            limit,
        });
    }
    let mut out = vec![0u8; raw_len];
    let mut d =
        zstd::bulk::Decompressor::new().map_err(|e| DecompressError::Corrupt(e.to_string()))?;
    let n = d
        .decompress_to_buffer(data, &mut out)
        .map_err(|e| DecompressError::Corrupt(e.to_string()))?;
    if n != raw_len {
        return Err(DecompressError::Corrupt(format!(
            "expands to {n} bytes, {raw_len} announced"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::pseudo_random;

    #[test]
    fn compressible_data_shrinks_and_round_trips() {
        let text = "the quick brown fox jumps over the lazy dog\n".repeat(5000);
        let mut c = Compressor::new(DEFAULT_LEVEL).unwrap();
        let z = c.compress(text.as_bytes()).unwrap();
        assert!(z.len() * 10 < text.len(), "{} -> {}", text.len(), z.len());
        assert_eq!(
            decompress(&z, text.len(), 1 << 20).unwrap(),
            text.as_bytes()
        );
    }

    #[test]
    fn random_data_is_sent_as_is() {
        let mut c = Compressor::new(DEFAULT_LEVEL).unwrap();
        assert!(c.compress(&pseudo_random(1 << 20, 4)).is_none());
        assert!(c.compress(b"tiny").is_none());
    }

    #[test]
    fn bad_input_is_refused() {
        let mut c = Compressor::new(DEFAULT_LEVEL).unwrap();
        let z = c.compress(&[7u8; 100_000]).unwrap();
        assert!(matches!(
            decompress(&z, 100_000, 1000),
            Err(DecompressError::TooLarge { .. })
        ));
        assert!(matches!(
            decompress(&z, 99_999, 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
        assert!(matches!(
            decompress(&z, 100_001, 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
        assert!(matches!(
            decompress(b"not zstd", 10, 100),
            Err(DecompressError::Corrupt(_))
        ));
    }
}
