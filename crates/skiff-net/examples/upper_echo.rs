//! The tutorial's upper-case echo server, over TCP and UDP at once.
//!
//! ```sh
//! cargo run -p skiff-net --example upper_echo            # tcp://127.0.0.1:9999 + udp://127.0.0.1:8080
//! nc 127.0.0.1 9999       # type a line, get it back in capitals
//! nc -u 127.0.0.1 8080    # the same over UDP, one datagram per line
//! ```
//!
//! Other addresses: `upper_echo TCP_URL UDP_URL` (port 0 picks a free one).
//! Ctrl-C or SIGTERM stops it gracefully: no new clients, connected ones get
//! five seconds to finish. A client beyond the 100th at once is told
//! `busy, try again later` and closed (skiff-net's default would close it
//! without a word).
//!
//! Everything a server built on skiff-net needs is here: a stream handler,
//! a datagram handler, a refusal in the program's own protocol, the
//! builder's limits and timeouts, and the bound addresses by listener id.

use std::time::Duration;

use skiff_net::{
    Connection, Datagram, DatagramHandler, DatagramSocket, ListenAddr, Server, ServerBuilder,
    StreamHandler,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One connection: echo every chunk upper-cased until the client closes.
pub struct UpperStream;

impl StreamHandler for UpperStream {
    async fn handle(&self, conn: &mut Connection) -> std::io::Result<()> {
        let mut buf = [0u8; 1024];
        loop {
            let n = conn.stream().read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            buf[..n].make_ascii_uppercase();
            conn.stream().write_all(&buf[..n]).await?;
        }
    }

    /// Over the limit: say so in this protocol's terms (a line), then close
    /// so that the client reads the line before EOF.
    async fn reject_busy(&self, mut conn: Connection) {
        let _ = conn.stream().write_all(b"busy, try again later\n").await;
        let _ = conn.stream().close_gracefully().await;
    }
}

/// One datagram in, the same upper-cased back to its sender.
pub struct UpperDatagram;

impl DatagramHandler for UpperDatagram {
    async fn handle(&self, datagram: Datagram<'_>, socket: &DatagramSocket) {
        let reply = datagram.data.to_ascii_uppercase();
        let _ = socket.send_to(&reply, &datagram.peer).await;
    }
}

/// The whole server, ready to bind (the tests use it too).
pub fn upper_echo(tcp: ListenAddr, udp: ListenAddr) -> ServerBuilder {
    Server::builder()
        .stream(tcp, UpperStream)
        .datagram(udp, UpperDatagram)
        .max_connections(100)
        .idle_timeout(Some(Duration::from_secs(300)))
        .grace_period(Duration::from_secs(5))
        .shutdown_on_signals(true)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let tcp = args
        .next()
        .unwrap_or("tcp://127.0.0.1:9999".into())
        .parse()?;
    let udp = args
        .next()
        .unwrap_or("udp://127.0.0.1:8080".into())
        .parse()?;
    let server = upper_echo(tcp, udp).bind().await?;
    for (_, addr) in server.listeners() {
        println!("listening on {addr}");
    }
    server.run().await
}
