//! Recycled send buffers: the sending side's counterpart of the frame
//! decoder's receive-buffer recycling (`skiff-wire`'s `recycle` module).
//!
//! A reading thread hands each chunk of a file to the network task (whose
//! session writes it to the stream from the chunk itself) and, for a large file, to a
//! hash thread, as a shared [`Bytes`]. A fresh buffer per chunk costs an
//! allocation of about a MiB that the allocator gives back to the kernel
//! once both are done with it, and the next chunk faults the same amount
//! in again, page by page. A [`ChunkPool`] keeps a handle to each chunk it
//! lent; once every other holder has dropped its copy the allocation is
//! unique again and the next chunk is read into it: no allocation, no
//! page fault.
//!
//! The handles only keep alive chunks that were read already and are
//! normally still in flight (the pipeline's channel, the hash thread's
//! queue, the session's write queue), never more than [`POOL_LEN`] of them, and the
//! pool goes with the reader when the transfer ends.

use std::collections::VecDeque;
use std::io::{self, Read};

use bytes::Bytes;

use super::WINDOW;

/// How many lent chunks a pool keeps handles to: the chunks a pipeline
/// holds at once (its channel and the hash thread's, one in each thread's
/// hands, one in the session's write queue) with a little to spare,
/// so that one of them is normally free again when the next is read.
pub(crate) const POOL_LEN: usize = 2 * WINDOW + 4;

/// The chunk buffers one reader lent out (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct ChunkPool {
    /// Handles of the chunks lent out, oldest first.
    lent: VecDeque<Bytes>,
    /// Fresh buffers allocated so far (tests).
    #[cfg(test)]
    fresh: usize,
}

impl ChunkPool {
    /// An empty pool; it allocates a buffer only when none of the chunks it
    /// lent is free again.
    pub(crate) fn new() -> ChunkPool {
        ChunkPool::default()
    }

    /// An empty buffer with room for at least `want` bytes: a lent chunk
    /// nobody holds any more, else a fresh allocation.
    pub(crate) fn buffer(&mut self, want: usize) -> Vec<u8> {
        while let Some(i) = self.lent.iter().position(Bytes::is_unique) {
            let Some(b) = self.lent.remove(i) else { break };
            if let Ok(mut m) = b.try_into_mut() {
                if m.capacity() >= want {
                    // Emptied first: the conversion moves what is left to
                    // the front of the allocation.
                    m.clear();
                    return Vec::from(m);
                }
                // Too small for this chunk: let it go.
            }
        }
        #[cfg(test)]
        {
            self.fresh += 1;
        }
        Vec::with_capacity(want)
    }

    /// Lends `buf` out as a shared [`Bytes`], keeping a handle to take the
    /// allocation back once every holder has dropped it.
    pub(crate) fn lend(&mut self, buf: Vec<u8>) -> Bytes {
        let chunk = Bytes::from(buf);
        if self.lent.len() == POOL_LEN {
            // Every chunk is still in use: forget the oldest (its holders
            // free it) rather than hold more memory.
            self.lent.pop_front();
        }
        self.lent.push_back(chunk.clone());
        chunk
    }

    /// Reads up to `max` bytes from `reader` into a recycled buffer (std
    /// reads into its spare room, never zeroing it first); short only at
    /// the end of the input.
    pub(crate) fn read(&mut self, reader: impl Read, max: usize) -> io::Result<Bytes> {
        let mut buf = self.buffer(max);
        reader.take(max as u64).read_to_end(&mut buf)?;
        Ok(self.lend(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 1 << 20;

    #[test]
    fn a_dropped_chunk_lends_its_allocation_to_the_next_one() {
        let mut pool = ChunkPool::new();
        let data = vec![7u8; 3 * SIZE];
        let first = pool.read(&data[..], SIZE).expect("read");
        let at = first.as_ptr();
        drop(first);
        let second = pool.read(&data[SIZE..], SIZE).expect("read");
        assert_eq!(second.as_ptr(), at, "the same allocation again");
        assert_eq!(&second[..], &data[SIZE..2 * SIZE]);
        assert_eq!(pool.fresh, 1);
    }

    #[test]
    fn chunks_still_held_are_never_overwritten() {
        let mut pool = ChunkPool::new();
        let data: Vec<u8> = (0..40 * 4096).map(|i| (i / 4096) as u8).collect();
        let mut held = VecDeque::new();
        for (i, piece) in data.chunks(4096).enumerate() {
            let chunk = pool.read(piece, 4096).expect("read");
            assert_eq!(&chunk[..], piece);
            held.push_back((i, chunk));
            // A pipeline holding up to 6 chunks, and a clone elsewhere.
            if held.len() > 6 {
                held.pop_front();
            }
            for (j, c) in &held {
                assert_eq!(&c[..], &data[j * 4096..(j + 1) * 4096], "chunk {j}");
            }
        }
        assert!(
            pool.fresh <= 8,
            "{} fresh buffers for 40 chunks",
            pool.fresh
        );
    }

    #[test]
    fn the_pool_holds_at_most_pool_len_chunks() {
        let mut pool = ChunkPool::new();
        let mut all = Vec::new();
        for _ in 0..3 * POOL_LEN {
            all.push(pool.read(&[1u8; 100][..], 100).expect("read"));
        }
        assert_eq!(pool.lent.len(), POOL_LEN);
        assert_eq!(pool.fresh, 3 * POOL_LEN, "nothing was free to reuse");
    }

    #[test]
    fn a_short_read_at_the_end_is_short() {
        let mut pool = ChunkPool::new();
        let chunk = pool.read(&b"abc"[..], SIZE).expect("read");
        assert_eq!(&chunk[..], b"abc");
        drop(chunk);
        // A buffer that holds fewer bytes than wanted is still reused when
        // its capacity suffices.
        let again = pool.read(&b"defg"[..], 4).expect("read");
        assert_eq!(&again[..], b"defg");
    }
}
