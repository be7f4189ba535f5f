//! File commands from the client side: `put`, `get` (single files and
//! trees, pipelined, resumable, verified) and the small remote operations.
//!
//! The client is as careful as the server: everything it writes locally
//! during `get` goes through a directory capability, names the server sends
//! are checked component by component, and symlinks are never followed
//! while creating files.

pub mod dest;
pub mod download;
pub mod progress;
pub mod relay;
pub mod remote;
pub mod remote_glob;
pub mod sources;
pub mod streams;
mod tree_get;
mod tree_put;
pub mod upload;

use skiff_wire::message::files::{FilesReply, HashAlg};
use skiff_wire::message::Phase;
use skiff_wire::{ErrorCode, ErrorMsg};

use super::ClientError;
use tokio::sync::mpsc;

use crate::session::{SessionError, SessionReader, SessionWriter};
use crate::transfer::idle_timeout;

/// How a transfer behaves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Copy directory trees.
    pub recursive: bool,
    /// Continue from partial files left by an interrupted transfer.
    pub resume: bool,
    /// Replace existing destination files.
    pub force: bool,
    /// Whole-file checksum to use.
    pub hash: HashAlg,
    /// How to show progress.
    pub progress: progress::ProgressKind,
    /// What the progress display calls this transfer (a file or tree name).
    pub label: String,
    /// Name each file on stderr as it is done (`-v`).
    pub verbose: bool,
    /// Send a large single file over several connections (`--streams`);
    /// `None`: one.
    pub streams: Option<streams::Streams>,
}

/// One file (or directory, or link) that could not be transferred; the
/// rest of a tree goes on.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The protocol code, when the server (or a local check with the same
    /// meaning) gave one.
    pub code: ErrorCode,
    /// What happened and what to do.
    pub message: String,
}

impl From<ErrorMsg> for Failure {
    fn from(m: ErrorMsg) -> Failure {
        Failure {
            code: m.code,
            message: m.message,
        }
    }
}

/// What a transfer did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Files transferred completely.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// What failed.
    pub failures: Vec<Failure>,
}

impl Summary {
    /// Adds what another source did.
    pub fn absorb(&mut self, other: Summary) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.failures.extend(other.failures);
    }

    /// Counts one file's outcome.
    pub fn count(&mut self, r: Result<u64, Failure>) {
        match r {
            Ok(size) => {
                self.files += 1;
                self.bytes += size;
            }
            Err(f) => self.failures.push(f),
        }
    }

    /// Records a source that failed as a whole, when the failure is that
    /// source's own (refused by the server, or a local error); any other
    /// error (the session broke) is returned, since nothing more can go.
    pub fn fail(&mut self, e: ClientError) -> Result<(), ClientError> {
        match e {
            ClientError::Remote(m) => self.failures.push(m.into()),
            ClientError::Local(message) => self.failures.push(Failure {
                code: ErrorCode::Internal,
                message,
            }),
            other => return Err(other),
        }
        Ok(())
    }
}

/// Joins a remote directory path and a relative path.
pub fn remote_join(dir: &str, rel: &str) -> String {
    let d = dir.trim_end_matches('/');
    if rel.is_empty() {
        return if d.is_empty() { "/".into() } else { d.into() };
    }
    format!("{d}/{rel}")
}

/// The next message of phase `P`, within the idle timeout; a closed
/// connection is an error here.
pub(crate) async fn recv_msg<P: Phase>(reader: &mut SessionReader<'_>) -> Result<P, ClientError> {
    let wait = idle_timeout();
    match tokio::time::timeout(wait, reader.recv_msg::<P>()).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ClientError::Session(SessionError::Timeout(wait))),
    }
}

/// A reply that is not the `expected` one: an `error` becomes this item's
/// [`Failure`]; anything else is a protocol error that ends the session.
pub(crate) fn failure_or_protocol(
    reply: FilesReply,
    expected: &'static str,
) -> Result<Failure, ClientError> {
    match reply {
        FilesReply::Error(m) => Ok(m.into()),
        other => Err(ClientError::Session(SessionError::Unexpected {
            expected,
            got: other.op().to_string(),
        })),
    }
}

/// Hands the reader task what to expect next. When its queue is full, the
/// answers it waits for may still sit in our write buffer: flush, then wait.
pub(crate) async fn hand_to_reader<T>(
    writer: &mut SessionWriter<'_>,
    tx: &mpsc::Sender<T>,
    item: T,
) -> Result<(), ClientError> {
    match tx.try_send(item) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(item)) => {
            writer.flush().await?;
            tx.send(item)
                .await
                .map_err(|_| ClientError::Session(SessionError::Closed))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            Err(ClientError::Session(SessionError::Closed))
        }
    }
}
