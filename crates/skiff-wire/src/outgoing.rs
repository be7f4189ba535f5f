//! Frames waiting to be written, without copying large bodies.
//!
//! A sender's data chunks are already in memory as shared [`Bytes`] (read
//! from a file, or received from another peer). Appending each one to a
//! contiguous write buffer costs a copy of every byte sent (a `memmove`
//! that took 10-18 % of a bulk sender's time). A [`WriteQueue`] keeps the
//! small frames and every frame's header in one buffer, as before, but a
//! large body as a handle on the caller's own buffer, in order between
//! them: a vectored write ([`io_slices`](WriteQueue::io_slices), then
//! [`advance`](WriteQueue::advance) by what the write took) sends the
//! header and the body from where they are. The bytes on the wire are
//! exactly those of [`encode_frame`](crate::encode_frame) one frame after
//! the other.
//!
//! The queue does no I/O and has no bound of its own: the writer that
//! owns it drains it once [`len`](WriteQueue::len) passes its high-water
//! mark, as it would a plain buffer.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

use crate::encoder::{encode_header, encode_raw_header};
use crate::{FrameError, Message};

/// Bodies at least this large are kept by handle rather than copied: below
/// it a copy costs less than the extra slice of a vectored write, and many
/// small frames stay one contiguous run of bytes (one TLS record, one
/// segment).
pub const SHARE_MIN: usize = 16 * 1024;

/// Frames queued for sending: a buffer for headers and small bodies, and
/// the large bodies by handle, in the order they were queued (module docs).
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// Bytes before `tail`, oldest first: runs of the buffer that were cut
    /// off where a shared body followed, and those bodies.
    segments: VecDeque<Bytes>,
    /// The newest bytes: headers and copied bodies since the last shared
    /// body.
    tail: BytesMut,
    /// Bytes queued and not yet advanced past, in `segments` and `tail`.
    len: usize,
}

impl WriteQueue {
    /// An empty queue.
    pub fn new() -> WriteQueue {
        WriteQueue::default()
    }

    /// Queues one frame; the body is copied (use
    /// [`push_shared`](Self::push_shared) for a large body already in a
    /// [`Bytes`]). On error nothing is queued.
    pub fn push<M: Message>(&mut self, msg: &M, body: &[u8]) -> Result<(), FrameError> {
        let before = self.tail.len();
        crate::encode_frame(msg, body, &mut self.tail)?;
        self.len += self.tail.len() - before;
        Ok(())
    }

    /// Queues one frame whose body is sent from `body` itself when it is
    /// [`SHARE_MIN`] bytes or more (the queue holds a handle until the
    /// bytes are written). On error nothing is queued.
    pub fn push_shared<M: Message>(&mut self, msg: &M, body: Bytes) -> Result<(), FrameError> {
        if body.len() < SHARE_MIN {
            return self.push(msg, &body);
        }
        let before = self.tail.len();
        encode_header(msg, body.len(), &mut self.tail)?;
        self.len += self.tail.len() - before;
        self.append_shared(body);
        Ok(())
    }

    /// Queues one frame with an already-serialized header (see
    /// [`encode_raw`](crate::encode_raw)), its body shared as in
    /// [`push_shared`](Self::push_shared). On error nothing is queued.
    pub fn push_raw(&mut self, header: &[u8], body: &Bytes) -> Result<(), FrameError> {
        let before = self.tail.len();
        if body.len() < SHARE_MIN {
            crate::encode_raw(header, body, &mut self.tail)?;
            self.len += self.tail.len() - before;
            return Ok(());
        }
        encode_raw_header(header, body.len(), &mut self.tail)?;
        self.len += self.tail.len() - before;
        self.append_shared(body.clone());
        Ok(())
    }

    /// Puts `body` behind everything queued so far: the buffer's bytes
    /// become a segment of their own (no copy: `split` keeps the
    /// allocation), then the body.
    fn append_shared(&mut self, body: Bytes) {
        if !self.tail.is_empty() {
            self.segments.push_back(self.tail.split().freeze());
        }
        self.len += body.len();
        self.segments.push_back(body);
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `dst` with the queued bytes in order, as many slices as fit,
    /// and says how many it filled (0 only when the queue is empty). Hand
    /// `&dst[..n]` to a vectored write, then [`advance`](Self::advance) by
    /// what it wrote.
    pub fn io_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let parts = self
            .segments
            .iter()
            .map(|b| &b[..])
            .chain(std::iter::once(&self.tail[..]))
            .filter(|b| !b.is_empty());
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(parts) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }

    /// The oldest queued bytes as one slice (empty when the queue is):
    /// for a writer that cannot write vectored.
    pub fn first_chunk(&self) -> &[u8] {
        match self.segments.front() {
            Some(b) => b,
            None => &self.tail,
        }
    }

    /// Drops the first `n` queued bytes, which were written (`n` at most
    /// [`len`](Self::len); more is clamped). A shared body is released as
    /// soon as all of it was written.
    pub fn advance(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                self.tail.advance(n);
                break;
            };
            if n < front.len() {
                front.advance(n);
                break;
            }
            n -= front.len();
            self.segments.pop_front();
        }
        if self.len == 0 {
            // Lets the next frame reuse the buffer from its start.
            self.tail.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::files::Data;
    use crate::message::ping::Ping;
    use crate::{ErrorCode, ErrorMsg, Frame, FrameReader};

    /// What a vectored writer sends, taking at most `step` bytes per
    /// write (a socket or TLS stream that accepts only part of a write).
    fn drain(q: &mut WriteQueue, step: usize, max_slices: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        while !q.is_empty() {
            let mut slots = vec![IoSlice::new(&[]); max_slices];
            let n = q.io_slices(&mut slots);
            assert!(n > 0, "a non-empty queue has a slice");
            let mut took = 0;
            for s in &slots[..n] {
                let want = (step - took).min(s.len());
                wire.extend_from_slice(&s[..want]);
                took += want;
                if took == step {
                    break;
                }
            }
            q.advance(took);
        }
        wire
    }

    fn pattern(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    /// The same frames as one contiguous buffer (the format's definition).
    fn expected(frames: &[(bool, Bytes)]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        for (is_data, body) in frames {
            if *is_data {
                crate::encode_frame(&Data {}, body, &mut buf).unwrap();
            } else {
                crate::encode_frame(&Ping {}, body, &mut buf).unwrap();
            }
        }
        buf.to_vec()
    }

    fn mixed() -> Vec<(bool, Bytes)> {
        vec![
            (false, Bytes::new()),
            (true, pattern(SHARE_MIN, 1)),
            (true, pattern(SHARE_MIN - 1, 2)),
            (false, pattern(3, 3)),
            (true, pattern(1024 * 1024, 4)),
            (true, pattern(1024 * 1024 + 7, 5)),
            (false, Bytes::new()),
            (true, pattern(100_000, 6)),
        ]
    }

    fn queue_of(frames: &[(bool, Bytes)]) -> WriteQueue {
        let mut q = WriteQueue::new();
        for (is_data, body) in frames {
            if *is_data {
                q.push_shared(&Data {}, body.clone()).unwrap();
            } else {
                q.push(&Ping {}, body).unwrap();
            }
        }
        q
    }

    #[test]
    fn vectored_frames_are_the_contiguous_bytes_whatever_the_write_sizes() {
        let frames = mixed();
        let want = expected(&frames);
        for (step, slices) in [(usize::MAX, 64), (1, 64), (7, 3), (4096, 1), (65_536, 2)] {
            let mut q = queue_of(&frames);
            assert_eq!(q.len(), want.len());
            let wire = drain(&mut q, step, slices);
            assert!(wire == want, "step {step}, {slices} slices: bytes differ");
            assert_eq!(q.len(), 0);
        }
    }

    #[test]
    fn written_frames_decode_to_the_same_frames() {
        let frames = mixed();
        let mut q = queue_of(&frames);
        let wire = drain(&mut q, 10_000, 5);
        let mut r = FrameReader::new();
        r.feed(&wire);
        for (is_data, body) in &frames {
            let f: Frame = r.next_frame().unwrap().unwrap();
            assert_eq!(f.is::<Data>(), *is_data);
            assert_eq!(f.body(), body);
        }
        assert!(r.next_frame().unwrap().is_none());
    }

    #[test]
    fn large_bodies_are_shared_not_copied() {
        let body = pattern(SHARE_MIN, 9);
        let mut q = WriteQueue::new();
        q.push_shared(&Data {}, body.clone()).unwrap();
        let mut slots = [IoSlice::new(&[]); 4];
        assert_eq!(q.io_slices(&mut slots), 2, "header, then the body");
        assert_eq!(
            slots[1].as_ptr(),
            body.as_ptr(),
            "sent from the chunk itself"
        );
        assert!(!body.is_unique(), "the queue holds the chunk until written");
        let all = q.len();
        q.advance(all);
        assert!(body.is_unique(), "released once written");
    }

    #[test]
    fn a_partly_written_body_is_released_only_when_done() {
        let body = pattern(SHARE_MIN * 2, 3);
        let mut q = WriteQueue::new();
        q.push_shared(&Data {}, body.clone()).unwrap();
        let header = q.len() - body.len();
        q.advance(header + 5);
        assert!(!body.is_unique());
        assert_eq!(q.first_chunk(), &body[5..]);
        q.advance(body.len() - 5);
        assert!(body.is_unique());
        assert!(q.is_empty());
        assert!(q.first_chunk().is_empty());
    }

    #[test]
    fn raw_frames_match_encode_raw() {
        let small = Frame::from_message(&Ping {}, pattern(10, 1)).unwrap();
        let large = Frame::from_message(&Data {}, pattern(SHARE_MIN * 3, 2)).unwrap();
        let mut q = WriteQueue::new();
        let mut want = BytesMut::new();
        for f in [&small, &large, &small] {
            q.push_raw(f.header(), f.body()).unwrap();
            crate::encode_raw(f.header(), f.body(), &mut want).unwrap();
        }
        assert_eq!(drain(&mut q, 999, 2), want.to_vec());
    }

    #[test]
    fn a_refused_frame_queues_nothing() {
        let mut q = WriteQueue::new();
        q.push(&Ping {}, b"x").unwrap();
        let before = q.len();
        let too_large = Bytes::from(vec![0; crate::MAX_BODY_LEN + 1]);
        assert!(matches!(
            q.push_shared(&Data {}, too_large.clone()),
            Err(FrameError::BodyTooLarge { .. })
        ));
        assert!(q.push_raw(b"", &Bytes::new()).is_err());
        assert!(q.push_raw(b"{}", &too_large).is_err());
        assert_eq!(q.len(), before);
        let msg = ErrorMsg::new(ErrorCode::Busy, "full");
        q.push(&msg, b"").unwrap();
        let mut want = BytesMut::new();
        crate::encode_frame(&Ping {}, b"x", &mut want).unwrap();
        crate::encode_frame(&msg, b"", &mut want).unwrap();
        assert_eq!(drain(&mut q, 3, 8), want.to_vec());
    }

    #[test]
    fn the_buffer_is_reused_once_drained() {
        let mut q = WriteQueue::new();
        for round in 0..3u8 {
            q.push(&Ping {}, &[round; 100]).unwrap();
            q.push_shared(&Data {}, pattern(SHARE_MIN, round)).unwrap();
            q.push(&Ping {}, b"").unwrap();
            let wire = drain(&mut q, 50_000, 16);
            let want = {
                let mut b = BytesMut::new();
                crate::encode_frame(&Ping {}, &[round; 100], &mut b).unwrap();
                crate::encode_frame(&Data {}, &pattern(SHARE_MIN, round), &mut b).unwrap();
                crate::encode_frame(&Ping {}, b"", &mut b).unwrap();
                b
            };
            assert_eq!(wire, want.to_vec(), "round {round}");
            assert!(q.segments.is_empty());
        }
    }
}
