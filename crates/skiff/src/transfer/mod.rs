//! What both ends of a file transfer share: checksums, the disk pipelines
//! that overlap hashing and I/O with the network, path rules, metadata and
//! the mapping of OS errors to protocol error codes.
//!
//! The server's `files` service and the client's file commands are mirror
//! images (an upload on one side is a download on the other), so the pieces
//! that must behave identically live here once.

pub(crate) mod checksum;
pub(crate) mod chunk_pool;
pub(crate) mod commit;
pub(crate) mod durable;
pub(crate) mod errors;
pub(crate) mod fault;
pub mod glob;
pub(crate) mod links;
pub(crate) mod meta;
pub mod names;
pub(crate) mod partfile;
pub(crate) mod pipeline;
pub(crate) mod staging;
pub(crate) mod tree_recv;
pub(crate) mod tree_send;
pub(crate) mod unnamed;

/// Bytes of file data per `data` frame: large enough that per-frame costs
/// (headers, channel hand-offs, syscalls) vanish, small enough that a few
/// chunks in flight keep memory far below the 64 MiB budget.
pub const CHUNK: usize = 1024 * 1024;

/// Chunks buffered between the network task and the disk thread in each
/// direction: the disk and the network overlap, and memory stays bounded
/// at about `WINDOW * CHUNK` per transfer.
pub const WINDOW: usize = 4;

/// How long a client waits for the next frame of a transfer before it
/// gives up on the server (the server has its own, configurable idle
/// timeout).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The client's wait for the next frame of a transfer: [`IDLE_TIMEOUT`],
/// or the shorter one a test sets with `SKIFF_TEST_IDLE_TIMEOUT_MS` (debug
/// builds only) to prove the wait is bounded without waiting two minutes.
pub fn idle_timeout() -> std::time::Duration {
    fault::idle_timeout().unwrap_or(IDLE_TIMEOUT)
}
