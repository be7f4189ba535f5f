//! The server over real loopback and Unix sockets: every stream listener
//! kind, the handler life cycle, the connection limit, idle timeouts,
//! graceful shutdown, panics, and Unix socket files.
//!
//! Every wait is bounded by `LIMIT`; a hang fails the test instead of
//! blocking the suite.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_net::{
    Connection, Datagram, DatagramHandler, DatagramSocket, ListenAddr, ListenerId, Server,
    ServerBuilder, ShutdownHandle, StreamHandler,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket, UnixStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The longest any single step may take before the test is failed.
const LIMIT: Duration = Duration::from_secs(10);

type Log = Arc<Mutex<Vec<String>>>;

/// A line-oriented test handler: answers each line upper-cased, and obeys a
/// few commands (`panic`, `slow`, `work`, `hang`, `wait-shutdown`,
/// `listener`). Records its life cycle in `log`. Over the connection limit
/// it answers `busy` when `busy_reply` is set, else keeps skiff-net's
/// default (close at once).
#[derive(Clone, Default)]
struct Lines {
    log: Log,
    fail_setup: bool,
    busy_reply: bool,
}

impl Lines {
    fn record(&self, event: impl Into<String>) {
        self.log.lock().unwrap().push(event.into());
    }
}

async fn read_line(conn: &mut Connection) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if conn.stream().read(&mut byte).await? == 0 {
            return Ok(None);
        }
        if byte[0] == b'\n' {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
        line.push(byte[0]);
    }
}

impl StreamHandler for Lines {
    async fn setup(&self, _conn: &mut Connection) -> io::Result<()> {
        self.record("setup");
        if self.fail_setup {
            return Err(io::Error::other("setup refused"));
        }
        Ok(())
    }

    async fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        self.record("handle");
        while let Some(line) = read_line(conn).await? {
            match line.as_str() {
                "panic" => panic!("handler asked to panic"),
                "slow" => {
                    conn.stream().write_all(b"started\n").await?;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    conn.stream().write_all(b"done\n").await?;
                }
                "work" => {
                    conn.stream().write_all(b"working\n").await?;
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                }
                "hang" => {
                    conn.stream().write_all(b"hanging\n").await?;
                    std::future::pending::<()>().await;
                }
                "listener" => {
                    let reply = format!("{}\n", conn.listener());
                    conn.stream().write_all(reply.as_bytes()).await?;
                }
                "wait-shutdown" => {
                    conn.stream().write_all(b"waiting\n").await?;
                    conn.shutdown_requested().await;
                    conn.stream().write_all(b"bye\n").await?;
                    return Ok(());
                }
                other => {
                    let reply = format!("{}\n", other.to_ascii_uppercase());
                    conn.stream().write_all(reply.as_bytes()).await?;
                }
            }
        }
        Ok(())
    }

    async fn finish(&self, _conn: &mut Connection, result: &io::Result<()>) {
        self.record(match result {
            Ok(()) => "finish ok".to_string(),
            Err(e) => format!("finish err {e}"),
        });
    }

    async fn reject_busy(&self, mut conn: Connection) {
        self.record("reject");
        if self.busy_reply {
            let _ = conn.stream().write_all(b"busy\n").await;
            let _ = conn.stream().close_gracefully().await;
        }
    }
}

fn busy_lines() -> Lines {
    Lines {
        busy_reply: true,
        ..Lines::default()
    }
}

struct Running {
    addrs: Vec<ListenAddr>,
    handle: ShutdownHandle,
    task: JoinHandle<io::Result<()>>,
}

async fn start(builder: ServerBuilder) -> Running {
    let server = builder.bind().await.unwrap();
    let addrs = server.listeners().map(|(_, addr)| addr.clone()).collect();
    let handle = server.shutdown_handle();
    let task = tokio::spawn(server.run());
    Running {
        addrs,
        handle,
        task,
    }
}

fn ip_addr(addr: &ListenAddr) -> std::net::SocketAddr {
    match addr {
        ListenAddr::Tcp(a) | ListenAddr::Udp(a) => *a,
        other => panic!("not an IP listener: {other}"),
    }
}

/// A client speaking lines over any stream.
struct Client<S> {
    io: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, line: &str) {
        timeout(LIMIT, self.io.write_all(format!("{line}\n").as_bytes()))
            .await
            .expect("write timed out")
            .unwrap();
    }

    /// The next line, or `None` at EOF (or a reset: the server closed).
    async fn line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match timeout(LIMIT, self.io.read(&mut byte))
                .await
                .expect("read timed out")
            {
                Ok(0) | Err(_) => return None,
                Ok(_) if byte[0] == b'\n' => {
                    return Some(String::from_utf8_lossy(&line).into_owned())
                }
                Ok(_) => line.push(byte[0]),
            }
        }
    }

    async fn ask(&mut self, line: &str) -> Option<String> {
        self.send(line).await;
        self.line().await
    }

    /// Reads until EOF; true if the server closed the connection in time.
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match timeout(LIMIT, self.io.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

async fn tcp_client(addr: &ListenAddr) -> Client<TcpStream> {
    let io = timeout(LIMIT, TcpStream::connect(ip_addr(addr)))
        .await
        .unwrap()
        .unwrap();
    Client { io }
}

async fn shut_down(server: Running) {
    server.handle.shutdown();
    timeout(LIMIT, server.task)
        .await
        .expect("run() did not return")
        .unwrap()
        .unwrap();
}

fn tcp(s: &str) -> ListenAddr {
    format!("tcp://{s}").parse().unwrap()
}

fn unix(path: &Path) -> ListenAddr {
    ListenAddr::Unix(path.to_path_buf())
}

/// Polls `cond` until it holds (bounded by `LIMIT`).
async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn tcp_on_ipv4_and_ipv6_loopback() {
    let server = start(
        Server::builder()
            .stream(tcp("127.0.0.1:0"), Lines::default())
            .stream(tcp("[::1]:0"), Lines::default()),
    )
    .await;
    assert!(ip_addr(&server.addrs[0]).is_ipv4());
    assert!(ip_addr(&server.addrs[1]).is_ipv6());
    for addr in &server.addrs {
        assert_ne!(ip_addr(addr).port(), 0, "the real port is reported");
        let mut c = tcp_client(addr).await;
        assert_eq!(c.ask("hello").await.as_deref(), Some("HELLO"));
        assert_eq!(c.ask("again").await.as_deref(), Some("AGAIN"));
    }
    shut_down(server).await;
}

#[tokio::test]
async fn listeners_are_named_by_id_whatever_their_kind_or_order() {
    let dir = tempfile::tempdir().unwrap();
    let lines = Arc::new(Lines::default());
    let mut builder = Server::builder();
    // A datagram listener first: ids follow the order of adding, not
    // "streams first".
    let udp = builder.add_datagram(
        "udp://127.0.0.1:0".parse().unwrap(),
        Arc::new(UpperDatagram),
    );
    let first = builder.add_stream(tcp("127.0.0.1:0"), lines.clone());
    let second = builder.add_stream(unix(&dir.path().join("id.sock")), lines);
    let server = builder.bind().await.unwrap();
    let ids: Vec<ListenerId> = server.listeners().map(|(id, _)| id).collect();
    assert_eq!(ids, [udp, first, second]);
    assert!(matches!(server.local_addr(udp), Some(ListenAddr::Udp(a)) if a.port() != 0));
    let tcp_addr = server.local_addr(first).unwrap().clone();
    assert!(matches!(tcp_addr, ListenAddr::Tcp(a) if a.port() != 0));
    assert_eq!(
        server.local_addr(second),
        Some(&unix(&dir.path().join("id.sock")))
    );
    assert_ne!(first.to_string(), second.to_string());
    let handle = server.shutdown_handle();
    let task = tokio::spawn(server.run());

    // A handler shared by two listeners learns which one a connection came in on.
    let mut c = tcp_client(&tcp_addr).await;
    assert_eq!(c.ask("listener").await, Some(first.to_string()));
    let mut u = Client {
        io: UnixStream::connect(dir.path().join("id.sock"))
            .await
            .unwrap(),
    };
    assert_eq!(u.ask("listener").await, Some(second.to_string()));
    drop((c, u));
    handle.shutdown();
    timeout(LIMIT, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn unix_stream_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let server = start(Server::builder().stream(unix(&path), Lines::default())).await;
    assert_eq!(server.addrs, vec![unix(&path)]);
    let mut c = Client {
        io: UnixStream::connect(&path).await.unwrap(),
    };
    assert_eq!(c.ask("unix").await.as_deref(), Some("UNIX"));
    drop(c);
    shut_down(server).await;
    assert!(!path.exists(), "the socket file is removed at shutdown");
}

struct UpperDatagram;

impl DatagramHandler for UpperDatagram {
    async fn handle(&self, datagram: Datagram<'_>, socket: &DatagramSocket) {
        let _ = socket
            .send_to(&datagram.data.to_ascii_uppercase(), &datagram.peer)
            .await;
    }
}

#[tokio::test]
async fn udp_listener_echoes_next_to_stream_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        Server::builder()
            .stream(tcp("127.0.0.1:0"), Lines::default())
            .stream(unix(&dir.path().join("u.sock")), Lines::default())
            .datagram("udp://127.0.0.1:0".parse().unwrap(), UpperDatagram),
    )
    .await;
    assert!(matches!(server.addrs[2], ListenAddr::Udp(_)));
    let udp_addr = ip_addr(&server.addrs[2]);
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 64];
    for msg in [&b"datagram"[..], b"", b"two"] {
        client.send_to(msg, udp_addr).await.unwrap();
        let (n, from) = timeout(LIMIT, client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, udp_addr);
        assert_eq!(&buf[..n], msg.to_ascii_uppercase().as_slice());
    }
    // The stream listeners of the same server work alongside.
    let mut c = tcp_client(&server.addrs[0]).await;
    assert_eq!(c.ask("tcp").await.as_deref(), Some("TCP"));
    drop(c);
    shut_down(server).await;
}

#[tokio::test]
async fn setup_handle_finish_run_in_order() {
    let lines = Lines::default();
    let log = lines.log.clone();
    let server = start(Server::builder().stream(tcp("127.0.0.1:0"), lines)).await;
    let mut c = tcp_client(&server.addrs[0]).await;
    assert_eq!(c.ask("x").await.as_deref(), Some("X"));
    drop(c);
    wait_for(|| log.lock().unwrap().len() == 3).await;
    assert_eq!(*log.lock().unwrap(), ["setup", "handle", "finish ok"]);

    // A failed setup skips handle; finish still runs, with the error.
    let refusing = Lines {
        fail_setup: true,
        ..Lines::default()
    };
    let log = refusing.log.clone();
    let server2 = start(Server::builder().stream(tcp("127.0.0.1:0"), refusing)).await;
    let mut c = tcp_client(&server2.addrs[0]).await;
    assert!(c.closed().await);
    wait_for(|| log.lock().unwrap().len() == 2).await;
    assert_eq!(*log.lock().unwrap(), ["setup", "finish err setup refused"]);
    shut_down(server).await;
    shut_down(server2).await;
}

/// Reads the handler's `busy` line and then EOF.
async fn expect_busy<S: AsyncRead + Unpin>(io: &mut S) {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\n") {
        let n = timeout(LIMIT, io.read(&mut buf))
            .await
            .expect("a busy client must not hang")
            .unwrap();
        assert!(n > 0, "closed before the busy line");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"busy\n");
    let n = timeout(LIMIT, io.read(&mut buf))
        .await
        .expect("closed right after the busy line")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing after the busy line");
}

#[tokio::test]
async fn connection_over_the_limit_gets_busy_and_a_freed_slot_is_reused() {
    let server = start(
        Server::builder()
            .stream(tcp("127.0.0.1:0"), busy_lines())
            .max_connections(2),
    )
    .await;
    let addr = &server.addrs[0];
    let mut a = tcp_client(addr).await;
    let mut b = tcp_client(addr).await;
    assert_eq!(a.ask("a").await.as_deref(), Some("A"));
    assert_eq!(b.ask("b").await.as_deref(), Some("B"));

    // One over the limit: told busy and closed at once.
    let mut c = tcp_client(addr).await;
    expect_busy(&mut c.io).await;
    // Even one that already sent a request (its unread bytes must not turn
    // the close into a reset that loses the busy frame).
    let mut d = tcp_client(addr).await;
    d.io.write_all(&[b'x'; 100_000][..]).await.ok();
    expect_busy(&mut d.io).await;

    // The two served clients were not disturbed.
    assert_eq!(a.ask("still").await.as_deref(), Some("STILL"));

    // A slot frees up: a new client is served (the server notices the
    // close asynchronously, so a first attempt may still be told busy).
    drop(b);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let mut e = tcp_client(addr).await;
        if e.ask("e").await.as_deref() == Some("E") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(a);
    shut_down(server).await;
}

#[tokio::test]
async fn by_default_a_connection_over_the_limit_is_closed_without_a_word() {
    let lines = Lines::default();
    let log = lines.log.clone();
    let server = start(
        Server::builder()
            .stream(tcp("127.0.0.1:0"), lines)
            .max_connections(1),
    )
    .await;
    let addr = &server.addrs[0];
    let mut a = tcp_client(addr).await;
    assert_eq!(a.ask("a").await.as_deref(), Some("A"));
    let mut b = tcp_client(addr).await;
    let mut buf = [0u8; 64];
    let n = timeout(LIMIT, b.io.read(&mut buf))
        .await
        .expect("an over-the-limit client is closed at once")
        .unwrap_or(0);
    assert_eq!(
        n, 0,
        "the default writes nothing: skiff-net has no protocol"
    );
    assert!(log.lock().unwrap().contains(&"reject".to_string()));
    assert_eq!(a.ask("still").await.as_deref(), Some("STILL"));
    drop((a, b));
    shut_down(server).await;
}

#[tokio::test]
async fn busy_over_a_unix_socket_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sock");
    let server = start(
        Server::builder()
            .stream(unix(&path), busy_lines())
            .max_connections(1),
    )
    .await;
    let mut a = Client {
        io: UnixStream::connect(&path).await.unwrap(),
    };
    assert_eq!(a.ask("a").await.as_deref(), Some("A"));
    let mut b = UnixStream::connect(&path).await.unwrap();
    b.write_all(b"hello\n").await.unwrap();
    expect_busy(&mut b).await;
    drop(a);
    shut_down(server).await;
}

#[tokio::test]
async fn idle_timeout_closes_a_silent_peer_but_not_a_talking_one() {
    let lines = Lines::default();
    let log = lines.log.clone();
    let server = start(
        Server::builder()
            .stream(tcp("127.0.0.1:0"), lines)
            .idle_timeout(Some(Duration::from_millis(700))),
    )
    .await;
    let mut talking = tcp_client(&server.addrs[0]).await;
    let mut silent = tcp_client(&server.addrs[0]).await;
    let started = tokio::time::Instant::now();
    // Talk every 100 ms for well over the timeout.
    for i in 0..12 {
        assert_eq!(talking.ask(&format!("t{i}")).await, Some(format!("T{i}")));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(silent.closed().await, "the silent peer was closed");
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(talking.ask("alive").await.as_deref(), Some("ALIVE"));
    wait_for(|| log.lock().unwrap().iter().any(|e| e.contains("idle"))).await;
    drop(talking);
    shut_down(server).await;
}

#[tokio::test]
async fn time_the_server_spends_working_is_not_held_against_the_peer() {
    let server = start(
        Server::builder()
            .stream(tcp("127.0.0.1:0"), Lines::default())
            .idle_timeout(Some(Duration::from_millis(600))),
    )
    .await;
    let mut c = tcp_client(&server.addrs[0]).await;
    // The handler works for 1.2 s without touching the socket, then waits
    // for the next line, which comes 0.1 s later: the peer was never idle
    // for 0.6 s while the server waited for it.
    assert_eq!(c.ask("work").await.as_deref(), Some("working"));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(c.ask("after").await.as_deref(), Some("AFTER"));
    drop(c);
    shut_down(server).await;
}

async fn wait_for_refused(addr: &ListenAddr) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match TcpStream::connect(ip_addr(addr)).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return,
            _ => {
                assert!(tokio::time::Instant::now() < deadline, "still accepting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_a_running_request_finish() {
    let server = start(Server::builder().stream(tcp("127.0.0.1:0"), Lines::default())).await;
    let addr = server.addrs[0].clone();
    let mut busy = tcp_client(&addr).await;
    let mut polite = tcp_client(&addr).await;
    assert_eq!(busy.ask("slow").await.as_deref(), Some("started"));
    assert_eq!(
        polite.ask("wait-shutdown").await.as_deref(),
        Some("waiting")
    );

    let started = tokio::time::Instant::now();
    server.handle.shutdown();
    // The request in progress completes; the handler watching for shutdown
    // says goodbye and returns.
    assert_eq!(busy.line().await.as_deref(), Some("done"));
    assert_eq!(polite.line().await.as_deref(), Some("bye"));
    assert!(polite.closed().await);
    // No new connections: the listener is closed.
    wait_for_refused(&addr).await;
    drop(busy);
    timeout(LIMIT, server.task).await.unwrap().unwrap().unwrap();
    // run() returned as soon as the connections ended, well inside the
    // default 10 s grace period.
    assert!(started.elapsed() < Duration::from_secs(9));
}

#[tokio::test]
async fn a_handler_that_never_ends_is_cut_at_the_grace_period() {
    let server = start(
        Server::builder()
            .stream(tcp("127.0.0.1:0"), Lines::default())
            .grace_period(Duration::from_millis(300)),
    )
    .await;
    let mut c = tcp_client(&server.addrs[0]).await;
    assert_eq!(c.ask("hang").await.as_deref(), Some("hanging"));
    let started = tokio::time::Instant::now();
    server.handle.shutdown();
    assert!(c.closed().await, "closed after the grace period");
    timeout(LIMIT, server.task).await.unwrap().unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// Collects what a log subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// Single-threaded runtime: the connection tasks run on this thread, so the
// thread-local log subscriber sees them.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_handler_is_logged_and_the_server_goes_on() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = start(
        Server::builder()
            .stream(tcp("127.0.0.1:0"), Lines::default())
            .max_connections(1),
    )
    .await;
    let mut bad = tcp_client(&server.addrs[0]).await;
    bad.send("panic").await;
    assert!(bad.closed().await, "the panicking connection is closed");
    // Its slot was released (limit 1), and the server serves others.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let mut good = tcp_client(&server.addrs[0]).await;
        if good.ask("fine").await.as_deref() == Some("FINE") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("connection handler panicked"), "log: {log}");
    assert!(log.contains("handler asked to panic"), "log: {log}");
    shut_down(server).await;
}

#[tokio::test]
async fn a_stale_unix_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    // A crashed server leaves its socket file behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = start(Server::builder().stream(unix(&path), Lines::default())).await;
    let mut c = Client {
        io: UnixStream::connect(&path).await.unwrap(),
    };
    assert_eq!(c.ask("fresh").await.as_deref(), Some("FRESH"));
    drop(c);
    shut_down(server).await;
}

#[tokio::test]
async fn a_live_unix_socket_is_refused_with_addr_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.sock");
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = Server::builder()
        .stream(unix(&path), Lines::default())
        .bind()
        .await
        .err()
        .expect("binding over a live socket must fail");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    assert!(err.to_string().contains("live.sock"), "{err}");
    // The live server still owns its socket.
    let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    assert!(live.accept().is_ok());
}

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precious.txt");
    std::fs::write(&path, b"keep me").unwrap();
    let err = Server::builder()
        .stream(unix(&path), Lines::default())
        .bind()
        .await
        .err()
        .expect("binding over a regular file must fail");
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[tokio::test]
async fn a_failed_bind_leaves_no_socket_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.sock");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = Server::builder()
        .stream(unix(&first), Lines::default())
        .stream(
            tcp(&taken.local_addr().unwrap().to_string()),
            Lines::default(),
        )
        .bind()
        .await
        .err()
        .expect("the second address is taken");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    assert!(
        !first.exists(),
        "the first listener's socket file was removed"
    );
}
