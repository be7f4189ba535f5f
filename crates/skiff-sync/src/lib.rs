//! The synchronisation algorithm behind `skiff sync`, without any network
//! I/O, so every piece can be tested on its own and driven by any
//! transport:
//!
//! - [`walk`]: a sorted, streamed listing of a local tree (cap-std, never
//!   following symlinks) with [`exclude`] rules (gitignore syntax,
//!   `.skiffignore` files);
//! - [`diff`]: the sorted merge of a source and a destination list into
//!   [`diff::Action`]s (new, changed, metadata, type change, delete);
//! - [`chunker`] and [`params`]: FastCDC content-defined chunks with BLAKE3
//!   hashes, sized by the file, hashed on all cores; a receiver describes
//!   its old copy as a [`chunker::Signature`];
//! - [`recipe`]: the sender's copy/literal recipe of a new file against
//!   that signature, and [`assemble`]: the receiver's [`Assembler`] that
//!   rebuilds the file (copies in the kernel) and verifies its whole-file
//!   BLAKE3;
//! - [`list`]: the compact, compressed form of a file-list batch;
//! - [`compress`]: per-chunk zstd, skipped when a chunk does not shrink;
//! - [`parallel`]: order-keeping work on all cores.

#![warn(missing_docs)]

pub mod assemble;
pub mod chunker;
pub mod compress;
pub mod derive;
pub mod diff;
pub mod entry;
pub mod exclude;
mod follow;
pub mod hash;
pub mod list;
pub mod parallel;
pub mod params;
pub mod recipe;
pub mod walk;

pub use assemble::{AssembleError, Assembler, FileOutput, ReadAt};
pub use chunker::{Chunk, Chunker, Signature};
pub use derive::Derive;
pub use diff::{Action, Merge, MergeError, MergeOptions};
pub use entry::{path_cmp, Entry, Kind};
pub use exclude::{RuleStack, Rules};
pub use hash::Hash;
pub use params::ChunkParams;
pub use recipe::{make_recipe, Piece};
pub use walk::{WalkError, Walked, Walker};

#[cfg(test)]
pub(crate) mod testdata {
    /// Deterministic incompressible bytes (xorshift), so tests need no RNG
    /// state and failures reproduce.
    pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }
}
