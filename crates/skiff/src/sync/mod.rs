//! `sync` over a session: the two roles of the algorithm in `skiff-sync`,
//! shared by client and server. Whichever end holds the source runs
//! [`sender::run`]; the end holding the destination runs
//! [`receiver::run`]. The client and the server only differ in who sends
//! the `sync` request (`client::sync`, `service::sync`) and in where a
//! receiver stages new files ([`apply::Stager`]).
//!
//! Each role is split in two: an async pump that owns the session
//! ([`link`]: it reads frames into typed messages and writes the frames
//! handed to it, both through bounded channels) and blocking work
//! (walking, hashing, chunking, disk) on other threads, so TLS, disk and
//! hashing overlap and every queue is bounded. See docs/SYNC.md.

pub mod apply;
pub mod atomic;
pub mod batch;
pub mod deferred;
pub mod disk;
pub mod link;
pub mod pack;
pub mod receiver;
pub mod sender;
pub mod sigcache;
pub mod signer;

use std::sync::Arc;
use std::time::Duration;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use skiff_wire::message::sync::SyncSummary;
use skiff_wire::{ErrorCode, ErrorMsg};

use crate::session::SessionError;
use crate::transfer::meta::MODE_MASK;

/// How long either role waits for the peer's next frame. Generous: with
/// `--checksum` a peer may hash a large file between two frames.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(600);

/// The wait for the peer's next frame: [`PEER_TIMEOUT`], or in debug
/// builds `SKIFF_TEST_SYNC_PEER_TIMEOUT_MS` when set, so a test can show
/// that a peer that stops answering ends the sync with a timeout instead
/// of waiting ten minutes. A release binary ignores the variable.
pub fn peer_timeout() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("SKIFF_TEST_SYNC_PEER_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    PEER_TIMEOUT
}

/// Entries per `sync_list` batch: small enough that a batch's JSON stays
/// well under the frame body limit (1000 paths of 4 KiB are 4 MiB), large
/// enough that the list costs few frames.
pub const LIST_BATCH: usize = 1000;

/// Most exclude patterns a request may carry (each is compiled).
pub const MAX_EXCLUDES: usize = 1000;

/// What the user asked for (the flags of `skiff sync`).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Compare files by BLAKE3 rather than size and mtime.
    pub checksum: bool,
    /// Remove destination paths the source lacks.
    pub delete: bool,
    /// zstd on data chunks.
    pub compress: bool,
    /// Report only.
    pub dry_run: bool,
    /// Command-line exclude patterns (gitignore syntax).
    pub excludes: Vec<String>,
    /// Switch the destination from the old tree to the new one in one
    /// step (`sync::atomic`).
    pub atomic: bool,
}

/// Something worth telling the user, as it happens (`-i`, `-n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A change: `+` new, `~` changed, `.` metadata only, `-` deleted.
    Change {
        /// The marker.
        mark: char,
        /// The path, relative to the tree (directories end in `/`).
        path: String,
    },
    /// A path left alone because it is excluded at the destination.
    Protected(String),
    /// Source entries examined so far (the sender's walk; for the
    /// progress display).
    Checked(u64),
    /// A file's data starts travelling: `size` bytes of new content.
    Sending {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// `n` more bytes of the file being sent were sent (literal) or
    /// reused (copied from the old copy).
    Progress(u64),
    /// A path that could not be synced, and why.
    Failed {
        /// The path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Where events go (printing on the client; nowhere on the server).
pub type Events = Arc<dyn Fn(Event) + Send + Sync>;

/// No reporting.
pub fn no_events() -> Events {
    Arc::new(|_| {})
}

/// Why a sync stopped as a whole (single paths fail on their own and are
/// counted in the summary instead).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The session failed or the peer broke the protocol.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The peer's file list or signature is not acceptable (unsorted,
    /// bad names, bad parameters).
    #[error("{0}")]
    BadList(String),
    /// Local I/O that the whole sync depends on (opening the tree).
    #[error("{0}")]
    Local(String),
}

impl SyncError {
    /// The protocol code to send the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            SyncError::Session(e) => e.code(),
            SyncError::BadList(_) => ErrorCode::BadFrame,
            SyncError::Local(_) => ErrorCode::Internal,
        }
    }

    /// The error frame that tells the peer this sync is over.
    pub fn to_msg(&self) -> ErrorMsg {
        ErrorMsg::new(self.code(), format!("sync stopped: {self}"))
    }
}

impl From<SyncError> for SessionError {
    fn from(e: SyncError) -> SessionError {
        match e {
            SyncError::Session(s) => s,
            other => SessionError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// The outcome of a sync as the client reports it (`--stats`, `--json`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Source entries examined.
    pub files_checked: u64,
    /// Entries created or changed (files, directories, links).
    pub files_changed: u64,
    /// Files whose data was sent (new or changed content).
    pub files_sent: u64,
    /// Entries deleted.
    pub deleted: u64,
    /// Entries that failed.
    pub failed: u64,
    /// Total size of the source's files.
    pub total_size: u64,
    /// Literal file bytes (uncompressed) sent.
    pub literal_bytes: u64,
    /// File bytes reused from the destination's old copies.
    pub matched_bytes: u64,
    /// Literal bytes as they travelled (after compression).
    pub literal_wire_bytes: u64,
    /// Frame bytes this end sent.
    pub bytes_sent: u64,
    /// Frame bytes this end received.
    pub bytes_received: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Nothing was changed (dry run).
    pub dry_run: bool,
    /// Why deletes were skipped, if they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_skipped: Option<String>,
    /// With `--atomic`: `exchanged`, `unchanged` or `kept` (docs/SYNC.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atomic: Option<String>,
}

impl Report {
    /// The receiver's summary plus this end's wire counters.
    pub fn new(s: &SyncSummary, counters: &link::Counters, seconds: f64, dry_run: bool) -> Report {
        use std::sync::atomic::Ordering::Relaxed;
        Report {
            files_checked: s.checked,
            files_changed: s.changed,
            files_sent: s.files_sent,
            deleted: s.deleted,
            failed: s.failed,
            total_size: s.total_size,
            literal_bytes: s.literal_bytes,
            matched_bytes: s.matched_bytes,
            literal_wire_bytes: s.literal_wire_bytes,
            bytes_sent: counters.sent.load(Relaxed),
            bytes_received: counters.received.load(Relaxed),
            seconds,
            dry_run,
            delete_skipped: s.delete_skipped.clone(),
            atomic: s.atomic.clone(),
        }
    }
}

/// Patterns of the command line as one rule set.
pub fn global_rules(excludes: &[String]) -> Result<skiff_sync::Rules, String> {
    if excludes.len() > MAX_EXCLUDES {
        return Err(format!(
            "{} exclude patterns, at most {MAX_EXCLUDES} are accepted",
            excludes.len()
        ));
    }
    skiff_sync::Rules::parse("", excludes.iter().map(String::as_str), "--exclude")
        .map_err(|e| e.to_string())
}

/// An entry as both lists carry it: permission bits only (setuid, setgid
/// and sticky bits are never carried, as with `put`), so that the two
/// sides compare what the receiver can actually set.
pub fn comparable(mut e: skiff_sync::Entry) -> skiff_sync::Entry {
    e.mode &= MODE_MASK;
    e
}

/// Adds the BLAKE3 of a file entry's content (`--checksum`), read
/// without following a final symlink; left out when the file cannot be
/// read, so it counts as changed.
pub fn with_hash(root: &cap_std::fs::Dir, mut e: skiff_sync::Entry) -> skiff_sync::Entry {
    if e.kind == skiff_sync::Kind::File {
        let mut oo = cap_std::fs::OpenOptions::new();
        oo.read(true).follow(FollowSymlinks::No);
        e.hash = root
            .open_with(&e.path, &oo)
            .ok()
            .and_then(|f| skiff_sync::parallel::hash_reader(f.into_std()).ok())
            .map(|(h, _)| h);
    }
    e
}
