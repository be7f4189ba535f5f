//! End-to-end: secure sessions through the real binary, on loopback.
//!
//! Besides the real client, these tests speak the protocol by hand (a raw
//! frame client over `tcp+plain` or Unix sockets computing its own HMACs,
//! and a TLS-terminating relay for the man in the middle), so they check
//! the wire behaviour of DESIGN section 3, not just our own client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::probe::RawConn as Raw;
use common::{run_bounded, text, TestServer};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

// ---------------------------------------------------------------------
// helpers

/// `skiff ping -c 1 -i 0 TARGET` with the server's key; returns the output.
fn ping(server: &TestServer, target: &str) -> Output {
    let mut cmd = server.client();
    cmd.args(["ping", "-c", "1", "-i", "0", target]);
    run_bounded(cmd, Duration::from_secs(30))
}

fn assert_ping_ok(server: &TestServer, target: &str) {
    let out = ping(server, target);
    assert!(
        out.status.success(),
        "{target}: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("1 pings transmitted, 1 received"));
}

/// Asserts a client failure: exit 255 and one stderr line containing `what`.
fn assert_fails_with(out: &Output, what: &str) {
    assert_fails_with_code(out, 255, what);
}

/// Asserts a client failure with exit `code` (2: an unusable local key
/// file, 255: connection, trust or auth) and one stderr line holding `what`.
fn assert_fails_with_code(out: &Output, code: i32, what: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(what), "expected {what:?} in {err:?}");
    // A missing key file gets numbered advice after its one-line error.
    let lines = err.trim_end().lines().count();
    assert!(
        lines == 1 || (code == 2 && lines <= 5),
        "one line expected: {err:?}"
    );
}

/// Writes a private key file holding `line`.
fn write_key(path: &Path, line: &str) {
    std::fs::write(path, format!("{line}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The server's user key line (`NAME BASE64KEY`).
fn key_line(server: &TestServer) -> (String, Vec<u8>) {
    let line = std::fs::read_to_string(&server.key_file).unwrap();
    let line = line.lines().find(|l| !l.starts_with('#')).unwrap();
    let (user, key) = line.split_once(' ').unwrap();
    (user.to_string(), B64.decode(key.trim()).unwrap())
}

fn url_with(server: &TestServer, prefix: &str) -> String {
    server
        .urls
        .iter()
        .find(|u| u.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} listener in {:?}", server.urls))
        .clone()
}

fn host_port(url: &str) -> String {
    url.split_once("://").unwrap().1.to_string()
}

/// A TLS connection to `addr` (`HOST:PORT`) with skiff's client settings,
/// before any skiff handshake.
async fn tls_connect(addr: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    skiff::session::tls::connector()
        .unwrap()
        .connect(skiff::session::tls::server_name("localhost"), tcp)
        .await
        .unwrap()
}

fn fingerprint(server: &TestServer) -> String {
    server
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("certificate fingerprint "))
        .expect("fingerprint line")
        .to_string()
}

// ---------------------------------------------------------------------
// a raw frame client, written from DESIGN sections 2 and 3 only

fn hmac(key: &[u8], label: &[u8], cb: &[u8; 32], cn: &[u8; 32], sn: &[u8; 32]) -> [u8; 32] {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(label);
    m.update(cb);
    m.update(cn);
    m.update(sn);
    m.finalize().into_bytes().into()
}

/// A complete handshake without TLS (cb = 32 zero bytes), checking the
/// server's proof; returns (the auth proof sent, the server's answer).
fn raw_handshake(raw: &mut Raw, user: &str, key: &[u8], cn: &[u8; 32]) -> (String, Value) {
    let challenge = raw.hello(user, cn);
    assert_eq!(challenge["op"], "challenge", "{challenge}");
    let sn: [u8; 32] = B64
        .decode(challenge["nonce"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let cb = [0u8; 32];
    let expected = hmac(key, b"skiff/1 server", &cb, cn, &sn);
    assert_eq!(
        challenge["proof"].as_str().unwrap(),
        B64.encode(expected),
        "server proof"
    );
    let proof = B64.encode(hmac(key, b"skiff/1 client", &cb, cn, &sn));
    raw.send(&json!({"op":"auth","proof":proof})).unwrap();
    (proof, raw.recv().expect("an answer to auth"))
}

// ---------------------------------------------------------------------
// authentication

#[test]
fn right_key_welcome_over_tls_plain_and_unix() {
    let server = TestServer::start_listening(
        &[
            "tcp://127.0.0.1:0",
            "tcp+plain://127.0.0.1:0",
            "unix://{home}/skiff.sock",
        ],
        &[],
    );
    for url in &server.urls {
        let mut cmd = server.client();
        cmd.args(["ping", "-c", "3", "-i", "0", url]);
        let out = run_bounded(cmd, Duration::from_secs(30));
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{url}: {stdout} {}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains("3 pings transmitted, 3 received"),
            "{stdout}"
        );
        assert!(stdout.contains("rtt min/avg/max/mdev"), "{stdout}");
        assert_eq!(stdout.matches(" bytes from ").count(), 3, "{stdout}");
    }
    // The bare HOST:PORT form means TLS, and the key comes from the default
    // path: no flags needed.
    let port = host_port(server.url())
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    assert_ping_ok(&server, &format!("localhost:{port}"));

    // A raw client that follows the spec gets `welcome` listing services.
    let (user, key) = key_line(&server);
    for url in &server.urls[1..] {
        let mut raw = if url.starts_with("unix") {
            Raw::unix(url)
        } else {
            Raw::connect(url)
        };
        let (_, answer) = raw_handshake(&mut raw, &user, &key, &[7; 32]);
        assert_eq!(answer["op"], "welcome", "{answer}");
        assert!(answer["services"]
            .as_array()
            .unwrap()
            .contains(&json!("ping")));
        raw.send(&json!({"op":"ping"})).unwrap();
        assert_eq!(raw.recv().unwrap()["op"], "pong");
    }
}

#[test]
fn ipv6_loopback_sessions() {
    let server = TestServer::start_listening(&["tcp://[::1]:0", "tcp+plain://[::1]:0"], &[]);
    assert!(
        server.url().starts_with("tcp://[::1]:"),
        "{:?}",
        server.urls
    );
    for url in &server.urls {
        assert_ping_ok(&server, url);
    }
    // `[IPv6]:PORT` without a scheme.
    assert_ping_ok(&server, &host_port(server.url()));
}

#[test]
fn wrong_key_and_unknown_user_fail_alike() {
    let server = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (user, _) = key_line(&server);
    let wrong = dir.path().join("wrong");
    write_key(&wrong, &format!("{user} {}", B64.encode([9u8; 32])));
    let unknown = dir.path().join("unknown");
    write_key(&unknown, &format!("mallory {}", B64.encode([9u8; 32])));

    let attempt = |key: &Path| {
        let mut cmd = server.client();
        cmd.arg("ping")
            .arg("--key")
            .arg(key)
            .args(["-c", "1", server.url()]);
        let start = Instant::now();
        let out = run_bounded(cmd, Duration::from_secs(30));
        (out, start.elapsed())
    };
    let mut times = [Vec::new(), Vec::new()];
    let mut messages = [String::new(), String::new()];
    for _ in 0..3 {
        for (i, key) in [&wrong, &unknown].into_iter().enumerate() {
            let (out, took) = attempt(key);
            assert_fails_with(&out, "authentication failed");
            assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
            times[i].push(took);
            // Same message apart from the user name we sent ourselves.
            messages[i] = text(&out.stderr).replace("mallory", &user);
        }
    }
    assert_eq!(messages[0], messages[1]);
    // Same timing class: the medians are of the same order (the client
    // rejects both at the server's proof, before any server-side delay).
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[1]
    };
    let (a, b) = (median(&mut times[0]), median(&mut times[1]));
    eprintln!("wrong key {a:?}, unknown user {b:?}");
    assert!(a < b * 4 + Duration::from_millis(500) && b < a * 4 + Duration::from_millis(500));
}

#[test]
fn raw_wrong_proof_and_unknown_user_answered_alike_after_a_delay() {
    let server = TestServer::start_listening(
        &["tcp+plain://127.0.0.1:0"],
        &["--auth-fail-delay-ms", "300", "--auth-max-failures", "100"],
    );
    let (user, _) = key_line(&server);
    let mut answers = Vec::new();
    for who in [user.as_str(), "nobody-here"] {
        let mut raw = Raw::connect(server.url());
        let challenge = raw.hello(who, &[1; 32]);
        assert_eq!(challenge["op"], "challenge", "{challenge}");
        // A well-formed but wrong proof.
        raw.send(&json!({"op":"auth","proof":B64.encode([0u8; 32])}))
            .unwrap();
        let start = Instant::now();
        let answer = raw.recv().expect("an error");
        let delay = start.elapsed();
        assert!(raw.closed(), "connection must close after auth_failed");
        assert_eq!(answer["op"], "error");
        assert_eq!(answer["code"], "auth_failed");
        // The configured failure delay is there (a lower bound only).
        assert!(delay >= Duration::from_millis(250), "{delay:?}");
        answers.push(answer);
    }
    assert_eq!(
        answers[0], answers[1],
        "unknown user must look like wrong key"
    );
}

#[test]
fn replayed_client_proof_fails_on_a_new_connection() {
    let server = TestServer::start_listening(
        &["tcp+plain://127.0.0.1:0", "unix://{home}/s.sock"],
        &["--auth-fail-delay-ms", "50"],
    );
    let (user, key) = key_line(&server);
    for url in &server.urls {
        let connect = || {
            if url.starts_with("unix") {
                Raw::unix(url)
            } else {
                Raw::connect(url)
            }
        };
        let cn = [0x5a; 32];
        // Record a genuine exchange.
        let mut first = connect();
        let (proof, answer) = raw_handshake(&mut first, &user, &key, &cn);
        assert_eq!(answer["op"], "welcome");
        // Replay hello (same nonce) and the recorded proof elsewhere.
        let mut replay = connect();
        let challenge = replay.hello(&user, &cn);
        assert_eq!(challenge["op"], "challenge");
        replay.send(&json!({"op":"auth","proof":proof})).unwrap();
        let answer = replay.recv().expect("an error");
        assert_eq!(answer["code"], "auth_failed", "{answer}");
        assert!(replay.closed());
        // The original session is unaffected.
        first.send(&json!({"op":"ping"})).unwrap();
        assert_eq!(first.recv().unwrap()["op"], "pong");
    }
}

#[test]
fn nothing_but_the_handshake_is_answered_before_welcome() {
    let server = TestServer::start_listening(
        &["tcp+plain://127.0.0.1:0", "unix://{home}/s.sock"],
        &["--auth-fail-delay-ms", "50"],
    );
    let (user, _) = key_line(&server);
    let connect = |url: &str| {
        if url.starts_with("unix") {
            Raw::unix(url)
        } else {
            Raw::connect(url)
        }
    };
    for url in &server.urls {
        let requests = [
            json!({"op":"ping"}),
            json!({"op":"exec","argv":["touch","pwned"]}),
            json!({"op":"exec","cmd":"touch pwned"}),
            json!({"op":"ls","path":"/"}),
            json!({"op":"welcome"}),
        ];
        for req in &requests {
            // As the first frame...
            let mut raw = connect(url);
            raw.send(req).unwrap();
            let answer = raw.recv().expect("an error frame");
            assert_eq!(answer["op"], "error", "{req} -> {answer}");
            assert_eq!(answer["code"], "bad_frame", "{answer}");
            assert!(raw.closed(), "{req}: connection must close");
            // ...and instead of `auth`.
            let mut raw = connect(url);
            assert_eq!(raw.hello(&user, &[3; 32])["op"], "challenge");
            raw.send(req).unwrap();
            let answer = raw.recv().expect("an error frame");
            assert_eq!(answer["op"], "error", "{req} -> {answer}");
            assert!(raw.closed(), "{req}: connection must close");
        }
    }
    assert!(!server.root.join("pwned").exists());
    // The server still serves.
    assert_ping_ok(&server, server.url());
}

#[test]
fn malformed_and_unknown_requests_are_answered_and_the_session_goes_on() {
    let server = TestServer::start_listening(&["tcp+plain://127.0.0.1:0"], &[]);
    let (user, key) = key_line(&server);
    let mut raw = Raw::connect(&server.urls[0]);
    let (_, welcome) = raw_handshake(&mut raw, &user, &key, &[9; 32]);
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    let refused = [
        (json!({"op":"stat"}), "bad_frame", "path"),
        (json!({"op":"mv","from":1,"to":"b"}), "bad_frame", "mv"),
        (
            json!({"op":"exec","argv":"not a list"}),
            "bad_frame",
            "exec",
        ),
        (json!({"op":"frobnicate"}), "unsupported", "frobnicate"),
    ];
    for (req, code, says) in refused {
        raw.send(&req).unwrap();
        let answer = raw.recv().expect("an error frame");
        assert_eq!(answer["op"], "error", "{req} -> {answer}");
        assert_eq!(answer["code"], code, "{req} -> {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{req} -> {answer}");
        // The same session still answers.
        raw.send(&json!({"op":"ping"})).unwrap();
        assert_eq!(raw.recv().expect("a pong")["op"], "pong", "after {req}");
    }
}

// ---------------------------------------------------------------------
// a man in the middle

/// A relay that terminates TLS with its own certificate and forwards the
/// plaintext both ways to the real server, watching what passes.
struct Relay {
    port: u16,
    saw_welcome: Arc<AtomicBool>,
    client_bytes: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl Relay {
    fn start(server_addr: String) -> Relay {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let saw_welcome = Arc::new(AtomicBool::new(false));
        let client_bytes = Arc::new(AtomicUsize::new(0));
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(skiff::session::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (welcome, counted) = (saw_welcome.clone(), client_bytes.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let server_addr = server_addr.clone();
                let (welcome, counted) = (welcome.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(client) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let upstream = tls_connect(&server_addr).await;
                    let (mut cr, mut cw) = tokio::io::split(client);
                    let (mut sr, mut sw) = tokio::io::split(upstream);
                    let up = async {
                        let mut buf = vec![0u8; 16384];
                        while let Ok(n @ 1..) = cr.read(&mut buf).await {
                            counted.fetch_add(n, Ordering::SeqCst);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let mut seen = Vec::new();
                        let mut buf = vec![0u8; 16384];
                        while let Ok(n @ 1..) = sr.read(&mut buf).await {
                            seen.extend_from_slice(&buf[..n]);
                            if text(&seen).contains("\"welcome\"") {
                                welcome.store(true, Ordering::SeqCst);
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Relay {
            port,
            saw_welcome,
            client_bytes,
            _rt: rt,
        }
    }
}

#[test]
fn man_in_the_middle_is_detected_and_never_welcomed() {
    let server = TestServer::start(&[]);
    let relay = Relay::start(host_port(server.url()));
    let relay_url = format!("tcp://127.0.0.1:{}", relay.port);
    let dir = tempfile::tempdir().unwrap();
    // A fresh known-servers file: the pin does not hide the proof check.
    let known = dir.path().join("known_servers");
    let mut cmd = server.client();
    cmd.env("SKIFF_KNOWN_SERVERS", &known)
        .args(["ping", "-c", "1", &relay_url]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_fails_with(&out, "authentication failed");
    assert!(
        text(&out.stderr).contains("man in the middle"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        relay.client_bytes.load(Ordering::SeqCst) > 0,
        "the relay was used"
    );
    assert!(
        !relay.saw_welcome.load(Ordering::SeqCst),
        "welcome passed the relay"
    );
    // The relay's certificate was not pinned (it never proved the key).
    let pins = std::fs::read_to_string(&known).unwrap_or_default();
    assert!(!pins.contains(&format!(":{}", relay.port)), "{pins}");

    // The same client talking to the real server directly is fine, and
    // pins the server's certificate.
    let mut cmd = server.client();
    cmd.env("SKIFF_KNOWN_SERVERS", &known)
        .args(["ping", "-c", "1", "-i", "0", server.url()]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pins = std::fs::read_to_string(&known).unwrap();
    assert!(
        pins.contains(&format!(
            "{} {}",
            host_port(server.url()),
            fingerprint(&server)
        )),
        "{pins}"
    );
}

#[test]
fn relay_answering_with_its_own_binding_gets_no_welcome() {
    // The relay's best move: finish the handshake itself. It has no key,
    // so whatever `auth` it sends fails; and a genuine client's proof is
    // bound to the relay's certificate, not the server's.
    let server = TestServer::start(&["--auth-fail-delay-ms", "50"]);
    let (user, key) = key_line(&server);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = tls_connect(&host_port(server.url())).await;
        // A client proof computed with the right key but a relay's binding.
        let cn = [0x33u8; 32];
        let hello = json!({"op":"hello","v":1,"user":user,"nonce":B64.encode(cn)});
        let frame = |v: &Value| {
            let h = serde_json::to_vec(v).unwrap();
            let mut b = (h.len() as u32).to_be_bytes().to_vec();
            b.extend_from_slice(&h);
            b
        };
        tls.write_all(&frame(&hello)).await.unwrap();
        let mut len = [0u8; 4];
        tls.read_exact(&mut len).await.unwrap();
        let mut h = vec![0u8; u32::from_be_bytes(len) as usize];
        tls.read_exact(&mut h).await.unwrap();
        let challenge: Value = serde_json::from_slice(&h).unwrap();
        let sn: [u8; 32] = B64
            .decode(challenge["nonce"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let relay_cb = [0xAB; 32];
        let proof = hmac(&key, b"skiff/1 client", &relay_cb, &cn, &sn);
        tls.write_all(&frame(&json!({"op":"auth","proof":B64.encode(proof)})))
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest)).await;
        let rest = text(&rest);
        assert!(rest.contains("auth_failed"), "{rest}");
        assert!(!rest.contains("welcome"), "{rest}");
    });
}

#[test]
fn changed_certificate_for_a_pinned_server_is_refused() {
    let server = TestServer::start(&[]);
    let relay = Relay::start(host_port(server.url()));
    let relay_hp = format!("127.0.0.1:{}", relay.port);
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_servers");
    // We have talked to the real server at this address before.
    std::fs::write(&known, format!("{relay_hp} {}\n", fingerprint(&server))).unwrap();
    let mut cmd = server.client();
    cmd.env("SKIFF_KNOWN_SERVERS", &known)
        .args(["ping", "-c", "1", &format!("tcp://{relay_hp}")]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_fails_with(&out, "server certificate changed");
    assert!(text(&out.stderr).contains(&known.display().to_string()));
    // Stopped right after TLS: not even `hello` was sent.
    assert_eq!(relay.client_bytes.load(Ordering::SeqCst), 0);
    assert!(!relay.saw_welcome.load(Ordering::SeqCst));
    // The pin is unchanged.
    let pins = std::fs::read_to_string(&known).unwrap();
    assert_eq!(pins.lines().count(), 1, "{pins}");
}

#[test]
fn a_restarted_server_with_a_new_certificate_is_refused() {
    let first = TestServer::start(&[]);
    let url = first.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_servers");
    let client = |server: &TestServer| {
        let mut cmd = server.client();
        cmd.env("SKIFF_KNOWN_SERVERS", &known)
            .args(["ping", "-c", "1", &url]);
        run_bounded(cmd, Duration::from_secs(30))
    };
    assert!(client(&first).status.success());
    drop(first);
    // Another server (new state dir, new certificate) on the same port.
    let second = TestServer::start_listening(&[url.as_str()], &[]);
    let out = client(&second);
    assert_fails_with(&out, "server certificate changed");
}

// ---------------------------------------------------------------------
// robustness

#[test]
fn garbage_and_tls_less_bytes_are_dropped_and_service_goes_on() {
    let server = TestServer::start_listening(
        &["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"],
        &["--auth-fail-delay-ms", "50"],
    );
    let tls = host_port(&url_with(&server, "tcp://"));
    let plain = url_with(&server, "tcp+plain://");
    let plain_frame = {
        let h = br#"{"op":"hello","v":1,"user":"x","nonce":"AAAA"}"#;
        let mut b = (h.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(h);
        b
    };
    let garbage = common::random_bytes(4096, 0x1234_5678);
    for bytes in [&plain_frame, &garbage, &b"GET / HTTP/1.1\r\n\r\n".to_vec()] {
        let mut s = TcpStream::connect(&tls).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut sink = Vec::new();
        // The server drops it (EOF, or a reset, or a TLS alert then EOF).
        let _ = s.read_to_end(&mut sink);
        assert!(sink.len() < 64, "server answered {} bytes", sink.len());
        assert!(!text(&sink).contains("challenge"));
    }
    // Garbage on the plain port gets a frame error, then the close.
    let mut raw = Raw::connect(&plain);
    raw.sock.write_all(&garbage).unwrap();
    let answer = raw.recv();
    if let Some(a) = answer {
        assert_eq!(a["op"], "error", "{a}");
    }
    assert!(raw.closed());
    assert_ping_ok(&server, &url_with(&server, "tcp://"));
    assert_ping_ok(&server, &plain);
}

#[test]
fn silent_clients_are_dropped_at_the_handshake_timeout() {
    let server = TestServer::start_listening(
        &["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"],
        &["--handshake-timeout", "1"],
    );
    // TLS port, nothing sent at all.
    let mut s = TcpStream::connect(host_port(server.url())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "dropped too early: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "not dropped: {took:?}");

    // TLS done, then silence: a `timeout` error inside TLS, then the close.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut tls = tls_connect(&host_port(server.url())).await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(8), tls.read_to_end(&mut rest));
        assert!(read.await.is_ok(), "not dropped");
        assert!(text(&rest).contains("\"timeout\""), "{}", text(&rest));
    });

    // Plain port: hello, then silence: a `timeout` error, then the close.
    let (user, _) = key_line(&server);
    let mut raw = Raw::connect(&url_with(&server, "tcp+plain://"));
    let start = Instant::now();
    assert_eq!(raw.hello(&user, &[4; 32])["op"], "challenge");
    let answer = raw.recv().expect("timeout error");
    assert_eq!(answer["code"], "timeout", "{answer}");
    assert!(raw.closed());
    assert!(start.elapsed() < Duration::from_secs(8));
    assert_ping_ok(&server, server.url());
}

/// One wrong proof over `plain` (a raw client that gets to `auth`).
fn fail_once(plain: &str, user: &str) {
    let mut raw = Raw::connect(plain);
    assert_eq!(raw.hello(user, &[5; 32])["op"], "challenge");
    raw.send(&json!({"op":"auth","proof":B64.encode([0u8; 32])}))
        .unwrap();
    let answer = raw.recv().expect("auth_failed");
    assert_eq!(answer["code"], "auth_failed", "{answer}");
}

#[test]
fn failures_slow_a_source_down_but_never_lock_out_the_right_key() {
    let server = TestServer::start_listening(
        &[
            "tcp://127.0.0.1:0",
            "tcp+plain://127.0.0.1:0",
            "unix://{home}/s.sock",
        ],
        &[
            "--auth-max-failures",
            "2",
            "--auth-fail-delay-ms",
            "200",
            "--auth-penalty-max-ms",
            "1500",
        ],
    );
    let (user, _) = key_line(&server);
    let plain = url_with(&server, "tcp+plain://");
    // The free failures: answered after the failure delay only.
    for _ in 0..2 {
        let start = Instant::now();
        fail_once(&plain, &user);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(150), "no failure delay");
        assert!(
            took < Duration::from_millis(1200),
            "penalized early: {took:?}"
        );
    }
    // Then the delays grow (100, 200, 400, 800 ms, then the 1.5 s bound)...
    for _ in 0..8 {
        fail_once(&plain, &user);
    }
    let start = Instant::now();
    let mut raw = Raw::connect(&plain);
    assert_eq!(raw.hello(&user, &[6; 32])["op"], "challenge");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1300),
        "a penalized source waits before its hello is answered: {waited:?}"
    );
    drop(raw);
    // ... but the right key, from the same address, on every port, still
    // logs in, at most the bound later.
    let start = Instant::now();
    assert_ping_ok(&server, &url_with(&server, "tcp://"));
    let took = start.elapsed();
    assert!(took < Duration::from_secs(6), "right key took {took:?}");
    let (_, key) = key_line(&server);
    let mut raw = Raw::connect(&plain);
    let (_, answer) = raw_handshake(&mut raw, &user, &key, &[7; 32]);
    assert_eq!(answer["op"], "welcome", "{answer}");
    // Unix peers are local users: never penalized.
    let start = Instant::now();
    assert_ping_ok(&server, &url_with(&server, "unix://"));
    assert!(start.elapsed() < Duration::from_millis(1300));
}

#[test]
fn ten_hellos_for_a_nonexistent_user_do_not_lock_out_the_right_key() {
    // Default penalties: the attempt of the report that used to lock the
    // right key out for 60 s.
    let server =
        TestServer::start_listening(&["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"], &[]);
    let plain = url_with(&server, "tcp+plain://");
    let start = Instant::now();
    for i in 0..10u8 {
        let mut raw = Raw::connect(&plain);
        assert_eq!(raw.hello("nobody-here", &[i; 32])["op"], "challenge");
        // The client drops the connection, as one with a wrong key does.
    }
    eprintln!("10 hellos for an unknown user took {:?}", start.elapsed());
    let start = Instant::now();
    assert_ping_ok(&server, server.url());
    let took = start.elapsed();
    eprintln!("then the right key logged in after {took:?}");
    assert!(took < Duration::from_secs(5), "right key took {took:?}");
}

// ---------------------------------------------------------------------
// keys, users and listeners

#[test]
fn keygen_prints_a_line_and_writes_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::env_for(Command::new(common::skiff_bin()), dir.path());
    cmd.args(["keygen", "--user", "alice"]);
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert!(out.status.success());
    let line = text(&out.stdout);
    assert_eq!(line.lines().count(), 1, "{line}");
    let (name, key) = line.trim_end().split_once(' ').unwrap();
    assert_eq!(name, "alice");
    assert_eq!(B64.decode(key).unwrap().len(), 32);
    assert_eq!(
        B64.encode(B64.decode(key).unwrap()),
        key,
        "padded standard base64"
    );

    // Two runs never give the same key.
    let mut cmd = common::env_for(Command::new(common::skiff_bin()), dir.path());
    cmd.args(["keygen", "--user", "alice"]);
    assert_ne!(
        text(&run_bounded(cmd, Duration::from_secs(10)).stdout),
        line
    );

    let out_file = dir.path().join("sub/alice.key");
    let mut cmd = common::env_for(Command::new(common::skiff_bin()), dir.path());
    cmd.args(["keygen", "--user", "alice", "--out"])
        .arg(&out_file);
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "the key goes to the file only");
    let meta = std::fs::metadata(&out_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert!(written.starts_with("alice ") && written.ends_with('\n'));

    // Never overwrites.
    let mut cmd = common::env_for(Command::new(common::skiff_bin()), dir.path());
    cmd.args(["keygen", "--user", "alice", "--out"])
        .arg(&out_file);
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), written);

    // Bad user names are refused.
    let mut cmd = common::env_for(Command::new(common::skiff_bin()), dir.path());
    cmd.args(["keygen", "--user", "a b"]);
    assert!(!run_bounded(cmd, Duration::from_secs(10)).status.success());
}

#[test]
fn open_key_and_users_files_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, format!("bob {}\n", B64.encode([1u8; 32]))).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut cmd = common::env_for(Command::new(common::skiff_bin()), dir.path());
        cmd.args(["serve", "--listen", "tcp://127.0.0.1:0", "--users"])
            .arg(&users)
            .arg("--root")
            .arg(dir.path());
        let out = run_bounded(cmd, Duration::from_secs(10));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "mode {mode:o} accepted");
        assert!(
            err.contains(&format!("chmod 600 {}", users.display())),
            "{err}"
        );
        assert!(!text(&out.stdout).contains("listening on"));
    }

    // The client's key file.
    let server = TestServer::start(&[]);
    let key = dir.path().join("key");
    std::fs::copy(&server.key_file, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut cmd = server.client();
    cmd.arg("ping")
        .arg("--key")
        .arg(&key)
        .args(["-c", "1", server.url()]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert_fails_with_code(&out, 2, &format!("chmod 600 {}", key.display()));
    // Fixed as told, it works.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = server.client();
    cmd.arg("ping")
        .arg("--key")
        .arg(&key)
        .args(["-c", "1", server.url()]);
    assert!(run_bounded(cmd, Duration::from_secs(20)).status.success());
    // $SKIFF_KEY_FILE is checked the same way.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
    let mut cmd = server.client();
    cmd.env("SKIFF_KEY_FILE", &key)
        .args(["ping", "-c", "1", server.url()]);
    assert_fails_with_code(&run_bounded(cmd, Duration::from_secs(20)), 2, "chmod 600");
}

#[test]
fn plain_tcp_on_non_loopback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "tcp+plain://0.0.0.0:0",
        "tcp+plain://[::]:0",
        "tcp+plain://192.0.2.1:0",
    ] {
        let mut cmd = common::env_for(Command::new(common::skiff_bin()), dir.path());
        cmd.args(["serve", "--listen", url, "--root"])
            .arg(dir.path());
        let out = run_bounded(cmd, Duration::from_secs(10));
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{url} accepted");
        assert!(
            err.contains("refusing to serve unencrypted tcp+plain"),
            "{err}"
        );
        assert!(err.contains("tcp://"), "suggests TLS: {err}");
        assert!(!text(&out.stdout).contains("listening on"));
    }
}

#[test]
fn client_failures_are_one_line_with_exit_255() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    write_key(&key, &format!("bob {}", B64.encode([1u8; 32])));
    // Nothing listens on this port (bound then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = common::env_for(Command::new(common::skiff_bin()), dir.path());
    cmd.arg("ping")
        .arg("--key")
        .arg(&key)
        .arg(format!("127.0.0.1:{port}"));
    assert_fails_with(
        &run_bounded(cmd, Duration::from_secs(20)),
        "connection refused",
    );
    // No key file at all: says where it looked and what to do.
    let mut cmd = common::env_for(Command::new(common::skiff_bin()), dir.path());
    cmd.args(["ping", &format!("127.0.0.1:{port}")]);
    assert_fails_with_code(
        &run_bounded(cmd, Duration::from_secs(20)),
        2,
        "skiff keygen",
    );
}

#[test]
fn busy_server_says_so_inside_tls() {
    let server = TestServer::start_listening(
        &["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"],
        &["--max-connections", "2", "--handshake-timeout", "30"],
    );
    let plain = url_with(&server, "tcp+plain://");
    let (user, key) = key_line(&server);
    // Connections still in the handshake are counted apart: they never
    // take a session's slot.
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(host_port(server.url())).unwrap())
        .collect();
    assert_ping_ok(&server, server.url());
    // Two logged-in sessions fill it.
    let sessions: Vec<Raw> = (0..2u8)
        .map(|i| {
            let mut raw = Raw::connect(&plain);
            let (_, answer) = raw_handshake(&mut raw, &user, &key, &[i; 32]);
            assert_eq!(answer["op"], "welcome", "{answer}");
            raw
        })
        .collect();
    let out = ping(&server, server.url());
    assert_fails_with(&out, "connection limit");
    drop(sessions);
    drop(idle);
    // The slots come back once the sessions are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ping(&server, server.url());
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
}
