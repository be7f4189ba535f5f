//! The datagram side of skiff-net: UDP and Unix datagram listeners, replies
//! through `DatagramSocket::send_to`, and truncation reported (the
//! tutorial's "UDP loses data when the buffer is short", made visible).

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_net::{Datagram, DatagramHandler, DatagramSocket, ListenAddr, Server, ShutdownHandle};
use tokio::net::{UdpSocket, UnixDatagram};

const WAIT: Duration = Duration::from_secs(5);

/// Answers every datagram with `"<len> <kept> <truncated>"`, and remembers
/// errors from replying.
#[derive(Default)]
struct Describe {
    send_errors: Mutex<Vec<io::ErrorKind>>,
}

impl DatagramHandler for Describe {
    async fn handle(&self, d: Datagram<'_>, socket: &DatagramSocket) {
        let msg = format!("{} {} {}", d.len, d.data.len(), d.truncated());
        if let Err(e) = socket.send_to(msg.as_bytes(), &d.peer).await {
            self.send_errors.lock().unwrap().push(e.kind());
        }
    }
}

async fn start(
    addr: &str,
    buffer: usize,
    handler: Arc<Describe>,
) -> (
    ListenAddr,
    ShutdownHandle,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    let mut builder = Server::builder().datagram_buffer(buffer);
    let id = builder.add_datagram(addr.parse().unwrap(), handler);
    let server = builder.bind().await.unwrap();
    let local = server.local_addr(id).unwrap().clone();
    let stop = server.shutdown_handle();
    (local, stop, tokio::spawn(server.run()))
}

async fn stop(handle: ShutdownHandle, task: tokio::task::JoinHandle<io::Result<()>>) {
    handle.shutdown();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}

/// A server on `DIR/server.sock` with a [`Describe`] handler.
async fn start_unixgram(
    dir: &std::path::Path,
    buffer: usize,
) -> (
    std::path::PathBuf,
    Arc<Describe>,
    ShutdownHandle,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    let path = dir.join("server.sock");
    let handler = Arc::new(Describe::default());
    let url = format!("unixgram://{}", path.display());
    let (local, handle, task) = start(&url, buffer, handler.clone()).await;
    assert_eq!(local, ListenAddr::UnixDatagram(path.clone()));
    (path, handler, handle, task)
}

async fn udp_ask(client: &UdpSocket, payload: &[u8]) -> String {
    client.send(payload).await.unwrap();
    let mut buf = [0u8; 128];
    let n = tokio::time::timeout(WAIT, client.recv(&mut buf))
        .await
        .expect("reply in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn udp_reports_real_length_of_truncated_datagrams() {
    let handler = Arc::new(Describe::default());
    let (local, handle, task) = start("udp://127.0.0.1:0", 32, handler).await;
    let ListenAddr::Udp(addr) = local else {
        panic!("not udp: {local}")
    };
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(addr).await.unwrap();
    assert_eq!(udp_ask(&client, b"").await, "0 0 false");
    assert_eq!(udp_ask(&client, &[7; 10]).await, "10 10 false");
    assert_eq!(udp_ask(&client, &[7; 32]).await, "32 32 false");
    assert_eq!(udp_ask(&client, &[7; 33]).await, "33 32 true");
    assert_eq!(udp_ask(&client, &[7; 60000]).await, "60000 32 true");
    // Message boundaries hold: the next small datagram is whole again.
    assert_eq!(udp_ask(&client, b"abc").await, "3 3 false");
    stop(handle, task).await;
}

#[tokio::test]
async fn unix_datagram_round_trip_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (path, handler, handle, task) = start_unixgram(dir.path(), 16).await;
    let client = UnixDatagram::bind(dir.path().join("client.sock")).unwrap();
    client.connect(&path).unwrap();
    for (payload, want) in [
        (&b""[..], "0 0 false"),
        (&[1u8; 16][..], "16 16 false"),
        (&[1u8; 17][..], "17 16 true"),
        (&[1u8; 5000][..], "5000 16 true"),
    ] {
        client.send(payload).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, client.recv(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), want);
    }
    assert!(handler.send_errors.lock().unwrap().is_empty());
    stop(handle, task).await;
    assert!(!path.exists(), "socket file removed at shutdown");
}

#[tokio::test]
async fn unnamed_unix_sender_cannot_be_answered_and_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (path, handler, handle, task) = start_unixgram(dir.path(), 64).await;
    let unnamed = UnixDatagram::unbound().unwrap();
    unnamed.send_to(b"who am i", &path).await.unwrap();
    // The named client's answer proves the unnamed datagram was handled
    // first (one datagram at a time, in order).
    let named = UnixDatagram::bind(dir.path().join("named.sock")).unwrap();
    named.send_to(b"hello", &path).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, named.recv(&mut buf))
        .await
        .expect("reply in time")
        .unwrap();
    assert_eq!(&buf[..n], b"5 5 false");
    assert_eq!(
        *handler.send_errors.lock().unwrap(),
        vec![io::ErrorKind::AddrNotAvailable]
    );
    stop(handle, task).await;
}

#[tokio::test]
async fn recv_from_reports_truncation_and_peer_directly() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    let socket = DatagramSocket::Udp(server);
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(&[9u8; 100], addr).await.unwrap();
    client.send_to(&[8u8; 4], addr).await.unwrap();
    let mut buf = [0u8; 10];
    let d = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.len, d.data, d.truncated()), (100, &[9u8; 10][..], true));
    assert_eq!(d.peer.ip(), Some(client.local_addr().unwrap().ip()));
    assert_eq!(
        d.peer.to_string(),
        client.local_addr().unwrap().to_string(),
        "peer is the sender's address and port"
    );
    // The cut datagram's tail is gone; the next one is intact.
    let d = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.len, d.data, d.truncated()), (4, &[8u8; 4][..], false));
    // A zero-length buffer still learns the size.
    client.send_to(&[1u8; 7], addr).await.unwrap();
    let d = tokio::time::timeout(WAIT, socket.recv_from(&mut []))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.len, d.data.len(), d.truncated()), (7, 0, true));
}

#[tokio::test]
async fn udp_over_ipv6_when_available() {
    let Ok(server) = UdpSocket::bind("[::1]:0").await else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    let addr = server.local_addr().unwrap();
    let socket = DatagramSocket::Udp(server);
    let client = UdpSocket::bind("[::1]:0").await.unwrap();
    client.send_to(b"six", addr).await.unwrap();
    let mut buf = [0u8; 8];
    let d = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"six");
    assert_eq!(
        d.peer,
        skiff_net::PeerAddr::Ip(client.local_addr().unwrap())
    );
    socket.send_to(b"back", &d.peer).await.unwrap();
    let n = tokio::time::timeout(WAIT, client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"back");
}

#[tokio::test]
async fn stale_unixgram_file_is_replaced_but_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    // A socket file left behind by a dead server.
    drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
    assert!(path.exists());
    let url = format!("unixgram://{}", path.display());
    let (_, handle, task) = start(&url, 64, Arc::new(Describe::default())).await;
    // Now it is alive: a second server must refuse to take it over.
    let mut second = Server::builder();
    second.add_datagram(url.parse().unwrap(), Arc::new(Describe::default()));
    let err = match second.bind().await {
        Ok(_) => panic!("bound over a live socket"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    stop(handle, task).await;
}

#[tokio::test]
async fn datagram_address_registered_as_stream_is_refused() {
    struct Nothing;
    impl skiff_net::StreamHandler for Nothing {
        async fn handle(&self, _: &mut skiff_net::Connection) -> io::Result<()> {
            Ok(())
        }
    }
    let err = match Server::builder()
        .stream("udp://127.0.0.1:0".parse().unwrap(), Nothing)
        .bind()
        .await
    {
        Ok(_) => panic!("udp accepted as a stream listener"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}
