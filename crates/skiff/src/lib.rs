//! skiff: authenticated remote command execution and file transfer.
//!
//! Data flows one way: socket -> (TLS) -> frames -> [`session`] ->
//! [`service`] -> OS (process, filesystem) and back. A service never touches
//! sockets or TLS; the frame layer ([`skiff_wire`]) never touches the
//! filesystem. [`client`] holds the same operations from the client side, and
//! [`cli`] only wires things together.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod fanout;
pub mod keys;
mod maybe;
pub mod policy;
pub mod serve_config;
pub mod server;
pub mod service;
pub mod session;
pub mod sync;
pub mod target;
pub mod transfer;
pub mod users;
