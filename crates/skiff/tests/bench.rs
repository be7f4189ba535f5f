//! `skiff bench` end to end: the real binary against a real server.

mod common;

use common::TestServer;

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn bench_ping_reports_pipelined_round_trips() {
    let server = TestServer::start(&[]);
    let out = server
        .client()
        .args(["bench", "ping", server.url(), "-c", "3", "-d", "0.5"])
        .args(["--pipeline", "4", "--size", "100", "--json"])
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["connections"], 3);
    assert_eq!(v["pipeline"], 4);
    let requests = v["requests"].as_u64().unwrap();
    // Every batch is answered in full: a multiple of the pipeline depth.
    assert!(requests >= 12 && requests.is_multiple_of(4), "{requests}");
    let p50 = v["latency"]["p50_ms"].as_f64().unwrap();
    let p999 = v["latency"]["p999_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p999 >= p50, "{v}");
}

#[test]
fn bench_rejects_bad_arguments_clearly() {
    let server = TestServer::start(&[]);
    let out = server
        .client()
        .args(["bench", "ping", server.url(), "-c", "0", "-d", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-c must be"));
}

#[test]
fn bench_exec_times_true_on_new_connections() {
    let server = TestServer::start(&[]);
    let out = server
        .client()
        .args(["bench", "exec", server.url(), "-n", "3", "--json"])
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["count"], 3);
    assert!(v["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_ping_opens_more_connections_than_one_address_may_have_in_the_handshake() {
    // The server drops a connection at once when its source already has
    // `--per-source-max-startups` (default 16) in the handshake. 64
    // sessions over plain TCP, where handshakes come fastest, must all
    // open: the client keeps fewer than that in flight.
    let server = TestServer::start_listening(&["tcp+plain://127.0.0.1:0"], &[]);
    for round in 0..3 {
        let out = server
            .client()
            .args([
                "bench",
                "ping",
                server.url(),
                "-c",
                "64",
                "-d",
                "0.2",
                "--json",
            ])
            .output()
            .unwrap();
        let v = json_of(&out);
        assert_eq!(v["connections"], 64, "round {round}: {v}");
    }
}
