//! A socketserver-style server framework for tokio.
//!
//! Python's `socketserver` lets a beginner write a concurrent server by
//! subclassing one handler class. This crate is the same idea for tokio,
//! with the parts a real service needs and a tutorial leaves out:
//!
//! - one [`Server`] listening on any mix of `tcp://`, `unix://`, `udp://` and
//!   `unixgram://` addresses ([`ListenAddr`]);
//! - a [`StreamHandler`] (setup / handle / finish, one tokio task per
//!   connection) and a [`DatagramHandler`];
//! - a connection limit (over it, a client gets a `busy` error frame and is
//!   closed at once), idle timeouts, graceful shutdown on SIGINT/SIGTERM,
//!   `SO_REUSEADDR`, `TCP_NODELAY`, IPv6, panics contained to their
//!   connection, and safe replacement of stale Unix socket files.
//!
//! ```no_run
//! use skiff_net::{Connection, ListenAddr, Server, StreamHandler};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! struct Upper;
//! impl StreamHandler for Upper {
//!     async fn handle(&self, conn: &mut Connection) -> std::io::Result<()> {
//!         let mut buf = [0u8; 1024];
//!         loop {
//!             let n = conn.stream().read(&mut buf).await?;
//!             if n == 0 { return Ok(()); }
//!             buf[..n].make_ascii_uppercase();
//!             conn.stream().write_all(&buf[..n]).await?;
//!         }
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let server = Server::builder()
//!     .stream("tcp://127.0.0.1:9999".parse::<ListenAddr>()?, Upper)
//!     .bind()
//!     .await?;
//! server.run().await
//! # }
//! ```

mod addr;
mod datagram;
mod handler;
mod listener;
mod server;
mod stream;

pub use addr::{ListenAddr, PeerAddr};
pub use datagram::{Datagram, DatagramSocket};
pub use handler::{Connection, DatagramHandler, StreamHandler};
pub use server::{Server, ServerBuilder, ShutdownHandle};
pub use stream::Stream;
