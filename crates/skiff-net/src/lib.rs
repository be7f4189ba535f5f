//! A socketserver-style server framework for tokio.
//!
//! Python's `socketserver` lets a beginner write a concurrent server by
//! subclassing one handler class. This crate is the same idea for tokio,
//! with the parts a real service needs and a tutorial leaves out. It knows
//! nothing of any wire format: a handler gets a byte stream (or a datagram)
//! and a peer address, and speaks whatever protocol it likes.
//!
//! - one [`Server`] listening on any mix of `tcp://`, `unix://`, `udp://` and
//!   `unixgram://` addresses ([`ListenAddr`]), each named by a
//!   [`ListenerId`];
//! - a [`StreamHandler`] (setup / handle / finish, one tokio task per
//!   connection) and a [`DatagramHandler`] (one datagram at a time);
//! - a connection limit: one connection over it is closed at once, unless
//!   the handler's [`StreamHandler::reject_busy`] answers it first in its
//!   own protocol;
//! - optional caps on connections still in their handshake, per source and
//!   in total with random early drop ([`StartupLimits`], OpenSSH's
//!   `MaxStartups`), counted apart from established connections;
//! - idle timeouts ([`Stream`]), graceful shutdown on SIGINT/SIGTERM or a
//!   [`ShutdownHandle`], `SO_REUSEADDR`, `TCP_NODELAY`, IPv6, panics
//!   contained to their connection, safe replacement of stale Unix socket
//!   files, and datagram truncation reported ([`Datagram::truncated`]).
//!
//! # Building a server
//!
//! A line-based upper-case echo over TCP and a Unix socket, which tells a
//! client over the limit `busy` in its own words, and prints where each
//! listener ended up (port 0 picks a free port):
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use skiff_net::{Connection, Server, StreamHandler};
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! struct Upper;
//!
//! impl StreamHandler for Upper {
//!     async fn handle(&self, conn: &mut Connection) -> std::io::Result<()> {
//!         let mut lines = BufReader::new(conn.stream()).lines();
//!         while let Some(line) = lines.next_line().await? {
//!             let reply = format!("{}\n", line.to_ascii_uppercase());
//!             lines.get_mut().write_all(reply.as_bytes()).await?;
//!         }
//!         Ok(())
//!     }
//!
//!     // Without this, a client over the limit is simply closed.
//!     async fn reject_busy(&self, mut conn: Connection) {
//!         let _ = conn.stream().write_all(b"busy, try again later\n").await;
//!         let _ = conn.stream().close_gracefully().await;
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let handler = Arc::new(Upper);
//! let mut builder = Server::builder()
//!     .max_connections(100)
//!     .idle_timeout(Some(Duration::from_secs(60)))
//!     .shutdown_on_signals(true);
//! let tcp = builder.add_stream("tcp://127.0.0.1:0".parse()?, handler.clone());
//! let unix = builder.add_stream("unix:///tmp/upper.sock".parse()?, handler);
//! let server = builder.bind().await?;
//! println!("tcp on {}", server.local_addr(tcp).unwrap());
//! println!("unix on {}", server.local_addr(unix).unwrap());
//! server.run().await // until SIGINT/SIGTERM, then a graceful drain
//! # }
//! ```
//!
//! `examples/upper_echo.rs` is a complete program (TCP and UDP at once)
//! that the crate's own signal tests run.
//!
//! # Life cycle
//!
//! Per connection: [`StreamHandler::setup`], then
//! [`handle`](StreamHandler::handle), then
//! [`finish`](StreamHandler::finish) with `handle`'s result (also after a
//! failed `setup`). On shutdown, listeners close at once, Unix socket files
//! are removed, running handlers get the grace period
//! ([`Connection::shutdown_requested`] tells them), and what is left is
//! dropped. A handler shared by several listeners tells them apart by
//! [`Connection::listener`].

#![warn(missing_docs)]

mod addr;
mod datagram;
mod handler;
mod listener;
mod server;
mod startup;
mod stream;

pub use addr::{ListenAddr, PeerAddr};
pub use datagram::{Datagram, DatagramSocket};
pub use handler::{Connection, DatagramHandler, StreamHandler};
pub use listener::ListenerId;
pub use server::{Server, ServerBuilder, ShutdownHandle};
pub use startup::{Busy, Established, Source, Startup, StartupLimits};
pub use stream::Stream;
