//! One large file over several connections (PROTOCOL.md section 7,
//! "put over several streams"): one connection opens the upload and sends
//! the first range, the others join it by its id and send theirs.
//!
//! The file's whole-file digest still closes the upload on the opening
//! connection, so a range that was corrupted or never arrived fails the
//! upload as a whole.

use serde::{Deserialize, Serialize};

use super::files::HashAlg;

/// Client to server: start an upload of `size` bytes to `path` whose
/// ranges arrive on several connections. This connection sends the first
/// range, `[0, length)`, as `data` frames right away; the closing `end`
/// (whole-file size and digest) comes once every other range was answered.
///
/// Answered [`Opened`] (or an error; its data is then discarded up to
/// `end`), and after `end` with `done` or an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutOpen {
    /// Destination path.
    pub path: String,
    /// Total size of the file in bytes.
    pub size: u64,
    /// The length of the range this connection sends, from byte 0.
    pub length: u64,
    /// How many connections the client will use (this one included).
    pub streams: u32,
    /// Permission bits to give the file; default 0o644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Modification time to give the file (ns since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// Checksum the closing `end` carries.
    #[serde(default)]
    pub hash: HashAlg,
    /// Replace an existing destination.
    #[serde(default)]
    pub force: bool,
}

/// Server to client: the upload is open; other connections of the same
/// user join it with this id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    /// 128 random bits, lowercase hex: unguessable, and only the user who
    /// opened the upload can join it.
    pub id: String,
}

/// Client to server: send the range `[offset, offset + length)` of the
/// upload `id` on this connection (its `data` frames follow, then an `end`
/// whose `size` is `length`). Answered `ready` (or an error; the data is
/// then discarded up to `end`), and after `end` with `ok` once the range
/// is written, or an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutJoin {
    /// The id from [`Opened`].
    pub id: String,
    /// The range's first byte.
    pub offset: u64,
    /// The range's length (at least 1).
    pub length: u64,
}

crate::messages!(PutOpen => "put_open", Opened => "opened", PutJoin => "put_join");
