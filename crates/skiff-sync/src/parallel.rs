//! Work on all cores while keeping list order: files are hashed in
//! batches spread over rayon's pool (one thread per core), and a large
//! file's own hash is split across cores too.

use std::io::{self, Read};

use rayon::prelude::*;

use crate::hash::Hash;

/// Items taken from the input per batch. Large enough to keep every core
/// busy with small files; small enough that memory stays a few hundred
/// entries.
pub const BATCH: usize = 256;

/// Maps `f` over `input` on all cores, `BATCH` items at a time, yielding
/// results in input order. Memory: one batch of inputs and outputs.
pub fn ordered_map<I, T, U, F>(input: I, f: F) -> impl Iterator<Item = U>
where
    I: Iterator<Item = T>,
    T: Send,
    U: Send,
    F: Fn(T) -> U + Sync + Send,
{
    let mut input = input.fuse();
    let mut ready = std::collections::VecDeque::new();
    std::iter::from_fn(move || {
        if ready.is_empty() {
            let batch: Vec<T> = input.by_ref().take(BATCH).collect();
            if batch.is_empty() {
                return None;
            }
            let out: Vec<U> = batch.into_par_iter().map(&f).collect();
            ready.extend(out);
        }
        ready.pop_front()
    })
}

/// BLAKE3 and length of everything `reader` yields; big reads are hashed
/// across cores.
pub fn hash_reader<R: Read>(mut reader: R) -> io::Result<(Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        crate::hash::update(&mut hasher, &buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize().into(), total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::pseudo_random;

    #[test]
    fn keeps_order_across_batches() {
        let out: Vec<usize> = ordered_map(0..(BATCH * 3 + 7), |i| i * 2).collect();
        assert_eq!(out, (0..(BATCH * 3 + 7)).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(ordered_map(std::iter::empty::<u8>(), |i| i).count(), 0);
    }

    #[test]
    fn hashes_like_one_call() {
        let data = pseudo_random(3 << 20, 8);
        assert_eq!(
            hash_reader(&data[..]).unwrap(),
            (Hash::of(&data), data.len() as u64)
        );
    }
}
