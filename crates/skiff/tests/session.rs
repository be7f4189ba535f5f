//! End-to-end: sessions through the real binary.

mod common;

use common::TestServer;

#[test]
fn ping_over_tls_and_unix() {
    let server =
        TestServer::start_listening(&["tcp://127.0.0.1:0", "unix://{home}/skiff.sock"], &[]);
    for url in &server.urls {
        let out = server
            .client()
            .args(["ping", "-c", "3", "-i", "0", url])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{url}: {stdout}");
        assert!(
            stdout.contains("3 pings transmitted, 3 received"),
            "{stdout}"
        );
        assert!(stdout.contains("rtt min/avg/max/mdev"), "{stdout}");
    }
}
