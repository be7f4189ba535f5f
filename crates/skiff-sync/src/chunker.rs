//! Content-defined chunking (FastCDC 2020) of a byte stream, with BLAKE3
//! hashes of every chunk and of the whole stream, computed on all cores.
//!
//! The stream is read into a buffer of at least twice the largest chunk; a
//! cut is only made where at least one maximum-sized chunk of data (or the
//! end of the stream) follows, and the uncut tail is carried into the next
//! fill. FastCDC's cut point depends only on the bytes from the start of the
//! chunk, so this gives exactly the chunks FastCDC finds over the whole file
//! held in memory, with memory bounded by the buffer.

use std::io::{self, Read};

use fastcdc::v2020;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::hash::Hash;
use crate::params::ChunkParams;

/// Read buffer per chunker when the file is large enough to fill it.
const BUFFER: usize = 8 * 1024 * 1024;
/// Below this much data per block, hashing in parallel costs more than it
/// saves.
const PARALLEL_MIN: usize = 256 * 1024;

/// One chunk of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Where the chunk starts in the stream.
    pub offset: u64,
    /// Its length in bytes (never 0).
    pub len: u32,
    /// BLAKE3 of its bytes.
    pub hash: Hash,
}

/// A run of consecutive chunks and the bytes they cover, as one buffer fill
/// yields them. `data` is exactly the concatenation of the chunks.
#[derive(Debug)]
pub struct Block<'a> {
    /// The chunks, in stream order, with absolute offsets.
    pub chunks: Vec<Chunk>,
    /// Their bytes; `chunks[i]` is `data[chunks[i].offset - chunks[0].offset ..][..len]`.
    pub data: &'a [u8],
}

impl Block<'_> {
    /// The bytes of one of this block's chunks.
    pub fn bytes_of(&self, chunk: &Chunk) -> &[u8] {
        let base = self.chunks.first().map_or(0, |c| c.offset);
        let start = (chunk.offset - base) as usize;
        &self.data[start..start + chunk.len as usize]
    }
}

/// Cuts and hashes a stream block by block (see the module docs).
///
/// Cutting is sequential (each cut point depends on where the chunk
/// starts), hashing is not: each block's chunks (and the whole-stream
/// digest) are hashed on the pool while the next block is cut, so the
/// cut and the hashes run on different cores at once.
pub struct Chunker<R> {
    reader: R,
    params: ChunkParams,
    masks: Masks,
    buf: Vec<u8>,
    /// `buf[start..filled]` is read but not yet emitted.
    start: usize,
    filled: usize,
    eof: bool,
    /// Stream offset of `buf[start]`.
    offset: u64,
    /// Chunk lengths already cut from `start` on (the next block).
    pending: Vec<usize>,
    /// The whole-stream digest; `None` when it is not wanted (a signature).
    whole: Option<blake3::Hasher>,
}

/// Data cut per block: small enough that cutting the next block overlaps
/// hashing this one several times per buffer fill.
pub(crate) const STEP: usize = 2 * 1024 * 1024;

/// FastCDC's masks for one average size.
#[derive(Clone, Copy)]
pub(crate) struct Masks {
    s: u64,
    l: u64,
}

impl Masks {
    pub(crate) fn new(avg: u32) -> Masks {
        let bits = v2020::logarithm2(avg) as usize;
        // Normalisation level 1, as `v2020::FastCDC::new`.
        Masks {
            s: v2020::MASKS[bits + 1],
            l: v2020::MASKS[bits - 1],
        }
    }
}

/// Where the bytes to cut are: `buf[..filled]`, the stream's end when `eof`.
pub(crate) struct Window<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) eof: bool,
    pub(crate) params: ChunkParams,
    pub(crate) masks: Masks,
}

impl Window<'_> {
    /// Chunk lengths that can be cut from `pos` on, about `limit` bytes of
    /// them (at least one chunk when any can be cut).
    pub(crate) fn cut(&self, mut pos: usize, limit: usize) -> Vec<usize> {
        let p = self.params;
        let end = pos.saturating_add(limit);
        let mut lens = Vec::new();
        while pos < self.buf.len() && pos < end {
            let rest = self.buf.len() - pos;
            if !self.eof && rest < p.max as usize {
                break;
            }
            let (_, n) = v2020::cut(
                &self.buf[pos..],
                p.min as usize,
                p.avg as usize,
                p.max as usize,
                self.masks.s,
                self.masks.l,
                self.masks.s << 1,
                self.masks.l << 1,
            );
            lens.push(n);
            pos += n;
        }
        lens
    }
}

impl<R: Read> Chunker<R> {
    /// A chunker over `reader`. `size_hint` (the file size, when known)
    /// keeps the buffer small for small files.
    pub fn new(reader: R, params: ChunkParams, size_hint: Option<u64>) -> Chunker<R> {
        let floor = 2 * params.max as usize;
        let want = size_hint.map_or(BUFFER, |s| (s as usize).saturating_add(1).min(BUFFER));
        Chunker {
            reader,
            params,
            masks: Masks::new(params.avg),
            buf: vec![0; want.max(floor).min(BUFFER.max(floor))],
            start: 0,
            filled: 0,
            eof: false,
            offset: 0,
            pending: Vec::new(),
            whole: Some(blake3::Hasher::new()),
        }
    }

    /// The same chunker without the whole-stream digest (a signature needs
    /// only the chunks'), which halves the hashing.
    pub fn without_digest(mut self) -> Chunker<R> {
        self.whole = None;
        self
    }

    /// The parameters this chunker cuts with.
    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// Bytes emitted so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next run of chunks, or `None` at the end of the stream.
    pub fn next_block(&mut self) -> io::Result<Option<Block<'_>>> {
        loop {
            if self.pending.is_empty() {
                self.pending = self.window().cut(self.start, STEP);
            }
            if !self.pending.is_empty() {
                let lens = std::mem::take(&mut self.pending);
                return Ok(Some(self.emit(lens)));
            }
            if self.eof {
                return Ok(None);
            }
            self.fill()?;
        }
    }

    /// Drains the stream and returns the whole-stream hash and length (an
    /// error for a chunker made [`without_digest`](Self::without_digest)).
    pub fn finish(mut self) -> io::Result<(Hash, u64)> {
        while self.next_block()?.is_some() {}
        match self.whole.take() {
            Some(h) => Ok((h.finalize().into(), self.offset)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "this chunker keeps no whole-stream digest",
            )),
        }
    }

    fn window(&self) -> Window<'_> {
        Window {
            buf: &self.buf[..self.filled],
            eof: self.eof,
            params: self.params,
            masks: self.masks,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        self.buf.copy_within(self.start..self.filled, 0);
        self.filled -= self.start;
        self.start = 0;
        let want = self.buf.len() - self.filled;
        let n = read_full(&mut self.reader, &mut self.buf[self.filled..])?;
        self.filled += n;
        self.eof = n < want;
        Ok(())
    }

    /// Hashes the chunks `lens` (from `start`) and feeds the whole-stream
    /// digest, while the next block is cut; returns the block.
    fn emit(&mut self, lens: Vec<usize>) -> Block<'_> {
        let total: usize = lens.iter().sum();
        let mut at = 0usize;
        let spans: Vec<(usize, usize)> = lens
            .iter()
            .map(|&n| {
                let span = (at, n);
                at += n;
                span
            })
            .collect();
        let window = Window {
            buf: &self.buf[..self.filled],
            eof: self.eof,
            params: self.params,
            masks: self.masks,
        };
        let data = &window.buf[self.start..self.start + total];
        let hash_one = |&(s, n): &(usize, usize)| Hash::of(&data[s..s + n]);
        let whole = &mut self.whole;
        let next_from = self.start + total;
        let (hashes, next): (Vec<Hash>, Vec<usize>) = if total >= PARALLEL_MIN {
            let hash_all = || {
                let (hashes, ()) = rayon::join(
                    || spans.par_iter().map(hash_one).collect(),
                    || {
                        if let Some(w) = whole {
                            w.update_rayon(data);
                        }
                    },
                );
                hashes
            };
            rayon::join(hash_all, || window.cut(next_from, STEP))
        } else {
            if let Some(w) = whole {
                w.update(data);
            }
            (spans.iter().map(hash_one).collect(), Vec::new())
        };
        self.pending = next;
        let base = self.offset;
        let chunks = spans
            .iter()
            .zip(hashes)
            .map(|(&(s, n), hash)| Chunk {
                offset: base + s as u64,
                len: n as u32,
                hash,
            })
            .collect();
        self.start += total;
        self.offset += total as u64;
        Block {
            chunks,
            data: &self.buf[self.start - total..self.start],
        }
    }
}

/// Reads into all of `buf`; fewer bytes only at the end of the stream.
pub(crate) fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What the receiver knows of its old copy of a file: enough for the sender
/// to find which of the new file's chunks it already has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The parameters the chunks were cut with; the sender must use them.
    pub params: ChunkParams,
    /// Length of the old file.
    pub size: u64,
    /// Chunk lengths and hashes in file order (offsets are the running sum).
    pub chunks: Vec<(u32, Hash)>,
}

impl Signature {
    /// Cuts `reader` (the old file, `size` bytes expected) with the
    /// parameters for its size.
    pub fn of_reader<R: Read>(reader: R, size: u64) -> io::Result<Signature> {
        let params = ChunkParams::for_size(size);
        let mut chunker = Chunker::new(reader, params, Some(size)).without_digest();
        let mut chunks = Vec::new();
        while let Some(block) = chunker.next_block()? {
            chunks.extend(block.chunks.iter().map(|c| (c.len, c.hash)));
        }
        let size = chunker.offset();
        Ok(Signature {
            params,
            size,
            chunks,
        })
    }

    /// Chunks with their offsets.
    pub fn located(&self) -> impl Iterator<Item = Chunk> + '_ {
        let mut at = 0u64;
        self.chunks.iter().map(move |&(len, hash)| {
            let c = Chunk {
                offset: at,
                len,
                hash,
            };
            at += u64::from(len);
            c
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::pseudo_random;
    use proptest::prelude::*;

    fn chunk_all(data: &[u8], params: ChunkParams) -> (Vec<Chunk>, Hash, u64) {
        let mut c = Chunker::new(data, params, None);
        let mut out = Vec::new();
        while let Some(b) = c.next_block().unwrap() {
            for ch in &b.chunks {
                assert_eq!(Hash::of(b.bytes_of(ch)), ch.hash);
            }
            out.extend(b.chunks);
        }
        let (h, n) = c.finish().unwrap();
        (out, h, n)
    }

    /// A reader that returns at most `step` bytes per read, to exercise
    /// short reads and refills.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn matches_fastcdc_over_the_whole_buffer() {
        let data = pseudo_random(20 << 20, 7);
        let p = ChunkParams::for_size(data.len() as u64);
        let (ours, whole, n) = chunk_all(&data, p);
        let theirs: Vec<(u64, u32)> = v2020::FastCDC::new(&data, p.min, p.avg, p.max)
            .map(|c| (c.offset as u64, c.length as u32))
            .collect();
        let ours_spans: Vec<(u64, u32)> = ours.iter().map(|c| (c.offset, c.len)).collect();
        assert_eq!(ours_spans, theirs);
        assert_eq!(whole, Hash::of(&data));
        assert_eq!(n, data.len() as u64);
        assert!(ours.len() > 100, "chunks: {}", ours.len());
    }

    #[test]
    fn short_reads_give_the_same_chunks() {
        let data = pseudo_random(3 << 20, 9);
        let p = ChunkParams::for_size(1 << 20);
        let (a, ha, _) = chunk_all(&data, p);
        let mut c = Chunker::new(
            Trickle {
                data: &data,
                step: 777,
            },
            p,
            Some(data.len() as u64),
        );
        let mut b = Vec::new();
        while let Some(block) = c.next_block().unwrap() {
            b.extend(block.chunks);
        }
        let (hb, _) = c.finish().unwrap();
        assert_eq!(a, b);
        assert_eq!(ha, hb);
    }

    #[test]
    fn empty_and_tiny_streams() {
        let p = ChunkParams::for_size(0);
        let (c, h, n) = chunk_all(b"", p);
        assert!(c.is_empty());
        assert_eq!((h, n), (Hash::of(b""), 0));
        let (c, h, _) = chunk_all(b"x", p);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].hash, h);
        let sig = Signature::of_reader(&b"hello"[..], 5).unwrap();
        assert_eq!(sig.size, 5);
        assert_eq!(sig.chunks, vec![(5, Hash::of(b"hello"))]);
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let old = pseudo_random(4 << 20, 3);
        let mut new = old.clone();
        new.splice(2 << 20..2 << 20, pseudo_random(1000, 4));
        let p = ChunkParams::for_size(old.len() as u64);
        let (a, _, _) = chunk_all(&old, p);
        let (b, _, _) = chunk_all(&new, p);
        let old_set: std::collections::HashSet<Hash> = a.iter().map(|c| c.hash).collect();
        let fresh = b.iter().filter(|c| !old_set.contains(&c.hash)).count();
        assert!(fresh <= 3, "{fresh} new chunks of {}", b.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn chunks_tile_the_stream(len in 0usize..300_000, seed in any::<u64>(), step in 1usize..100_000) {
            let data = pseudo_random(len, seed);
            let p = ChunkParams::for_size(0);
            let mut c = Chunker::new(Trickle { data: &data, step }, p, None);
            let mut at = 0u64;
            while let Some(b) = c.next_block().unwrap() {
                for ch in &b.chunks {
                    prop_assert_eq!(ch.offset, at);
                    prop_assert!(ch.len >= 1 && ch.len <= p.max);
                    prop_assert_eq!(ch.hash, Hash::of(&data[at as usize..][..ch.len as usize]));
                    at += u64::from(ch.len);
                }
            }
            prop_assert_eq!(at, len as u64);
            let (h, n) = c.finish().unwrap();
            prop_assert_eq!(h, Hash::of(&data));
            prop_assert_eq!(n, len as u64);
        }
    }
}
