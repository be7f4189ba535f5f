//! The sticky-packet problem, solved: whatever way a byte stream of frames
//! is cut into reads, the decoder returns exactly the frames that were sent;
//! and no byte sequence makes it panic or hold more than its limits.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use skiff_wire::{encode_raw, FrameDecoder, FrameError, FrameReader, Limits};

/// A frame as the sender meant it.
#[derive(Debug, Clone)]
struct Sent {
    op: String,
    header: Vec<u8>,
    body: Vec<u8>,
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Any op (including empty and non-ASCII), extra fields of any JSON type,
/// any body including the empty one, sometimes an explicit `"len":0`.
fn frame() -> impl Strategy<Value = Sent> {
    (
        ".{0,16}",
        prop::collection::btree_map(".{1,8}", json_value(), 0..5),
        prop_oneof![
            2 => Just(Vec::new()),
            5 => prop::collection::vec(any::<u8>(), 1..300),
            1 => prop::collection::vec(any::<u8>(), 300..4000),
        ],
        any::<bool>(),
    )
        .prop_map(|(op, extra, body, explicit_zero_len)| {
            let mut header = Map::new();
            for (k, v) in extra {
                if k != "op" && k != "len" {
                    header.insert(k, v);
                }
            }
            header.insert("op".into(), Value::String(op.clone()));
            if !body.is_empty() || explicit_zero_len {
                header.insert("len".into(), json!(body.len()));
            }
            let header = serde_json::to_vec(&Value::Object(header)).unwrap();
            Sent { op, header, body }
        })
}

fn wire(frames: &[Sent]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for f in frames {
        encode_raw(&f.header, &f.body, &mut buf).unwrap();
    }
    buf.to_vec()
}

/// How the stream is cut into reads.
#[derive(Debug, Clone)]
enum Cuts {
    OneByteAtATime,
    AllAtOnce,
    /// Chunk sizes, cycled.
    Random(Vec<usize>),
}

fn cuts() -> impl Strategy<Value = Cuts> {
    prop_oneof![
        Just(Cuts::OneByteAtATime),
        Just(Cuts::AllAtOnce),
        prop::collection::vec(1usize..600, 1..20).prop_map(Cuts::Random),
    ]
}

fn chunks<'a>(bytes: &'a [u8], cuts: &Cuts) -> Vec<&'a [u8]> {
    match cuts {
        Cuts::OneByteAtATime => bytes.chunks(1).collect(),
        Cuts::AllAtOnce => vec![bytes],
        Cuts::Random(sizes) => {
            let mut out = Vec::new();
            let mut rest = bytes;
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (a, b) = rest.split_at((*size).min(rest.len()));
                out.push(a);
                rest = b;
            }
            out
        }
    }
}

fn assert_same(got: &[skiff_wire::Frame], sent: &[Sent]) {
    assert_eq!(got.len(), sent.len(), "frame count");
    for (g, s) in got.iter().zip(sent) {
        assert_eq!(g.op(), s.op);
        assert_eq!(&g.header()[..], &s.header[..]);
        assert_eq!(&g.body()[..], &s.body[..]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_cut_of_any_frames_decodes_to_the_frames_sent(
        sent in prop::collection::vec(frame(), 0..8),
        cuts in cuts(),
    ) {
        let bytes = wire(&sent);
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        for chunk in chunks(&bytes, &cuts) {
            reader.feed(chunk);
            while let Some(f) = reader.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(reader.buffered(), 0);
        prop_assert!(reader.finish().unwrap().is_none());
        assert_same(&got, &sent);
    }

    /// The same through `FrameDecoder` on a caller-owned buffer that is only
    /// drained once at the end of each read (frames glued together).
    #[test]
    fn glued_frames_decode_from_a_shared_buffer(
        sent in prop::collection::vec(frame(), 1..8),
        cuts in cuts(),
    ) {
        let bytes = wire(&sent);
        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in chunks(&bytes, &cuts) {
            buf.extend_from_slice(chunk);
            while let Some(f) = decoder.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert!(decoder.decode_eof(&mut buf).unwrap().is_none());
        assert_same(&got, &sent);
    }

    /// A stream cut short anywhere inside a frame is `Truncated` at the end,
    /// after every complete frame before the cut came out.
    #[test]
    fn a_stream_cut_inside_a_frame_is_truncated(
        sent in prop::collection::vec(frame(), 1..6),
        cut_seed in any::<prop::sample::Index>(),
    ) {
        let bytes = wire(&sent);
        let cut = cut_seed.index(bytes.len());
        let mut reader = FrameReader::new();
        reader.feed(&bytes[..cut]);
        let mut complete = 0;
        while reader.next_frame().unwrap().is_some() {
            complete += 1;
        }
        let boundaries: Vec<usize> = sent
            .iter()
            .scan(0, |end, f| { *end += 4 + f.header.len() + f.body.len(); Some(*end) })
            .collect();
        let expect_complete = boundaries.iter().filter(|&&b| b <= cut).count();
        prop_assert_eq!(complete, expect_complete);
        let at_boundary = cut == 0 || boundaries.contains(&cut);
        match reader.finish() {
            Ok(None) => prop_assert!(at_boundary),
            Err(FrameError::Truncated { buffered }) => {
                prop_assert!(!at_boundary);
                let start = if expect_complete == 0 { 0 } else { boundaries[expect_complete - 1] };
                prop_assert_eq!(buffered, cut - start);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}

/// Limits small enough that random input reaches them.
const TIGHT: Limits = Limits {
    max_header: 64,
    max_body: 512,
};

/// Feeds `chunks` until the first error, checking the memory bound after
/// every read: what the reader holds is at most one frame's worth plus the
/// read that just arrived, and less than one frame once drained.
fn feed_checking_bounds(limits: Limits, chunks: &[Vec<u8>]) {
    let mut reader = FrameReader::with_limits(limits);
    for chunk in chunks {
        let before = reader.buffered();
        reader.feed(chunk);
        assert!(reader.buffered() <= limits.max_frame() + chunk.len());
        assert_eq!(reader.buffered(), before + chunk.len());
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.header().len() <= limits.max_header);
                    assert!(f.body().len() <= limits.max_body);
                }
                Ok(None) => break,
                Err(_) => return, // the stream is out of sync; a server closes it
            }
        }
        assert!(reader.buffered() < limits.max_frame());
    }
    let _ = reader.finish();
}

/// Valid frames with some bytes overwritten: gets deeper into the header
/// checks than uniformly random bytes do.
fn mangled_frames() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(frame(), 1..4),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    )
        .prop_map(|(sent, edits)| {
            let mut bytes = wire(&sent);
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic_or_overfill(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..700), 0..12),
        tight in any::<bool>(),
    ) {
        feed_checking_bounds(if tight { TIGHT } else { Limits::default() }, &chunks);
    }

    #[test]
    fn mangled_frames_never_panic_or_overfill(
        bytes in mangled_frames(),
        cuts in cuts(),
    ) {
        let chunks: Vec<Vec<u8>> = chunks(&bytes, &cuts).into_iter().map(<[u8]>::to_vec).collect();
        feed_checking_bounds(Limits::default(), &chunks);
        feed_checking_bounds(Limits { max_header: 4096, max_body: 4096 }, &chunks);
    }

    /// A small header that announces a large body: memory stays bounded by
    /// the limits while the body trickles in.
    #[test]
    fn announced_bodies_stay_within_limits(
        len in 0usize..2048,
        cuts in cuts(),
    ) {
        let header = format!(r#"{{"op":"data","len":{len}}}"#);
        let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0xAB, len.min(TIGHT.max_body)));
        let chunks: Vec<Vec<u8>> = chunks(&bytes, &cuts).into_iter().map(<[u8]>::to_vec).collect();
        feed_checking_bounds(TIGHT, &chunks);
    }
}
