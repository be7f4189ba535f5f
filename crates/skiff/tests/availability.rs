//! End-to-end availability: what a peer without a key (or a hostile one
//! with a key) can and cannot do to a real `skiff serve` on loopback.

mod common;

use std::time::Duration;

use common::probe::{rss_kib, run_bounded, text, RawConn};
use common::TestServer;
use serde_json::json;

/// `skiff ping -c 1` with the server's own key must succeed.
fn assert_ping_ok(server: &TestServer, target: &str) {
    let mut cmd = server.client();
    cmd.args(["ping", "-c", "1", "-i", "0", target]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "ping {target} failed: {}",
        text(&out.stderr)
    );
}

fn plain_url(server: &TestServer) -> String {
    server
        .urls
        .iter()
        .find(|u| u.starts_with("tcp+plain://"))
        .expect("a tcp+plain listener")
        .clone()
}

// ---------------------------------------------------------------------
// before authentication frames are small

#[test]
fn pre_auth_big_frames_are_refused_before_they_are_buffered() {
    const CONNS: usize = 40;
    let server =
        TestServer::start_listening(&["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"], &[]);
    let plain = plain_url(&server);
    assert_ping_ok(&server, server.url());
    let before = rss_kib(server.pid());
    // Each connection announces an 8 MiB hello and pushes 1 MiB of it.
    let body = vec![b'x'; 1024 * 1024];
    let mut conns: Vec<RawConn> = Vec::new();
    for _ in 0..CONNS {
        let mut c = RawConn::connect(&plain);
        let _ = c.send_raw(br#"{"op":"hello","len":8388608}"#, &body);
        conns.push(c);
    }
    let during = rss_kib(server.pid());
    for c in &mut conns {
        let answer = c.recv().expect("an error frame before the close");
        assert_eq!(answer["op"], "error", "{answer}");
        assert_eq!(answer["code"], "too_large", "{answer}");
        assert!(c.closed());
    }
    // A header over 4 KiB is refused on its length alone.
    let mut c = RawConn::connect(&plain);
    let big = format!(r#"{{"op":"hello","pad":"{}"}}"#, "p".repeat(5000));
    let _ = c.send_raw(big.as_bytes(), b"");
    let answer = c.recv().expect("an error frame");
    assert_eq!(answer["code"], "too_large", "{answer}");
    assert!(c.closed());
    eprintln!(
        "server RSS before {before} KiB, with {CONNS} x 8 MiB hellos in flight {during} KiB, after {} KiB",
        rss_kib(server.pid())
    );
    // Each connection may cost a few KiB of buffers, never a body.
    assert!(
        during < before + 16 * 1024,
        "RSS grew from {before} to {during} KiB"
    );
    assert_ping_ok(&server, server.url());
    assert_ping_ok(&server, &plain);
}

#[test]
fn pre_auth_hello_with_a_body_is_too_large_even_when_small() {
    let server = TestServer::start_listening(&["tcp+plain://127.0.0.1:0"], &[]);
    let mut c = RawConn::connect(server.url());
    let _ = c.send_raw(
        br#"{"op":"hello","v":1,"user":"x","nonce":"","len":1}"#,
        b"!",
    );
    let answer = c.recv().expect("an error frame");
    assert_eq!(answer["code"], "too_large", "{answer}");
    assert!(c.closed());
    let mut c = RawConn::connect(server.url());
    let _ = c.send(&json!({"op":"ping"}));
    assert_eq!(c.recv().expect("error")["code"], "bad_frame");
}
