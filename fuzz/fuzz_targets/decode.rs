//! Fuzzes the frame decoder with arbitrary bytes.
//!
//! The first input byte chooses how the rest is cut into reads and which
//! limits apply; the rest is the stream. Checked on every input:
//! - no panic (libFuzzer reports any);
//! - the reader never holds more than one frame plus the last read, and less
//!   than one frame once drained;
//! - decoded frames respect the limits and survive re-encoding unchanged;
//! - the outcome (frames, then the first error or the clean end) is the same
//!   however the stream was cut: the sticky-packet property on any input.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use skiff_wire::{encode_raw, Frame, FrameError, FrameReader, Limits};

#[derive(Debug, PartialEq)]
enum End {
    Clean,
    Error(FrameError),
}

fn run(data: &[u8], chunk: usize, limits: Limits) -> (Vec<Frame>, End) {
    let mut reader = FrameReader::with_limits(limits);
    let mut frames = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        reader.feed(piece);
        assert!(reader.buffered() <= limits.max_frame() + piece.len());
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.header().len() <= limits.max_header);
                    assert!(f.body().len() <= limits.max_body);
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => return (frames, End::Error(e)),
            }
        }
        assert!(reader.buffered() < limits.max_frame());
    }
    loop {
        match reader.finish() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, End::Clean),
            Err(e) => return (frames, End::Error(e)),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let limits = if mode & 0x80 != 0 {
        Limits {
            max_header: 64,
            max_body: 256,
        }
    } else {
        Limits::default()
    };
    let chunk = usize::from(mode & 0x7f) + 1;

    let whole = run(data, data.len(), limits);
    let cut = run(data, chunk, limits);
    assert_eq!(whole, cut, "the outcome depends on how the stream was cut");

    for f in &whole.0 {
        let mut buf = BytesMut::new();
        encode_raw(f.header(), f.body(), &mut buf).expect("a decoded frame re-encodes");
        let mut reader = FrameReader::with_limits(limits);
        reader.feed(&buf);
        assert_eq!(reader.next_frame().ok().flatten().as_ref(), Some(f));
    }
});
