//! The exec loop in process: the real dispatcher and a real command on one
//! end of a duplex pipe, a hand-driven client on the other, tokio's clock
//! paused so the timeouts fire as soon as nothing else can happen.

use std::time::Duration;

use skiff_wire::message::exec::{Exec, ExecOutput, Stdin, MAX_CHUNK, STDIN_WINDOW};
use skiff_wire::message::ping::Ping;
use skiff_wire::ErrorCode;
use tokio::time::Instant;

use crate::service::testing::{assert_pings, wait_gone, Harness};
use crate::session::{Session, SessionError, WRITE_STALL_TIMEOUT};

fn exec(cmd: &str) -> Exec {
    Exec {
        cmd: Some(cmd.into()),
        ..Exec::default()
    }
}

/// Starts `echo $$; exec CMD` and returns the command's pid (the shell
/// `exec`s, so the pid stays the command's) with the rest of the first
/// chunk.
async fn start(client: &mut Session<'_>, cmd: &str) -> (i32, Vec<u8>) {
    let req = exec(&format!("echo $$; exec {cmd}"));
    client.send(&req, &[]).await.expect("send exec");
    let ExecOutput::Stdout(first) = client.recv_msg().await.expect("first chunk") else {
        panic!("expected stdout first");
    };
    let text = String::from_utf8_lossy(&first).into_owned();
    let (pid, rest) = text.split_once('\n').expect("a pid line");
    (pid.parse().expect("pid"), rest.as_bytes().to_vec())
}

/// Reads output frames until the `exit` (or an error frame).
async fn until_exit(client: &mut Session<'_>) -> (Vec<u8>, ExecOutput) {
    let mut out = Vec::new();
    loop {
        match client.recv_msg::<ExecOutput>().await.expect("exec output") {
            ExecOutput::Stdout(b) | ExecOutput::Stderr(b) => out.extend_from_slice(&b),
            ExecOutput::StdinCredit(_) => {}
            end => return (out, end),
        }
    }
}

/// A client that stops reading while the command prints without end: the
/// server stops reading the command once its buffer is full, gives the
/// client the write timeout, then ends the session and kills the command.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_loses_the_session_and_the_command() {
    let h = Harness::new();
    let (mut client, server) = h.connect(64 * 1024);
    let (pid, _) = start(&mut client, "yes skiff").await;
    let t0 = Instant::now();
    let ended = server.await.expect("server task");
    assert!(
        matches!(ended, Err(SessionError::Timeout(d)) if d == WRITE_STALL_TIMEOUT),
        "{ended:?}"
    );
    assert!(t0.elapsed() >= WRITE_STALL_TIMEOUT, "{:?}", t0.elapsed());
    assert!(wait_gone(pid), "command {pid} still runs");
    // What the server had queued is bounded by its high-water mark, not
    // by what the command printed in the (virtual) minute.
    let mut got = 0usize;
    while let Ok(Some(f)) = client.recv().await {
        got += f.body().len();
    }
    let bound = crate::session::WRITE_HIGH_WATER + MAX_CHUNK + 64 * 1024;
    assert!(got <= bound, "{got} bytes buffered for a stalled client");
}

/// `timeout_ms`: SIGTERM at the deadline, `exit` says `timed_out`; the
/// paused clock makes a 30 s timeout take no real time. The session goes on.
#[tokio::test(start_paused = true)]
async fn the_deadline_stops_the_command_and_the_session_goes_on() {
    let h = Harness::new();
    let (mut client, _server) = h.connect(64 * 1024);
    let req = Exec {
        timeout_ms: Some(30_000),
        ..exec("sleep 1000")
    };
    let real = std::time::Instant::now();
    let t0 = Instant::now();
    client.send(&req, &[]).await.expect("send");
    let (_, end) = until_exit(&mut client).await;
    let ExecOutput::Exit(exit) = end else {
        panic!("{end:?}")
    };
    assert!(exit.timed_out, "{exit:?}");
    assert!(exit.signal.is_some(), "{exit:?}");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(32),
        "{waited:?}"
    );
    assert!(real.elapsed() < Duration::from_secs(10));
    assert_pings(&mut client).await;
}

/// Stdin past the credit window (the command never reads it) is refused
/// with `too_large`, the session ends and the command is killed.
#[tokio::test(start_paused = true)]
async fn stdin_beyond_the_credit_window_is_refused() {
    let h = Harness::new();
    let (mut client, server) = h.connect(1 << 20);
    let (pid, _) = start(&mut client, "sleep 1000").await;
    // The pipe to the command takes up to 64 KiB; the queue the window.
    let chunk = vec![b'x'; 64 * 1024];
    let chunks = (STDIN_WINDOW as usize + 256 * 1024) / chunk.len();
    for _ in 0..chunks {
        if client.send(&Stdin {}, &chunk).await.is_err() {
            break;
        }
    }
    let (_, end) = until_exit(&mut client).await;
    let ExecOutput::Error(e) = end else {
        panic!("{end:?}")
    };
    assert_eq!(e.code, ErrorCode::TooLarge, "{e:?}");
    let ended = server.await.expect("server task");
    assert!(
        matches!(&ended, Err(SessionError::Remote(m)) if m.code == ErrorCode::TooLarge),
        "{ended:?}"
    );
    assert!(wait_gone(pid), "command {pid} still runs");
}

/// A request while a command runs is not exec input: `bad_frame`, the
/// session ends, the command is killed.
#[tokio::test(start_paused = true)]
async fn a_request_during_a_command_is_refused() {
    let h = Harness::new();
    let (mut client, server) = h.connect(64 * 1024);
    let (pid, _) = start(&mut client, "sleep 1000").await;
    client.send(&Ping {}, b"").await.expect("send");
    let (_, end) = until_exit(&mut client).await;
    let ExecOutput::Error(e) = end else {
        panic!("{end:?}")
    };
    assert_eq!(e.code, ErrorCode::BadFrame, "{e:?}");
    assert!(e.message.contains("while a command runs"), "{e:?}");
    assert!(server.await.expect("server task").is_err());
    assert!(wait_gone(pid), "command {pid} still runs");
}

/// The client vanishes mid-command: the session ends as closed and the
/// command's group is killed.
#[tokio::test(start_paused = true)]
async fn a_vanished_client_kills_the_command() {
    let h = Harness::new();
    let (mut client, server) = h.connect(64 * 1024);
    let (pid, _) = start(&mut client, "sleep 1000").await;
    drop(client);
    let ended = server.await.expect("server task");
    assert!(matches!(ended, Err(SessionError::Closed)), "{ended:?}");
    assert!(wait_gone(pid), "command {pid} still runs");
}

/// Input that arrives after the `exit` (a client may send it while the
/// exit is on its way) is discarded between requests; the next request is
/// answered.
#[tokio::test(start_paused = true)]
async fn input_after_the_exit_is_discarded() {
    let h = Harness::new();
    let (mut client, _server) = h.connect(64 * 1024);
    client.send(&exec("true"), &[]).await.expect("send");
    let (_, end) = until_exit(&mut client).await;
    assert!(
        matches!(end, ExecOutput::Exit(ref e) if e.code == Some(0)),
        "{end:?}"
    );
    client.send(&Stdin {}, b"late").await.expect("send");
    assert_pings(&mut client).await;
}
