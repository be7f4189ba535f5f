//! Recycled receive buffers for large bodies.
//!
//! A decoded body is a view into the read buffer, and the caller usually
//! keeps it (a disk thread writes it, a hash thread hashes it) while the
//! next frame arrives. The read buffer cannot grow in place while such a
//! view is alive, so without recycling every large body costs a fresh
//! allocation of about its size; the allocator hands that memory back to
//! the kernel when the body is dropped and the next allocation faults it
//! in again, page by page (a 1 GiB upload in 1 MiB frames took ~80,000
//! minor faults that way).
//!
//! [`BodyBuffers`] keeps the handles of the last few read buffers that
//! large bodies were read into. Once the caller has dropped every body of
//! one of them, its allocation is unique again and the next large body is
//! read into it, with no allocation and no page fault. The handles only
//! keep alive memory that was received already (never more than
//! [`POOL_LEN`] buffers), and the pool is emptied as soon as a frame
//! without a large body comes, so an idle session holds none of it.

use bytes::BytesMut;

/// Bodies of at least this many bytes are read into a buffer of their
/// own (recycled when possible); smaller ones share the read buffer.
pub(crate) const LARGE_BODY: usize = 128 * 1024;

/// How many retired buffers are kept for reuse: enough for the bodies a
/// disk pipeline holds at once (its queue, the chunk being written and
/// those the hash thread has not reached yet).
pub(crate) const POOL_LEN: usize = 12;

/// Room left after a body in a recycled buffer for what follows it (the
/// next frame's length and header): small, so that little of the next
/// body lands in this buffer and has to be copied out of it.
const HEADROOM: usize = 64 * 1024 + 4;

/// The retired read buffers of one decoder (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct BodyBuffers {
    /// Empty handles of buffers that large bodies were read into, oldest
    /// first; their allocations may still be shared with bodies in use.
    retired: Vec<BytesMut>,
    /// Whether the read buffer in use was placed by [`Self::place`] (and
    /// so is worth keeping when it is retired).
    current_is_large: bool,
    /// Fresh buffers allocated so far (tests).
    #[cfg(test)]
    pub(crate) fresh: usize,
}

impl BodyBuffers {
    /// Makes `buf` ready to receive a body of which `missing` bytes have
    /// not arrived yet: reuses `buf` itself if nothing else holds its
    /// allocation, else moves the bytes received so far into a recycled
    /// buffer, else into a fresh one that starts with `first_reserve`
    /// bytes of room and grows as the body arrives (so memory follows
    /// what was sent, not what a header announced).
    pub(crate) fn place(&mut self, buf: &mut BytesMut, missing: usize, first_reserve: usize) {
        if buf.capacity() - buf.len() >= missing || buf.try_reclaim(missing) {
            return;
        }
        let want = buf.len() + missing + HEADROOM;
        let reusable = self.retired.iter_mut().position(|b| b.try_reclaim(want));
        let next = match reusable {
            Some(i) => {
                let mut next = self.retired.remove(i);
                if next.capacity() > want {
                    // Cap the read-ahead: bytes past the body's end would
                    // have to be copied out again for the next body.
                    drop(next.split_off(want));
                }
                next.extend_from_slice(buf);
                next
            }
            None => {
                #[cfg(test)]
                {
                    self.fresh += 1;
                }
                let mut next = BytesMut::with_capacity(buf.len() + first_reserve);
                next.extend_from_slice(buf);
                next
            }
        };
        let old = std::mem::replace(buf, next);
        if std::mem::replace(&mut self.current_is_large, true) {
            self.retire(old);
        }
    }

    /// Keeps `old` (whose allocation bodies may still share) for reuse.
    fn retire(&mut self, mut old: BytesMut) {
        old.clear();
        if self.retired.len() == POOL_LEN {
            self.retired.remove(0);
        }
        self.retired.push(old);
    }

    /// A frame without a large body came: large bodies are not streaming
    /// right now, so the retired buffers are let go.
    pub(crate) fn release(&mut self) {
        self.retired.clear();
    }

    /// How many retired buffers are held (tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.retired.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use bytes::{Bytes, BytesMut};

    use crate::FrameDecoder;

    /// Frames of `sizes` bytes of body each, every body a distinct pattern.
    fn stream(sizes: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut wire = Vec::new();
        let mut bodies = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let body: Vec<u8> = (0..n).map(|j| (i * 31 + j / 7) as u8).collect();
            let header = format!(r#"{{"op":"data","len":{n}}}"#);
            wire.extend_from_slice(&(header.len() as u32).to_be_bytes());
            wire.extend_from_slice(header.as_bytes());
            wire.extend_from_slice(&body);
            bodies.push(body);
        }
        (wire, bodies)
    }

    /// Reads `wire` the way `FramedRead` does (into the buffer's spare
    /// room, at most 64 KiB per read, `reserve(1)` when it is full),
    /// keeping at most `keep` bodies alive, as a disk pipeline does, and
    /// checks every body against `bodies`. Returns the decoder and the
    /// number of frames.
    fn decode_all(wire: &[u8], bodies: &[Vec<u8>], keep: usize) -> (FrameDecoder, usize) {
        let mut d = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut pos = 0;
        let mut held: VecDeque<Bytes> = VecDeque::new();
        let mut got = 0;
        loop {
            while let Some(f) = d.decode(&mut buf).expect("valid stream") {
                assert_eq!(&f.body()[..], &bodies[got][..], "body {got}");
                got += 1;
                held.push_back(f.body().clone());
                if held.len() > keep {
                    held.pop_front();
                }
            }
            if pos == wire.len() {
                // Every body still held is intact.
                for (k, b) in held.iter().rev().enumerate() {
                    assert_eq!(&b[..], &bodies[got - 1 - k][..], "held body");
                }
                return (d, got);
            }
            buf.reserve(1);
            let n = (buf.capacity() - buf.len())
                .min(64 * 1024)
                .min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
        }
    }

    #[test]
    fn bodies_dropped_by_the_caller_lend_their_buffers_to_the_next_ones() {
        let (wire, bodies) = stream(&[1 << 20; 24]);
        for keep in [0, 4, 9] {
            let (d, got) = decode_all(&wire, &bodies, keep);
            assert_eq!(got, 24);
            // Without recycling every one of the 24 bodies would need one.
            assert!(
                d.buffers.fresh <= keep + 3,
                "keep {keep}: {} fresh buffers for 24 bodies",
                d.buffers.fresh
            );
        }
    }

    #[test]
    fn bodies_still_held_are_never_overwritten() {
        let sizes: Vec<usize> = (0..20).map(|i| (1 << 20) + i * 4099).collect();
        let (wire, bodies) = stream(&sizes);
        let (_, got) = decode_all(&wire, &bodies, usize::MAX);
        assert_eq!(got, 20);
    }

    #[test]
    fn a_small_frame_lets_the_retired_buffers_go() {
        let (mut wire, mut bodies) = stream(&[1 << 20; 6]);
        let (d, _) = decode_all(&wire, &bodies, 0);
        assert!(d.buffers.held() > 0, "large bodies retire their buffers");
        let (small, small_body) = stream(&[10]);
        wire.extend_from_slice(&small);
        bodies.extend(small_body);
        let (d, got) = decode_all(&wire, &bodies, 0);
        assert_eq!(got, 7);
        assert_eq!(d.buffers.held(), 0);
    }
}
