//! End-to-end availability: what a peer without a key (or a hostile one
//! with a key) can and cannot do to a real `skiff serve` on loopback.

mod common;

use std::time::Duration;

use common::probe::{host_port, open_fds, raise_fd_limit, rss_kib, run_bounded, text, RawConn};
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
    // All from one address: lift the per-source cap, this is about memory.
    let server = TestServer::start_listening(
        &["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"],
        &["--per-source-max-startups", "100"],
    );
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

// ---------------------------------------------------------------------
// connections in the handshake are capped per source and in total

/// A TCP connection to `url`'s port from the local address `from` (Linux
/// loopback answers on all of 127.0.0.0/8, so each 127.x.y.z is a source
/// of its own).
fn connect_from(from: std::net::Ipv4Addr, url: &str) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let to: std::net::SocketAddr = host_port(url).parse().expect("an IP URL");
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&std::net::SocketAddr::from((from, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// Whether the server has closed `s` (EOF or reset), without blocking.
fn is_closed(s: &std::net::TcpStream) -> bool {
    use std::io::Read;
    let _ = s.set_nonblocking(true);
    let mut b = [0u8; 1];
    match (&*s).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[test]
fn a_handshake_flood_from_one_address_leaves_room_for_others() {
    const FLOOD: usize = 2000;
    const PINGS: usize = 8;
    raise_fd_limit(FLOOD as u64 + 1024);
    let server = TestServer::start(&[]);
    let attacker = std::net::Ipv4Addr::new(127, 0, 0, 2);
    if connect_from(attacker, server.url()).is_err() {
        eprintln!("cannot bind 127.0.0.2 here; skipping the flood");
        return;
    }
    assert_ping_ok(&server, server.url());
    let before = open_fds(server.pid());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = server.url().to_string();
    let flag = stop.clone();
    // The attacker keeps FLOOD silent connections open, reopening every
    // one the server closes, until told to stop (at most 60 s).
    let flood = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut held: Vec<std::net::TcpStream> = Vec::new();
        let (mut opened, mut max_alive) = (0usize, 0usize);
        while !flag.load(std::sync::atomic::Ordering::Relaxed)
            && std::time::Instant::now() < deadline
        {
            while held.len() < FLOOD {
                match connect_from(attacker, &url) {
                    Ok(s) => {
                        opened += 1;
                        held.push(s);
                    }
                    Err(_) => break,
                }
            }
            held.retain(|s| !is_closed(s));
            max_alive = max_alive.max(held.len());
            std::thread::sleep(Duration::from_millis(20));
        }
        (opened, held.len())
    });
    // Let the flood build up.
    std::thread::sleep(Duration::from_secs(2));
    let mut worst = Duration::ZERO;
    let mut max_fds = 0;
    for _ in 0..PINGS {
        let start = std::time::Instant::now();
        assert_ping_ok(&server, server.url());
        worst = worst.max(start.elapsed());
        max_fds = max_fds.max(open_fds(server.pid()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (opened, alive) = flood.join().expect("flood thread");
    eprintln!(
        "flood from 127.0.0.2: {opened} connections opened, {alive} still open at the end; \
         {PINGS}/{PINGS} logins+pings from 127.0.0.1 succeeded, slowest {worst:?}; \
         server fds {before} before, at most {max_fds} during"
    );
    assert!(opened >= FLOOD, "the flood never got going: {opened}");
    // The attacker's source holds at most its per-source share (16).
    assert!(
        max_fds < before + 16 + 32,
        "server fds grew from {before} to {max_fds}"
    );
}
