//! The signature of a file the receiver assembles, worked out from the
//! recipe while it is applied, so that the receiver never has to read and
//! cut that file again to describe it next time.
//!
//! When the sender cuts the new file with the parameters of the old
//! copy's signature, every recipe step is made of whole chunks: a copy is
//! a run of the old copy's chunks (whose lengths and hashes the signature
//! has), a literal is exactly one chunk of the new file (hashed here, from
//! the bytes received). The new file's chunk list is then those chunks in
//! order, and equals what cutting the assembled file with the same
//! parameters gives. A step that does not fit (a copy that starts or ends
//! inside an old chunk, a literal longer than a chunk may be) means the
//! recipe was not made that way, and nothing is derived.
//!
//! A derived signature is only a hint to save work: used against a file
//! it does not describe, the sender's recipe produces bytes whose
//! whole-file BLAKE3 does not match, and the receiver refuses the result
//! (`crate::assemble`), so a wrong list can fail a transfer but never
//! produce a wrong file.

use std::sync::Arc;

use crate::chunker::Signature;
use crate::hash::Hash;

/// Follows a recipe against `basis` and collects the new file's chunks.
pub struct Derive {
    basis: Arc<Signature>,
    /// Where each of the basis's chunks starts (the running sums).
    starts: Vec<u64>,
    chunks: Vec<(u32, Hash)>,
    size: u64,
    broken: bool,
}

impl Derive {
    /// Derives against the signature the sender was given.
    pub fn new(basis: Arc<Signature>) -> Derive {
        let mut at = 0u64;
        let starts = basis
            .chunks
            .iter()
            .map(|&(len, _)| {
                let s = at;
                at += u64::from(len);
                s
            })
            .collect();
        Derive {
            basis,
            starts,
            chunks: Vec::new(),
            size: 0,
            broken: false,
        }
    }

    /// A copy step of `len` bytes at `offset` of the old copy.
    pub fn copy(&mut self, offset: u64, len: u64) {
        if self.broken {
            return;
        }
        let Ok(mut i) = self.starts.binary_search(&offset) else {
            self.broken = true;
            return;
        };
        let mut left = len;
        while left > 0 {
            let Some(&(n, h)) = self.basis.chunks.get(i) else {
                self.broken = true;
                return;
            };
            if u64::from(n) > left {
                self.broken = true;
                return;
            }
            self.chunks.push((n, h));
            left -= u64::from(n);
            i += 1;
        }
        self.size += len;
    }

    /// A literal step: one chunk of the new file.
    pub fn literal(&mut self, data: &[u8]) {
        if self.broken {
            return;
        }
        let max = self.basis.params.max as usize;
        if data.is_empty() || data.len() > max {
            self.broken = true;
            return;
        }
        self.chunks.push((data.len() as u32, Hash::of(data)));
        self.size += data.len() as u64;
    }

    /// The assembled file's signature (cut with the basis's parameters),
    /// or `None` when a step did not fit or the size is not `size`.
    pub fn finish(self, size: u64) -> Option<Signature> {
        (!self.broken && self.size == size).then(|| Signature {
            params: self.basis.params,
            size,
            chunks: self.chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{make_recipe, Piece};
    use crate::testdata::pseudo_random;

    fn derive(old: &[u8], new: &[u8]) -> Option<Signature> {
        let sig = Arc::new(Signature::of_reader(old, old.len() as u64).unwrap());
        let mut d = Derive::new(sig.clone());
        make_recipe(new, Some(new.len() as u64), Some(&sig), |p| {
            match p {
                Piece::Copy { offset, len } => d.copy(offset, len),
                Piece::Literal(b) => d.literal(b),
            }
            Ok(())
        })
        .unwrap();
        d.finish(new.len() as u64)
    }

    /// Rewrites and an insertion: the derived list is the one cutting the
    /// new file with the old copy's parameters gives.
    #[test]
    fn the_derived_list_is_the_new_files_signature() {
        let old = pseudo_random(12 << 20, 3);
        let mut rewritten = old.clone();
        rewritten[1 << 20..(1 << 20) + 70_000].copy_from_slice(&pseudo_random(70_000, 4));
        rewritten[9 << 20..(9 << 20) + 5].copy_from_slice(b"12345");
        let mut inserted = old.clone();
        inserted.splice(6 << 20..6 << 20, pseudo_random(200_000, 5));
        for new in [&rewritten, &inserted] {
            let got = derive(&old, new).expect("derived");
            let want = Signature::of_reader(&new[..], old.len() as u64).unwrap();
            assert_eq!(got.chunks, want.chunks);
            assert_eq!(got.size, new.len() as u64);
        }
    }

    /// Steps that are not whole chunks derive nothing.
    #[test]
    fn steps_that_are_not_chunks_derive_nothing() {
        let old = pseudo_random(1 << 20, 6);
        let sig = Arc::new(Signature::of_reader(&old[..], old.len() as u64).unwrap());
        let first = u64::from(sig.chunks[0].0);
        let mut d = Derive::new(sig.clone());
        d.copy(1, first);
        assert!(d.finish(first).is_none());
        let mut d = Derive::new(sig.clone());
        d.copy(0, first + 1);
        assert!(d.finish(first + 1).is_none());
        let mut d = Derive::new(sig.clone());
        d.literal(&vec![0u8; sig.params.max as usize + 1]);
        assert!(d.finish(u64::from(sig.params.max) + 1).is_none());
        let mut d = Derive::new(sig);
        d.copy(0, first);
        assert!(d.finish(first + 1).is_none());
    }
}
