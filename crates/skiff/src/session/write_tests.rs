//! The session writer's vectored writes: frames whose bodies go out from
//! the caller's chunk arrive as the same bytes and the same frames, over
//! streams that take a write only in part (a tiny in-memory pipe, a Unix
//! socket read slowly, TLS), and a peer that never reads makes the writer
//! give up with a bounded queue.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use skiff_wire::message::files::Data;
use skiff_wire::message::ping::Ping;
use skiff_wire::{Frame, FrameReader, SHARE_MIN};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::*;

/// Frames of every kind the writer handles: small ones copied, bodies just
/// below and at the sharing threshold, 1 MiB data chunks, a prebuilt frame.
fn frames() -> Vec<(bool, Bytes)> {
    let body = |len: usize, seed: u8| -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    };
    vec![
        (false, Bytes::new()),
        (true, body(1024 * 1024, 1)),
        (false, body(10, 2)),
        (true, body(SHARE_MIN - 1, 3)),
        (true, body(SHARE_MIN, 4)),
        (true, body(1024 * 1024, 5)),
        (true, body(3 * 1024 * 1024 + 17, 6)),
        (false, Bytes::new()),
    ]
}

/// The frames as `encode_frame` lays them out one after the other.
fn contiguous(frames: &[(bool, Bytes)]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for (data, body) in frames {
        if *data {
            skiff_wire::encode_frame(&Data {}, body, &mut buf).expect("encode");
        } else {
            skiff_wire::encode_frame(&Ping {}, body, &mut buf).expect("encode");
        }
    }
    buf.to_vec()
}

/// Writes the frames through a session writer (data frames shared, the
/// last small one prebuilt), then closes.
async fn write_all(writer: &mut SessionWriter<'_>, frames: &[(bool, Bytes)]) {
    for (i, (data, body)) in frames.iter().enumerate() {
        if *data {
            writer
                .write_shared(&Data {}, body.clone())
                .await
                .expect("write");
        } else if i == frames.len() - 1 {
            let f = Frame::from_message(&Ping {}, body.clone()).expect("frame");
            writer.write_frame(&f).await.expect("write frame");
        } else {
            writer.write(&Ping {}, body).await.expect("write");
        }
    }
    writer.close().await.expect("close");
}

/// Reads everything in pieces of at most `piece` bytes, yielding between
/// reads so the writer keeps finding the stream full.
async fn read_slowly(mut r: impl AsyncRead + Unpin, piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; piece];
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
        tokio::task::yield_now().await;
    }
}

fn assert_decodes_to(wire: &[u8], frames: &[(bool, Bytes)]) {
    let mut r = FrameReader::new();
    r.feed(wire);
    for (i, (data, body)) in frames.iter().enumerate() {
        let f = r.next_frame().expect("valid").expect("a frame");
        assert_eq!(f.is::<Data>(), *data, "frame {i}");
        assert!(f.body() == body, "frame {i}: body differs");
    }
    assert!(r.next_frame().expect("valid").is_none(), "nothing after");
}

#[tokio::test]
async fn a_pipe_that_takes_a_few_bytes_at_a_time_gets_the_same_bytes() {
    // An in-memory pipe is not vectored and holds 7 bytes: every write is
    // partial, header and body alike.
    let (a, b) = tokio::io::duplex(7);
    let frames = frames();
    let mut session = Session::new(Box::new(a));
    let reader = tokio::spawn(read_slowly(b, 5));
    write_all(&mut session.writer, &frames).await;
    drop(session);
    let wire = reader.await.expect("reader");
    assert!(wire == contiguous(&frames), "bytes differ");
    assert_decodes_to(&wire, &frames);
}

#[tokio::test]
async fn a_socket_read_slowly_gets_the_same_frames() {
    let (a, b) = tokio::net::UnixStream::pair().expect("socket pair");
    let frames = frames();
    let mut session = Session::new(Box::new(a));
    assert!(session.writer.io.is_write_vectored());
    let reader = tokio::spawn(read_slowly(b, 3000));
    write_all(&mut session.writer, &frames).await;
    drop(session);
    let wire = reader.await.expect("reader");
    assert!(wire == contiguous(&frames), "bytes differ");
}

#[tokio::test]
async fn tls_carries_the_same_frames() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (identity, _) = tls::ServerIdentity::load_or_create(dir.path()).expect("identity");
    let acceptor = identity.acceptor().expect("acceptor");
    let connector = tls::connector().expect("connector");
    let (a, b) = tokio::net::UnixStream::pair().expect("socket pair");
    let server = tokio::spawn(async move { acceptor.accept(b).await });
    let client = connector
        .connect(tls::server_name("localhost"), a)
        .await
        .expect("client handshake");
    let server = server.await.expect("join").expect("server handshake");
    let frames = frames();
    let mut session = Session::new(Box::new(client));
    let mut peer = Session::new(Box::new(server));
    let expect = frames.clone();
    let reader = tokio::spawn(async move {
        for (i, (data, body)) in expect.iter().enumerate() {
            let f = peer.recv_required().await.expect("frame");
            assert_eq!(f.is::<Data>(), *data, "frame {i}");
            assert!(f.body() == body, "frame {i}: body differs");
        }
        assert!(peer.recv().await.expect("clean close").is_none());
    });
    write_all(&mut session.writer, &frames).await;
    reader.await.expect("reader");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_stops_the_writer_with_a_bounded_queue() {
    let (a, _never_read) = tokio::io::duplex(64 * 1024);
    let mut session = Session::new(Box::new(a));
    session.set_write_timeout(Duration::from_secs(5));
    let chunk = Bytes::from(vec![7u8; 1024 * 1024]);
    let mut last = None;
    for _ in 0..64 {
        match session.write_shared(&Data {}, chunk.clone()).await {
            Ok(()) => {}
            Err(e) => {
                last = Some(e);
                break;
            }
        }
        assert!(
            session.buffered() <= WRITE_HIGH_WATER + chunk.len() + 64,
            "queue grew to {}",
            session.buffered()
        );
    }
    assert!(
        matches!(last, Some(SessionError::Timeout(_))),
        "the writer gave up: {last:?}"
    );
    assert!(session.buffered() <= WRITE_HIGH_WATER + chunk.len() + 64);
}

#[tokio::test]
async fn a_closed_peer_is_an_error_not_a_hang() {
    let (a, b) = tokio::net::UnixStream::pair().expect("socket pair");
    drop(b);
    let mut session = Session::new(Box::new(a));
    let chunk = Bytes::from(vec![1u8; 1024 * 1024]);
    let err = session
        .write_shared(&Data {}, chunk)
        .await
        .expect_err("the peer is gone");
    assert!(matches!(err, SessionError::Io(_)), "{err:?}");
}
