//! The signature of a new file cut from its bytes as they arrive, so that
//! a file's first copy leaves an entry in the signature cache
//! ([`super::sigcache`]) and its first delta sync does not have to read
//! and cut the old copy while the sender waits.
//!
//! The literal pieces of the file go to a thread of its own over a bounded
//! channel (the pieces are shared [`Bytes`], not copied), where they are
//! cut and hashed exactly as a signature of the finished file would be
//! ([`Signature::of_reader`]). The channel holds [`QUEUE`] pieces: when
//! the thread falls behind, the receiver waits for it, so memory stays
//! bounded. The signature is only a hint (SYNC.md, "The receiver's
//! signature cache"): anything that goes wrong drops it, never the file.

use std::io::{self, Read};
use std::sync::mpsc;
use std::thread::JoinHandle;

use bytes::{Buf, Bytes};
use skiff_sync::Signature;

/// Pieces waiting for the thread (each at most one frame body).
const QUEUE: usize = 8;

/// A signature being cut on its own thread.
pub struct Signer {
    pieces: Option<mpsc::SyncSender<Bytes>>,
    thread: Option<JoinHandle<io::Result<Signature>>>,
}

impl Signer {
    /// Starts cutting a file announced as `size` bytes; `None` when no
    /// thread could be started (the file is then received without one).
    pub fn start(size: u64) -> Option<Signer> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("skiff-signer".into())
            .spawn(move || {
                let reader = Pieces {
                    rx,
                    current: Bytes::new(),
                };
                Signature::of_reader(reader, size)
            })
            .ok()?;
        Some(Signer {
            pieces: Some(tx),
            thread: Some(thread),
        })
    }

    /// The next bytes of the file, in order.
    pub fn feed(&mut self, data: &Bytes) {
        if let Some(tx) = &self.pieces {
            if tx.send(data.clone()).is_err() {
                self.pieces = None;
            }
        }
    }

    /// The signature of everything fed, once the thread has cut it.
    pub fn finish(mut self) -> Option<Signature> {
        self.pieces = None;
        self.thread.take()?.join().ok()?.ok()
    }
}

impl Drop for Signer {
    /// An abandoned signature (the file failed) ends its thread without
    /// waiting for it: the closed channel is the end of its stream.
    fn drop(&mut self) {
        self.pieces = None;
    }
}

/// The pieces as one stream; the channel's end is the stream's end.
struct Pieces {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(b) => self.current = b,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of any size give the signature of the whole stream.
    #[test]
    fn pieces_give_the_signature_of_the_whole() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let whole = Signature::of_reader(&data[..], data.len() as u64).unwrap();
        let mut s = Signer::start(data.len() as u64).unwrap();
        for piece in data.chunks(77_777) {
            s.feed(&Bytes::copy_from_slice(piece));
        }
        assert_eq!(s.finish().unwrap(), whole);
    }

    /// A signer dropped half way ends its thread and leaves nothing.
    #[test]
    fn an_abandoned_signer_ends() {
        let mut s = Signer::start(1 << 20).unwrap();
        s.feed(&Bytes::from_static(b"some bytes"));
        drop(s);
    }
}
