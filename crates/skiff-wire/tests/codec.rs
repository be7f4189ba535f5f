//! The tokio codec adapter over a real in-process pipe: frames split across
//! writes arrive whole; protocol violations end the stream with their error.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use skiff_wire::message::handshake::Hello;
use skiff_wire::{encode_frame, CodecError, ErrorCode, ErrorMsg, Frame, FrameCodec, FrameError};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{FramedRead, FramedWrite};

fn encoded(n: usize) -> (Vec<Frame>, Vec<u8>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for i in 0..n {
        let msg = ErrorMsg::new(ErrorCode::Internal, format!("frame {i}"));
        let body = Bytes::from(vec![i as u8; i * 37 % 1000]);
        encode_frame(&msg, &body, &mut buf).unwrap();
        frames.push(Frame::from_message(&msg, body).unwrap());
    }
    (frames, buf.to_vec())
}

#[tokio::test]
async fn frames_split_across_writes_arrive_whole() {
    let (frames, bytes) = encoded(50);
    // A tiny pipe forces the reader to see partial frames.
    let (mut tx, rx) = tokio::io::duplex(7);
    let writer = tokio::spawn(async move {
        let sizes = [1usize, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144];
        let mut rest = &bytes[..];
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at((*size).min(rest.len()));
            tx.write_all(a).await.unwrap();
            tx.flush().await.unwrap();
            rest = b;
        }
        // Dropping `tx` ends the stream cleanly, between frames.
    });
    let got: Vec<Frame> = FramedRead::new(rx, FrameCodec::new())
        .map(|r| r.unwrap())
        .collect()
        .await;
    writer.await.unwrap();
    assert_eq!(got, frames);
}

#[tokio::test]
async fn framed_write_and_read_round_trip() {
    let (tx, rx) = tokio::io::duplex(64);
    let (frames, _) = encoded(20);
    let sent = frames.clone();
    let writer = tokio::spawn(async move {
        let mut w = FramedWrite::new(tx, FrameCodec::new());
        for f in sent {
            w.send(f).await.unwrap();
        }
        w.close().await.unwrap();
    });
    let mut r = FramedRead::new(rx, FrameCodec::new());
    for f in &frames {
        assert_eq!(&r.next().await.unwrap().unwrap(), f);
    }
    assert!(r.next().await.is_none());
    writer.await.unwrap();
    let hello = Hello {
        v: 1,
        user: "u".into(),
        nonce: "n".into(),
    };
    assert_eq!(
        Frame::from_message(&hello, Bytes::new())
            .unwrap()
            .parse::<Hello>()
            .unwrap(),
        hello
    );
}

#[tokio::test]
async fn truncated_stream_is_an_error_after_the_complete_frames() {
    let (frames, bytes) = encoded(3);
    let (mut tx, rx) = tokio::io::duplex(1024);
    let cut = bytes.len() - 5;
    tx.write_all(&bytes[..cut]).await.unwrap();
    drop(tx);
    let mut r = FramedRead::new(rx, FrameCodec::new());
    assert_eq!(r.next().await.unwrap().unwrap(), frames[0]);
    assert_eq!(r.next().await.unwrap().unwrap(), frames[1]);
    assert!(matches!(
        r.next().await,
        Some(Err(CodecError::Frame(FrameError::Truncated { .. })))
    ));
    assert!(r.next().await.is_none(), "the stream ends after an error");
}

#[tokio::test]
async fn oversized_header_ends_the_stream_without_reading_it() {
    let (mut tx, rx) = tokio::io::duplex(1024);
    tx.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    // The writer stays open: the error must come from the length alone.
    let mut r = FramedRead::new(rx, FrameCodec::new());
    let err = r.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge);
    assert!(r.next().await.is_none());
    drop(tx);
}
