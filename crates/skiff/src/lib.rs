//! skiff: authenticated remote command execution and file transfer.
//!
//! Data flows one way: socket -> (TLS) -> frames -> [`session`] ->
//! [`service`] -> OS (process, filesystem) and back. A service never touches
//! sockets or TLS; the frame layer ([`skiff_wire`]) never touches the
//! filesystem. [`client`] holds the same operations from the client side, and
//! [`cli`] only wires things together.

pub(crate) mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub(crate) mod fanout;
pub mod keys;
mod maybe;
pub(crate) mod policy;
pub(crate) mod serve_config;
pub(crate) mod server;
pub mod service;
pub mod session;
pub(crate) mod sync;
pub mod target;
pub mod transfer;
pub mod users;
