//! The upload state machine in process: the real dispatcher on one end of
//! a duplex pipe, a client sending `put`, `data` and `end` frames by hand
//! on the other (as a pipelining client does: data right after the
//! request, without waiting for `ready`).

use skiff_wire::message::files::{Data, End, FilesReply, HashAlg, Put};
use skiff_wire::ErrorCode;

use crate::service::testing::{assert_pings, Harness};
use crate::session::{Session, SessionError};
use crate::transfer::checksum::Checksum;
use crate::transfer::IDLE_TIMEOUT;

fn put(path: &str, size: u64) -> Put {
    Put {
        path: path.into(),
        size,
        ..Put::default()
    }
}

fn digest(data: &[u8]) -> String {
    let mut sum = Checksum::new(HashAlg::Blake3);
    sum.update(data);
    sum.finish_hex()
}

/// `count` bytes of a pattern that does not repeat within a chunk.
fn content(count: usize) -> Vec<u8> {
    (0..count).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Sends `data` in 64 KiB frames, then `end` with its digest.
async fn send_all(client: &mut Session<'_>, data: &[u8], size: u64) {
    for chunk in data.chunks(64 * 1024) {
        client.write(&Data {}, chunk).await.expect("data");
    }
    let end = End {
        size,
        digest: digest(data),
        abort: false,
    };
    client.send(&end, &[]).await.expect("end");
}

async fn reply(client: &mut Session<'_>) -> FilesReply {
    client.recv_msg::<FilesReply>().await.expect("reply")
}

/// A put whose destination cannot be made is refused at once; the data
/// the client had already sent is read and dropped up to its `end`, so
/// the next request is understood. Nothing is kept anywhere.
#[tokio::test(start_paused = true)]
async fn data_after_a_refusal_is_drained_and_the_session_goes_on() {
    let h = Harness::new();
    std::fs::write(h.root().join("releases"), "a file in the way").expect("write");
    let (mut client, _server) = h.connect(64 * 1024);
    let data = content(300_000);
    client
        .send(&put("releases/app.tar", data.len() as u64), &[])
        .await
        .expect("put");
    send_all(&mut client, &data, data.len() as u64).await;
    let FilesReply::Error(e) = reply(&mut client).await else {
        panic!("expected a refusal")
    };
    assert!(e.message.contains("releases/app.tar"), "{e:?}");
    assert_pings(&mut client).await;
    assert_eq!(
        std::fs::read(h.root().join("releases")).expect("read"),
        b"a file in the way"
    );
    assert!(h.staged().is_empty(), "{:?}", h.staged());
}

/// More data than announced: `too_large`, the rest is drained, the
/// staged file removed, the destination never created.
#[tokio::test(start_paused = true)]
async fn more_data_than_announced_is_refused() {
    let h = Harness::new();
    let (mut client, _server) = h.connect(64 * 1024);
    let data = content(100_000);
    client.send(&put("big", 1000), &[]).await.expect("put");
    send_all(&mut client, &data, 1000).await;
    assert!(matches!(reply(&mut client).await, FilesReply::Ready(_)));
    let FilesReply::Error(e) = reply(&mut client).await else {
        panic!("expected a refusal")
    };
    assert_eq!(e.code, ErrorCode::TooLarge, "{e:?}");
    assert_pings(&mut client).await;
    assert!(!h.root().join("big").exists());
    assert!(h.staged().is_empty(), "{:?}", h.staged());
}

/// A digest that does not match: `checksum_mismatch`, nothing committed.
#[tokio::test(start_paused = true)]
async fn a_wrong_digest_commits_nothing() {
    let h = Harness::new();
    let (mut client, _server) = h.connect(64 * 1024);
    let data = content(70_000);
    client
        .send(&put("f", data.len() as u64), &[])
        .await
        .expect("put");
    client.write(&Data {}, &data).await.expect("data");
    let end = End {
        size: data.len() as u64,
        digest: digest(b"something else"),
        abort: false,
    };
    client.send(&end, &[]).await.expect("end");
    assert!(matches!(reply(&mut client).await, FilesReply::Ready(_)));
    let FilesReply::Error(e) = reply(&mut client).await else {
        panic!("expected a refusal")
    };
    assert_eq!(e.code, ErrorCode::ChecksumMismatch, "{e:?}");
    assert!(!h.root().join("f").exists());
    assert_pings(&mut client).await;
}

/// A client that stops sending mid-upload: once the transfer's idle
/// timeout passes (the clock is advanced by hand: the disk writer's thread
/// keeps tokio from doing it) the session ends and what arrived is kept;
/// a `resume` on a new session continues from there and commits the file.
#[tokio::test(start_paused = true)]
async fn a_stalled_upload_times_out_and_resumes() {
    let mut h = Harness::new();
    h.ctx.idle_timeout = Some(IDLE_TIMEOUT);
    let data = content(500_000);
    let size = data.len() as u64;
    let (mut client, server) = h.connect(64 * 1024);
    client.send(&put("app", size), &[]).await.expect("put");
    let sent = 200_000;
    for chunk in data[..sent].chunks(50_000) {
        client.write(&Data {}, chunk).await.expect("data");
    }
    client.flush().await.expect("flush");
    // Let the server read and store everything sent (real time: the
    // disk writer is a thread), so it waits for more. Its `ready` stays
    // queued: data was already pipelined behind the request.
    for _ in 0..1000 {
        if h.staged().iter().sum::<u64>() >= sent as u64 {
            break;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    tokio::time::advance(IDLE_TIMEOUT).await;
    let ended = server.await.expect("server task");
    assert!(
        matches!(ended, Err(SessionError::Stalled(d)) if d == IDLE_TIMEOUT),
        "{ended:?}"
    );
    assert!(!h.root().join("app").exists());
    assert_eq!(h.staged(), vec![sent as u64]);

    let (mut client, _server) = h.connect(64 * 1024);
    let resume = Put {
        resume: true,
        ..put("app", size)
    };
    client.send(&resume, &[]).await.expect("put");
    let FilesReply::Ready(ready) = reply(&mut client).await else {
        panic!("expected ready")
    };
    assert_eq!(ready.offset, sent as u64);
    for chunk in data[sent..].chunks(64 * 1024) {
        client.write(&Data {}, chunk).await.expect("data");
    }
    let end = End {
        size,
        digest: digest(&data),
        abort: false,
    };
    client.send(&end, &[]).await.expect("end");
    let FilesReply::Done(done) = reply(&mut client).await else {
        panic!("expected done")
    };
    assert_eq!(done.size, size);
    assert_eq!(std::fs::read(h.root().join("app")).expect("read"), data);
    assert!(h.staged().is_empty(), "{:?}", h.staged());
}
