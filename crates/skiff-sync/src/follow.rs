//! The sender's recipe when it follows the old copy's chunks instead of
//! cutting every byte of the new file.
//!
//! Cutting (FastCDC) is the one sequential step of a delta and costs more
//! than twice a BLAKE3 pass. But where the new file still holds the old
//! file's bytes, the sender already knows where the cuts are: FastCDC's
//! cut from a chunk's start depends only on the bytes from there, so once
//! the new file is at a cut point that starts an old chunk, the next old
//! chunk's bytes, if they are unchanged, end in the same cut. The sender
//! then only hashes the range each expected old chunk would cover (on all
//! cores, several chunks at once) and compares; only where that fails
//! does it cut, until a cut chunk matches an old one again.
//!
//! The result is exactly what cutting the whole file gives (the tests
//! compare them), which the receiver's signature cache relies on
//! ([`crate::derive`]). What makes a verified chunk a cut FastCDC would
//! make too:
//! - the cut after a chunk shorter than the maximum looks at one byte past
//!   it, so the chunk counts only when the next old chunk verifies too
//!   (its first byte is that byte); a chunk of the maximum length is
//!   forced and looks at nothing past itself;
//! - FastCDC cuts differently within one maximum chunk of a stream's end,
//!   so chunks there (in the old file or in the new) are cut, not
//!   followed.
//!
//! A wrong signature (a stale cache entry, a hostile receiver) cannot make
//! a wrong file: a copy is sent only for bytes whose hash equals the old
//! chunk's, and the receiver checks the whole file's BLAKE3 after assembly.

use std::collections::HashMap;
use std::io::{self, Read};

use rayon::prelude::*;

use crate::chunker::{read_full, Chunk, Masks, Signature, Window, STEP};
use crate::hash::Hash;
use crate::params::ChunkParams;
use crate::recipe::{CopyRun, Piece};

/// Read buffer when the file is large enough to fill it.
const BUFFER: usize = 16 * 1024 * 1024;
/// Bytes of expected old chunks verified at once (hashed in parallel):
/// [`ROUND_CHUNKS`] average chunks, within these bounds. Each refill of
/// the buffer moves what is still ahead (about two rounds and a maximum
/// chunk) to its front, so a round much smaller than the buffer keeps
/// that copy small; a round of several chunks keeps the cores busy.
const ROUND_MIN: usize = 1024 * 1024;
/// Upper bound of a round (see [`ROUND_MIN`]).
const ROUND_MAX: usize = 4 * 1024 * 1024;
/// Average chunks per round.
const ROUND_CHUNKS: usize = 4;
/// Chunks cut at once (at most [`STEP`] bytes) when following fails.
const CUT_CHUNKS: usize = 16;
/// Below this many bytes at once, hashing in parallel costs more than it
/// saves.
const PARALLEL_MIN: usize = 256 * 1024;

/// The old copy's chunks and where to find one by hash.
struct Old<'a> {
    chunks: Vec<Chunk>,
    index: HashMap<&'a Hash, usize>,
    size: u64,
}

impl<'a> Old<'a> {
    fn new(sig: &'a Signature) -> Old<'a> {
        let chunks: Vec<Chunk> = sig.located().collect();
        let mut index = HashMap::with_capacity(sig.chunks.len());
        for (i, (_, h)) in sig.chunks.iter().enumerate() {
            index.entry(h).or_insert(i);
        }
        let size = chunks.last().map_or(0, |c| c.offset + u64::from(c.len));
        Old {
            chunks,
            index,
            size,
        }
    }

    /// Whether old chunk `i` was cut with a whole maximum chunk after its
    /// start (not in the old file's tail, where FastCDC cuts differently)
    /// and is a length FastCDC can cut (a signature comes from the peer:
    /// one that lies about a length is not followed there).
    fn followable(&self, i: usize, max: u32) -> bool {
        self.chunks
            .get(i)
            .is_some_and(|c| (1..=max).contains(&c.len) && self.size - c.offset >= u64::from(max))
    }
}

/// What the sender does at its current cut point.
#[derive(Clone, Copy)]
enum Mode {
    /// Expects old chunk `.0` to start here.
    Follow(usize),
    /// Cuts, until a chunk matches an old one.
    Cut,
}

/// Streams the recipe of `new` against the non-empty signature `sig` into
/// `emit`, as [`crate::recipe::make_recipe`] does, following the old
/// chunks where they are unchanged (see the module docs). Returns the
/// BLAKE3 and length of `new` as read.
pub(crate) fn follow_recipe<R, F>(
    mut new: R,
    size_hint: Option<u64>,
    sig: &Signature,
    params: ChunkParams,
    mut emit: F,
) -> io::Result<(Hash, u64)>
where
    R: Read,
    F: FnMut(Piece<'_>) -> io::Result<()>,
{
    let old = Old::new(sig);
    let max = params.max as usize;
    let masks = Masks::new(params.avg);
    // Cut this much before looking for a match again: enough chunks to
    // hash on all cores, few enough that little is cut past an edit.
    let cut_block = STEP.min(CUT_CHUNKS * params.avg as usize);
    // Room for a round emitted but not yet digested, and a round plus a
    // maximum chunk and one byte read ahead.
    let round = (ROUND_CHUNKS * params.avg as usize).clamp(ROUND_MIN, ROUND_MAX);
    let floor = 2 * round + 2 * max + 2;
    let want = size_hint.map_or(BUFFER, |s| (s as usize).saturating_add(1));
    let mut buf = vec![0u8; want.clamp(floor.min(want), BUFFER.max(floor))];
    let mut filled = 0usize;
    let mut eof = false;
    // buf[digested..start] is emitted but not yet in the whole digest;
    // buf[start..filled] is read but not emitted. `base` is the stream
    // offset of buf[0].
    let mut digested = 0usize;
    let mut start = 0usize;
    let mut base = 0u64;
    let mut whole = blake3::Hasher::new();
    let mut copies = CopyRun::default();
    let mut mode = if old.followable(0, params.max) {
        Mode::Follow(0)
    } else {
        Mode::Cut
    };
    loop {
        // Keep a round plus a maximum chunk and one byte ahead, or the end.
        if !eof && filled - start < round + max + 1 {
            buf.copy_within(digested..filled, 0);
            filled -= digested;
            start -= digested;
            base += digested as u64;
            digested = 0;
            let n = read_full(&mut new, &mut buf[filled..])?;
            eof = n < buf.len() - filled;
            filled += n;
        }
        if start == filled && eof {
            break;
        }
        match mode {
            Mode::Follow(first) => {
                // The expected old chunks from here: each needs a whole
                // maximum chunk of new data after its start.
                let mut spans = Vec::new();
                let mut at = start;
                let mut i = first;
                while at - start < round && old.followable(i, params.max) && at + max <= filled {
                    let len = old.chunks[i].len as usize;
                    spans.push((at, len));
                    at += len;
                    i += 1;
                }
                if spans.is_empty() {
                    mode = Mode::Cut;
                    continue;
                }
                let hashes = hash_spans(&buf, &spans, &mut whole, digested..start);
                digested = start;
                let verified = spans
                    .iter()
                    .zip(&hashes)
                    .zip(&old.chunks[first..])
                    .take_while(|((_, h), c)| **h == c.hash)
                    .count();
                // A verified chunk is a cut when its successor verified
                // too or it is forced (maximum length).
                let mut taken = 0;
                while taken < verified && (taken + 1 < verified || spans[taken].1 == max) {
                    let c = &old.chunks[first + taken];
                    copies.add(c.offset, u64::from(c.len), &mut emit)?;
                    start += spans[taken].1;
                    taken += 1;
                }
                // Go on following only when every expected chunk held and
                // some were taken (a lone verified chunk whose successor
                // cannot be checked is cut instead).
                mode = if verified == spans.len()
                    && taken > 0
                    && old.followable(first + taken, params.max)
                {
                    Mode::Follow(first + taken)
                } else {
                    Mode::Cut
                };
            }
            Mode::Cut => {
                let window = Window {
                    buf: &buf[..filled],
                    eof,
                    params,
                    masks,
                };
                let lens = window.cut(start, cut_block);
                #[cfg(test)]
                tests::CUT.with(|c| c.set(c.get() + lens.iter().sum::<usize>()));
                if lens.is_empty() {
                    if eof {
                        // Only reachable with nothing left; kept for safety.
                        break;
                    }
                    continue;
                }
                let mut spans = Vec::with_capacity(lens.len());
                let mut at = start;
                for n in lens {
                    spans.push((at, n));
                    at += n;
                }
                let hashes = hash_spans(&buf, &spans, &mut whole, digested..start);
                digested = start;
                let mut last = None;
                for (&(s, n), h) in spans.iter().zip(&hashes) {
                    match old.index.get(h) {
                        Some(&i) => {
                            let c = &old.chunks[i];
                            copies.add(c.offset, u64::from(c.len), &mut emit)?;
                            last = Some(i);
                        }
                        None => {
                            copies.flush(&mut emit)?;
                            emit(Piece::Literal(&buf[s..s + n]))?;
                            last = None;
                        }
                    }
                    start = s + n;
                }
                if let Some(i) = last {
                    if old.followable(i + 1, params.max) {
                        mode = Mode::Follow(i + 1);
                    }
                }
            }
        }
    }
    copies.flush(&mut emit)?;
    crate::hash::update(&mut whole, &buf[digested..start]);
    Ok((whole.finalize().into(), base + start as u64))
}

/// Hashes `spans` of `buf` (on all cores when there is enough) while the
/// whole-stream digest takes `undigested`, the bytes emitted before them.
fn hash_spans(
    buf: &[u8],
    spans: &[(usize, usize)],
    whole: &mut blake3::Hasher,
    undigested: std::ops::Range<usize>,
) -> Vec<Hash> {
    let one = |&(s, n): &(usize, usize)| Hash::of(&buf[s..s + n]);
    let total: usize = spans.iter().map(|s| s.1).sum();
    if total + undigested.len() < PARALLEL_MIN {
        crate::hash::update(whole, &buf[undigested]);
        return spans.iter().map(one).collect();
    }
    let (hashes, ()) = rayon::join(
        || spans.par_iter().map(one).collect(),
        || crate::hash::update(whole, &buf[undigested]),
    );
    hashes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::make_recipe;
    use crate::testdata::pseudo_random;

    thread_local! {
        /// Bytes this thread's recipes cut (rather than followed).
        pub(super) static CUT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Bytes cut while making the recipe of `new` against `old`'s
    /// signature, and the literal bytes sent.
    fn cut_bytes(old: &[u8], new: &[u8]) -> (usize, usize) {
        let sig = Signature::of_reader(old, old.len() as u64).unwrap();
        CUT.with(|c| c.set(0));
        let mut literal = 0;
        make_recipe(new, Some(new.len() as u64), Some(&sig), |p| {
            if let Piece::Literal(d) = p {
                literal += d.len();
            }
            Ok(())
        })
        .unwrap();
        (CUT.with(|c| c.get()), literal)
    }

    /// Where the old bytes are unchanged nothing is cut but the last few
    /// chunks (FastCDC cuts differently near the end); an edit costs
    /// cutting about a chunk on each side of it.
    #[test]
    fn only_what_changed_is_cut() {
        let old = pseudo_random(24 << 20, 11);
        let max = ChunkParams::for_size(old.len() as u64).max as usize;
        let (cut, literal) = cut_bytes(&old, &old);
        assert_eq!(literal, 0);
        assert!(cut <= 3 * max, "cut {cut} of an unchanged file");

        let mut ins = old.clone();
        ins.splice(12 << 20..12 << 20, pseudo_random(1 << 20, 12));
        let (cut, literal) = cut_bytes(&old, &ins);
        assert!(literal >= 1 << 20);
        assert!(
            cut <= (1 << 20) + 16 * max,
            "cut {cut} around a 1 MiB insertion"
        );

        let mut rewritten = old.clone();
        for i in 0..4 {
            let at = (5 * i + 2) << 20;
            rewritten[at..at + 100_000].copy_from_slice(&pseudo_random(100_000, 20 + i as u64));
        }
        let (cut, _) = cut_bytes(&old, &rewritten);
        assert!(
            cut <= 4 * (100_000 + 16 * max),
            "cut {cut} around 4 rewrites"
        );
    }

    /// A signature that lies (chunks longer than the parameters allow,
    /// empty ones, lengths that do not add up) is not followed where it
    /// lies: the recipe is still made, with the right whole-file digest,
    /// and nothing reads past the data.
    #[test]
    fn a_lying_signature_is_not_followed() {
        let old = pseudo_random(8 << 20, 3);
        let mut sig = Signature::of_reader(&old[..], old.len() as u64).unwrap();
        let max = sig.params.max;
        sig.chunks[2].0 = max * 3;
        sig.chunks.insert(5, (0, Hash::of(b"")));
        sig.chunks[9].0 = u32::MAX;
        for new in [&old[..], &old[..1 << 20]] {
            let (hash, n) =
                make_recipe(new, Some(new.len() as u64), Some(&sig), |_| Ok(())).unwrap();
            assert_eq!((hash, n), (Hash::of(new), new.len() as u64));
        }
    }

    /// A file that shares nothing with the old one is cut whole, and a
    /// signature of other content leaves nothing to follow.
    #[test]
    fn a_different_file_is_cut_whole() {
        let old = pseudo_random(4 << 20, 1);
        let new = pseudo_random(4 << 20, 2);
        let (cut, literal) = cut_bytes(&old, &new);
        assert_eq!((cut, literal), (new.len(), new.len()));
    }
}
