//! SIGTERM and SIGINT stop a server gracefully: the example `upper_echo`
//! server (its own handlers and builder, included below) runs in a child
//! process, which is this test binary re-run with only `signal_child`.
//!
//! A child process, because a signal goes to a whole process: sending one to
//! the test runner itself would hit every test running in it. Re-running the
//! test binary (always at `current_exe()`) rather than the built example
//! keeps the test independent of whether cargo built examples this time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[allow(dead_code)] // its `main` is not used here
#[path = "../examples/upper_echo.rs"]
mod upper_echo;

use skiff_net::ListenAddr;

const CHILD_ENV: &str = "SKIFF_NET_SIGNAL_CHILD";
const LIMIT: Duration = Duration::from_secs(10);

/// The server process of the tests below; does nothing when run directly.
#[test]
#[ignore = "started as a child process by the signal tests"]
fn signal_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = upper_echo::upper_echo(
            "tcp://127.0.0.1:0".parse().unwrap(),
            "udp://127.0.0.1:0".parse().unwrap(),
        )
        .bind()
        .await
        .unwrap();
        for (_, addr) in server.listeners() {
            println!("listening on {addr}");
        }
        server.run().await.unwrap();
        println!("server stopped");
    });
}

/// Kills the child if the test fails half-way.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_child() -> (ChildGuard, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "signal_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (ChildGuard(child), rx)
}

/// What follows `prefix` in the next line the child prints that has it
/// (the test harness may print `test signal_child ... ` before it).
fn expect_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("child never printed {prefix:?}"));
        if let Some(at) = line.find(prefix) {
            return line[at + prefix.len()..].to_string();
        }
    }
}

fn echo_tcp(conn: &mut TcpStream, text: &[u8]) {
    conn.write_all(text).unwrap();
    let mut got = vec![0u8; text.len()];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(got, text.to_ascii_uppercase());
}

fn stops_gracefully_on(signal: libc::c_int) {
    let (mut child, lines) = start_child();
    let addr = |url: String| -> SocketAddr {
        match url.parse::<ListenAddr>().unwrap() {
            ListenAddr::Tcp(a) | ListenAddr::Udp(a) => a,
            other => panic!("unexpected listener {other}"),
        }
    };
    let tcp = addr(expect_line(&lines, "listening on "));
    let udp = addr(expect_line(&lines, "listening on "));

    let mut conn = TcpStream::connect(tcp).unwrap();
    conn.set_read_timeout(Some(LIMIT)).unwrap();
    echo_tcp(&mut conn, b"before the signal");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(LIMIT)).unwrap();
    client.send_to(b"udp", udp).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"UDP");

    let pid = child.0.id() as libc::pid_t;
    // SAFETY: kill(2) with the pid of our own child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);

    // It stops accepting...
    let deadline = Instant::now() + LIMIT;
    while TcpStream::connect(tcp).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting after the signal"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...but the connected client is still served within the grace period.
    echo_tcp(&mut conn, b"after the signal");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "exited with a client still connected"
    );
    drop(conn);

    // Once it has gone, the server ends cleanly.
    assert_eq!(expect_line(&lines, "server stopped"), "");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the child did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    stops_gracefully_on(libc::SIGTERM);
}

#[test]
fn sigint_stops_the_server_gracefully() {
    stops_gracefully_on(libc::SIGINT);
}
