//! End-to-end: UDP ping through the real binary, and crafted datagrams
//! against a real `skiff serve --listen udp://...`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use skiff::auth::udp::{now_micros, open_reply, seal_reply, seal_request, tag};
use skiff::keys::{Key, UserKey};
use skiff_wire::message::udp::{Stamp, MAX_UDP_BODY, PING_LABEL};

fn udp_server() -> (TestServer, SocketAddr, UserKey) {
    let server = TestServer::start_listening(&["udp://127.0.0.1:0"], &[]);
    let addr = server
        .url()
        .strip_prefix("udp://")
        .expect("udp url")
        .parse()
        .unwrap();
    let key = skiff::keys::load_key(&server.key_file).unwrap();
    (server, addr, key)
}

/// A client socket connected to the server, with a read timeout.
fn client(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

fn stamp(key: &UserKey, sid: u64, seq: u64) -> Stamp {
    Stamp {
        user: key.user.clone(),
        sid,
        seq,
        ts: now_micros(),
    }
}

fn request(key: &UserKey, sid: u64, seq: u64, body: &[u8]) -> Vec<u8> {
    seal_request(&key.key, stamp(key, sid, seq), body)
        .unwrap()
        .to_vec()
}

/// Receives one datagram and checks it is an authentic reply; returns its
/// stamp and size.
fn recv_reply(s: &UdpSocket, key: &Key) -> (Stamp, usize) {
    let mut buf = vec![0u8; 70000];
    let n = s.recv(&mut buf).expect("a reply");
    let (stamp, _) = open_reply(key, &buf[..n]).expect("an authentic reply");
    (stamp, n)
}

/// Sends `bad`, then a valid probe; the server answers in order, so the
/// first datagram back being the probe's reply proves `bad` got none.
fn assert_no_reply(s: &UdpSocket, key: &UserKey, bad: &[u8], probe_seq: u64, what: &str) {
    s.send(bad).unwrap();
    s.send(&request(key, 0xfeed, probe_seq, b"probe")).unwrap();
    let (stamp, _) = recv_reply(s, &key.key);
    assert_eq!(
        (stamp.sid, stamp.seq),
        (0xfeed, probe_seq),
        "{what} was answered"
    );
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn round_trip_stats_and_exit_codes_through_the_binary() {
    let (server, addr, _) = udp_server();
    let out = server
        .client()
        .args(["ping", "--udp", "-c", "5", "-i", "0", server.url()])
        .output()
        .unwrap();
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.matches("56 bytes from").count(), 5, "{text}");
    assert!(
        text.contains("5 pings transmitted, 5 received, 0% loss"),
        "{text}"
    );
    assert!(text.contains("rtt min/avg/max/mdev = "), "{text}");
    assert!(text.contains("rtt median = "), "{text}");

    // HOST:PORT with --udp, other sizes.
    for size in ["0", "1000"] {
        let out = server
            .client()
            .args(["ping", "--udp", "-c", "2", "-i", "0", "-s", size])
            .arg(addr.to_string())
            .output()
            .unwrap();
        let text = stdout_of(&out);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains(&format!("{size} bytes from")), "{text}");
        assert!(text.contains("2 pings transmitted, 2 received"), "{text}");
    }

    // Nobody answers: exit 1, each loss reported.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let out = server
        .client()
        .args(["ping", "--udp", "-c", "2", "-i", "0", "-W", "0.2"])
        .arg(silent.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("2 pings transmitted, 0 received, 100% loss"));
    assert!(text.contains("seq=1 within"), "{text}");

    // The right user with a wrong key: every request dropped, exit 1.
    let wrong_key = server.home.path().join("wrong.key");
    let line = UserKey {
        user: skiff::keys::load_key(&server.key_file).unwrap().user,
        key: Key::generate(),
    }
    .to_line();
    skiff::keys::write_private_new(&wrong_key, &format!("{line}\n")).unwrap();
    let out = server
        .client()
        .args(["ping", "--udp", "-c", "2", "-i", "0", "-W", "0.3", "--key"])
        .arg(&wrong_key)
        .arg(server.url())
        .output()
        .unwrap();
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("2 pings transmitted, 0 received, 100% loss"));

    // Bad arguments and a missing key: usage and local validation, 2.
    for args in [
        vec!["-s", "70000"],
        vec!["-i", "nan"],
        vec!["-W", "0"],
        vec!["--key", "/nonexistent/key"],
    ] {
        let out = server
            .client()
            .args(["ping", "--udp", "-c", "1"])
            .args(&args)
            .arg(server.url())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: says why");
    }
    // A session URL is not a UDP target.
    let out = server
        .client()
        .args(["ping", "--udp", "-c", "1", "unix:///tmp/x.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn forged_wrong_key_unknown_user_stale_and_replayed_get_no_reply() {
    let (_server, addr, key) = udp_server();
    let s = client(addr);

    let good = request(&key, 1, 0, b"hello");
    s.send(&good).unwrap();
    let (st, n) = recv_reply(&s, &key.key);
    assert_eq!(
        (st.sid, st.seq, st.user.as_str()),
        (1, 0, key.user.as_str())
    );
    assert!(n <= good.len());

    let mut probe = 0..;
    let mut next = || probe.next().unwrap();
    assert_no_reply(&s, &key, &good, next(), "a replayed request");

    let wrong = UserKey {
        user: key.user.clone(),
        key: Key::generate(),
    };
    assert_no_reply(&s, &key, &request(&wrong, 2, 0, b""), next(), "wrong key");
    let stranger = UserKey::generate("nobody-here");
    assert_no_reply(
        &s,
        &key,
        &request(&stranger, 2, 0, b""),
        next(),
        "unknown user",
    );

    // Forged: the body changed after tagging; a tag bit flipped.
    let mut forged = request(&key, 3, 0, b"hello");
    *forged.last_mut().unwrap() ^= 0x20;
    assert_no_reply(&s, &key, &forged, next(), "a modified body");
    let text = String::from_utf8(request(&key, 3, 1, b"")[4..].to_vec()).unwrap();
    let at = text.find("\"tag\":\"").unwrap() + 7;
    let mut t = text.into_bytes();
    t[at] = if t[at] == b'A' { b'B' } else { b'A' };
    let mut flipped = (t.len() as u32).to_be_bytes().to_vec();
    flipped.extend_from_slice(&t);
    assert_no_reply(&s, &key, &flipped, next(), "a forged tag");

    // Stale, both ways.
    let fresh = 30_000_000u64;
    for ts in [
        now_micros() - fresh - 5_000_000,
        now_micros() + fresh + 5_000_000,
    ] {
        let st = Stamp {
            ts,
            ..stamp(&key, 4, ts % 1000)
        };
        let d = seal_request(&key.key, st, b"").unwrap();
        assert_no_reply(&s, &key, &d, next(), "a stale request");
    }

    // A reply reflected back at the server is not a request.
    let reflected = seal_reply(&key.key, stamp(&key, 5, 0), b"x").unwrap();
    assert_no_reply(&s, &key, &reflected, next(), "a reflected reply");

    // Still serving the real user.
    s.send(&request(&key, 6, 0, b"")).unwrap();
    assert_eq!(recv_reply(&s, &key.key).0.sid, 6);
}

#[test]
fn reply_is_never_larger_than_request() {
    let (_server, addr, key) = udp_server();
    let s = client(addr);
    let sid = AtomicU64::new(100);
    let sizes = [0usize, 1, 2, 9, 10, 55, 56, 57, 99, 100, 1000, 9999, 32768];
    let mut checked = 0;
    let mut check = |header: &dyn Fn(&Stamp, &str, usize) -> String, size: usize| {
        let body: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let st = Stamp {
            sid: sid.fetch_add(1, Ordering::Relaxed),
            seq: u64::MAX - 1,
            ..stamp(&key, 0, 0)
        };
        let tag = tag(&key.key, PING_LABEL, &st, &body).unwrap();
        let h = header(&st, &tag, size);
        let mut d = (h.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(h.as_bytes());
        d.extend_from_slice(&body);
        s.send(&d).unwrap();
        let (back, n) = recv_reply(&s, &key.key);
        assert_eq!(back.sid, st.sid, "{h}");
        assert!(n <= d.len(), "reply {n} > request {} for {h}", d.len());
        checked += 1;
    };
    let len = |size: usize| {
        if size == 0 {
            String::new()
        } else {
            format!(",\"len\":{size}")
        }
    };
    for size in sizes.into_iter().chain([MAX_UDP_BODY]) {
        // Canonical, as the client writes it.
        check(
            &|st, tag, size| {
                format!(
                    "{{\"op\":\"udp_ping\"{},\"user\":\"{}\",\"sid\":{},\"seq\":{},\"ts\":{},\"tag\":\"{tag}\"}}",
                    len(size), st.user, st.sid, st.seq, st.ts
                )
            },
            size,
        );
        // Extra fields, other order, whitespace, an escaped user name and
        // an explicit "len":0.
        check(
            &|st, tag, size| {
                format!(
                    "{{ \"tag\" : \"{tag}\", \"extra\": [1, 2, {{\"x\": null}}], \"ts\":{}, \"seq\":{},\n\"sid\":{}, \"user\":\"\\u{:04x}{}\", \"len\":{size}, \"op\":\"udp_ping\" }}",
                    st.ts,
                    st.seq,
                    st.sid,
                    st.user.as_bytes()[0],
                    &st.user[1..]
                )
            },
            size,
        );
    }
    assert_eq!(checked, 2 * (sizes.len() + 1));
}

#[test]
fn garbage_flood_does_not_disturb_a_concurrent_ping() {
    let (server, addr, key) = udp_server();
    let mut ping = None;
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    junk.connect(addr).unwrap();
    let wrong = UserKey {
        user: key.user.clone(),
        key: Key::generate(),
    };
    junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let valid = request(&key, 77, 0, b"once");
    let mut answered_valid = 0;
    let mut buf = [0u8; 2048];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let started = Instant::now();
    for i in 0..10_000u64 {
        if i == 500 {
            // The ping starts once the flood is under way.
            ping = Some(
                server
                    .client()
                    .args(["ping", "--udp", "-c", "20", "-i", "0.01", "-W", "3"])
                    .arg(server.url())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
        }
        x = common::xorshift(x);
        let d: Vec<u8> = match i % 5 {
            // Random bytes of random length.
            0 => (0..(x % 1500)).map(|j| (x >> (j % 56)) as u8).collect(),
            // A header length far beyond the datagram.
            1 => vec![0xff, 0xff, 0xff, 0xff, b'{'],
            // Well-formed frames with bad tags.
            2 => request(&wrong, x, i, b"junk"),
            // Replays of one valid request (answered once only).
            3 => valid.clone(),
            // Valid JSON, wrong op.
            _ => {
                let h = br#"{"op":"udp_pong","user":"x","sid":1,"seq":1,"ts":1,"tag":""}"#;
                let mut d = (h.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(h);
                d
            }
        };
        junk.send(&d).unwrap();
        // Every 100 datagrams, a valid probe: waiting for its answer keeps
        // the server's socket buffer from overflowing (which would drop
        // the concurrent ping's datagrams in the kernel, not in skiff) and
        // shows the server answering throughout.
        if i % 100 == 99 {
            junk.send(&request(&key, 88, i, b"")).unwrap();
            loop {
                let n = junk
                    .recv(&mut buf)
                    .expect("probe answered during the flood");
                let (st, _) = open_reply(&key.key, &buf[..n]).expect("only authentic replies");
                match st.sid {
                    77 => answered_valid += 1,
                    88 if st.seq == i => break,
                    other => panic!("unexpected reply for run {other}"),
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "flood too slow"
        );
    }
    assert_eq!(answered_valid, 1, "a replayed request was answered again");
    let out = ping.unwrap().wait_with_output().unwrap();
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("20 pings transmitted, 20 received, 0% loss"),
        "{text}"
    );
}

/// What the test relay does with datagrams.
#[derive(Clone, Copy)]
enum Relay {
    /// Drop every third request (client to server).
    DropEveryThird,
    /// Send every reply twice.
    DuplicateReplies,
    /// Hold each even-numbered reply until the next one has been sent.
    SwapReplyPairs,
}

/// A UDP proxy in front of `server`; returns its address and a stop flag.
fn relay(server: SocketAddr, mode: Relay) -> (SocketAddr, Arc<AtomicBool>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = stop.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = vec![0u8; 70000];
        let mut client: Option<SocketAddr> = None;
        let (mut requests, mut replies) = (0u64, 0u64);
        let mut held: Option<Vec<u8>> = None;
        while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let d = &buf[..n];
            if from != server {
                client = Some(from);
                requests += 1;
                if matches!(mode, Relay::DropEveryThird) && requests % 3 == 0 {
                    continue;
                }
                let _ = sock.send_to(d, server);
                continue;
            }
            let Some(c) = client else { continue };
            replies += 1;
            match mode {
                Relay::DropEveryThird => {
                    let _ = sock.send_to(d, c);
                }
                Relay::DuplicateReplies => {
                    let _ = sock.send_to(d, c);
                    let _ = sock.send_to(d, c);
                }
                Relay::SwapReplyPairs => match held.take() {
                    None if replies % 2 == 1 => held = Some(d.to_vec()),
                    None => {
                        let _ = sock.send_to(d, c);
                    }
                    Some(first) => {
                        let _ = sock.send_to(d, c);
                        let _ = sock.send_to(&first, c);
                    }
                },
            }
        }
    });
    (addr, stop)
}

/// Pings `count` times through a relay in `mode`; ping must exit 0.
fn ping_via(server: &TestServer, addr: SocketAddr, mode: Relay, count: &str) -> String {
    let (via, stop) = relay(addr, mode);
    let out = server
        .client()
        .args(["ping", "--udp", "-c", count, "-i", "0.02", "-W", "0.5"])
        .arg(format!("udp://{via}"))
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    text
}

#[test]
fn loss_duplicates_and_reordering_through_a_relay() {
    let (server, addr, _) = udp_server();

    let text = ping_via(&server, addr, Relay::DropEveryThird, "30");
    assert!(
        text.contains("30 pings transmitted, 20 received, 33.3% loss"),
        "{text}"
    );
    for lost in [2, 5, 29] {
        assert!(text.contains(&format!("seq={lost} within")), "{text}");
    }
    assert!(!text.contains("duplicates") && !text.contains("reordered"));

    let text = ping_via(&server, addr, Relay::DuplicateReplies, "6");
    // The last reply's copy may come after ping has its 6 answers and
    // stops listening (as ping(8) does); earlier copies are all seen.
    let dups = text.matches("(DUP!)").count();
    assert!((4..=6).contains(&dups), "{text}");
    assert!(
        text.contains(&format!(
            "6 pings transmitted, 6 received, +{dups} duplicates, 0% loss"
        )),
        "{text}"
    );

    let text = ping_via(&server, addr, Relay::SwapReplyPairs, "6");
    assert!(
        text.contains("6 pings transmitted, 6 received, 3 reordered, 0% loss"),
        "{text}"
    );
    assert!(text.contains("seq=0 time="), "{text}");
}
