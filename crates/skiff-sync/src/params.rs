//! Chunk size parameters, chosen from the size of the file being described.
//!
//! Both ends must cut a file with the same parameters for chunk hashes to
//! match, so the receiver picks them (from the size of its *old* copy) and
//! sends them with its signature; the sender cuts the new file with those.
//!
//! The average is `size / 4096` rounded up to a power of two and clamped to
//! 8 KiB ..= 1 MiB; the minimum is a quarter of it and the maximum four
//! times it. Why:
//! - about 4096 chunks per file at most in the middle of the range keeps a
//!   signature small (44 bytes a chunk: about 180 KB for a 1 GiB file) and
//!   the lookup table cheap;
//! - an edit costs the chunks it touches plus, on average, about one chunk
//!   on each side of it, so smaller chunks send less for small edits; 8 KiB
//!   is where per-chunk overhead (signature, hashing, one recipe entry)
//!   stays below 1 %;
//! - a 1 MiB average (4 MiB maximum) keeps every literal chunk inside one
//!   frame body (8 MiB) and bounds the memory one chunk needs.

use serde::{Deserialize, Serialize};

/// Smallest average chunk size.
pub const MIN_AVG: u32 = 8 * 1024;
/// Largest average chunk size.
pub const MAX_AVG: u32 = 1024 * 1024;
/// Largest chunk any valid parameter set can produce (4 × [`MAX_AVG`]).
pub const MAX_CHUNK: u32 = 4 * MAX_AVG;
/// Files are aimed at this many chunks (before clamping).
const TARGET_CHUNKS: u64 = 4096;

/// FastCDC parameters (normalisation level 1): the bounds of every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    /// No chunk is shorter, except a file's last.
    pub min: u32,
    /// The expected chunk size; a power of two.
    pub avg: u32,
    /// No chunk is longer.
    pub max: u32,
}

/// Parameters a peer sent that this implementation will not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunk parameters min={min} avg={avg} max={max}: need a power-of-two avg in {MIN_AVG}..={MAX_AVG}, min = avg/4, max = avg*4")]
pub struct BadParams {
    /// As received.
    pub min: u32,
    /// As received.
    pub avg: u32,
    /// As received.
    pub max: u32,
}

impl ChunkParams {
    /// The parameters for a file of `size` bytes (see the module docs).
    pub fn for_size(size: u64) -> ChunkParams {
        let want = (size / TARGET_CHUNKS).max(1).next_power_of_two();
        let avg = want.clamp(u64::from(MIN_AVG), u64::from(MAX_AVG)) as u32;
        ChunkParams::with_avg(avg)
    }

    fn with_avg(avg: u32) -> ChunkParams {
        ChunkParams {
            min: avg / 4,
            avg,
            max: avg * 4,
        }
    }

    /// Accepts only parameters [`ChunkParams::for_size`] can produce, so a
    /// peer cannot make us cut 64-byte chunks (a huge signature) or chunks
    /// larger than a frame.
    pub fn validate(self) -> Result<ChunkParams, BadParams> {
        let ok = self.avg.is_power_of_two()
            && (MIN_AVG..=MAX_AVG).contains(&self.avg)
            && self == ChunkParams::with_avg(self.avg);
        if ok {
            Ok(self)
        } else {
            Err(BadParams {
                min: self.min,
                avg: self.avg,
                max: self.max,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_scale_with_the_file_and_are_clamped() {
        assert_eq!(ChunkParams::for_size(0).avg, MIN_AVG);
        assert_eq!(ChunkParams::for_size(4096).avg, MIN_AVG);
        assert_eq!(ChunkParams::for_size(100 << 20).avg, 32 << 10);
        assert_eq!(ChunkParams::for_size(1 << 30).avg, 256 << 10);
        assert_eq!(ChunkParams::for_size(1 << 40).avg, MAX_AVG);
        let p = ChunkParams::for_size(1 << 30);
        assert_eq!((p.min, p.max), (64 << 10, 1 << 20));
        for shift in 0..50 {
            let p = ChunkParams::for_size(1u64 << shift);
            assert_eq!(p.validate(), Ok(p));
            assert!(p.max <= MAX_CHUNK);
        }
    }

    #[test]
    fn foreign_parameters_are_checked() {
        let bad = [
            ChunkParams {
                min: 64,
                avg: 256,
                max: 1024,
            },
            ChunkParams {
                min: 2048,
                avg: 8192,
                max: 1 << 24,
            },
            ChunkParams {
                min: 3000,
                avg: 12000,
                max: 48000,
            },
            ChunkParams {
                min: 0,
                avg: 0,
                max: 0,
            },
            ChunkParams::with_avg(MAX_AVG * 2),
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }
}
