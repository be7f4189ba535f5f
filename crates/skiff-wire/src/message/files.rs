//! File transfer and management (PROTOCOL.md section 7).
//!
//! Paths are UTF-8 strings relative to the server root, `/`-separated; a
//! leading `/` means the root itself. Bulk data travels as [`Data`] frames
//! (the bytes are the frame body) closed by an [`End`] frame that carries the
//! whole-file digest, so no single frame is ever larger than a chunk.

use serde::{Deserialize, Serialize};

use super::phase;
use crate::ErrorMsg;

/// Which whole-file checksum closes a transfer. BLAKE3 is the default (fast,
/// parallel-friendly); SHA-256 exists for clients that only have a standard
/// library (Python's `hashlib`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlg {
    /// BLAKE3, 32-byte digest.
    #[default]
    Blake3,
    /// SHA-256, 32-byte digest.
    Sha256,
}

/// What kind of filesystem object an entry is. Symlinks are reported and
/// copied as links, never followed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    #[default]
    File,
    /// A directory.
    Dir,
    /// A symbolic link (its target is in [`Entry::target`]).
    Symlink,
    /// Anything else (device, socket, fifo): listed, never transferred.
    Other,
}

/// One filesystem object, as `stat` and `ls` describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// For `ls`: the path relative to the listed directory (`a/b` under
    /// `recursive`); for `stat`: the name of the object.
    pub path: String,
    /// File, directory, symlink or other.
    pub kind: EntryKind,
    /// Size in bytes (0 for directories).
    #[serde(default)]
    pub size: u64,
    /// Permission bits (`0o7777` mask).
    #[serde(default)]
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    #[serde(default)]
    pub mtime_ns: i64,
    /// The link's target, for symlinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Client to server: upload a file (then [`Data`]* and [`End`]) or create a
/// symlink (`kind: "symlink"`, no data).
///
/// The server answers [`Ready`] (or an error), and after the `end` frame
/// [`Done`] (or an error). Unless `resume` is set the client MAY send data
/// right after this header without waiting for `ready`; if the server
/// refuses, it discards that data up to the `end` frame.
///
/// A file upload must state its `size` (a missing size is refused rather
/// than taken as an empty file); a symlink needs its `target`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PutFields")]
pub struct Put {
    /// Destination path.
    pub path: String,
    /// `file` (default) or `symlink`.
    #[serde(default)]
    pub kind: EntryKind,
    /// Total size of the file in bytes.
    #[serde(default)]
    pub size: u64,
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
    /// Continue from the server's partial file; the client waits for
    /// `ready` and sends data from its `offset`.
    #[serde(default)]
    pub resume: bool,
    /// The link target, for `kind: "symlink"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// [`Put`] as it arrives, before the fields that depend on `kind` are
/// checked.
#[derive(Deserialize)]
struct PutFields {
    path: String,
    #[serde(default)]
    kind: EntryKind,
    size: Option<u64>,
    #[serde(default)]
    mode: Option<u32>,
    #[serde(default)]
    mtime_ns: Option<i64>,
    #[serde(default)]
    hash: HashAlg,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    resume: bool,
    #[serde(default)]
    target: Option<String>,
}

impl TryFrom<PutFields> for Put {
    type Error = String;

    fn try_from(f: PutFields) -> Result<Put, String> {
        let size = match (f.kind, f.size) {
            (EntryKind::File, None) => return Err("a file upload needs `size`".to_string()),
            (EntryKind::Symlink, _) if f.target.is_none() => {
                return Err("a symlink needs `target`".to_string())
            }
            (_, size) => size.unwrap_or(0),
        };
        Ok(Put {
            path: f.path,
            kind: f.kind,
            size,
            mode: f.mode,
            mtime_ns: f.mtime_ns,
            hash: f.hash,
            force: f.force,
            resume: f.resume,
            target: f.target,
        })
    }
}

/// Server to client: the upload may proceed; send data from `offset`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Bytes the server already holds (non-zero only when resuming).
    pub offset: u64,
}

/// Either direction: one chunk of file data, in the frame body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {}

/// Either direction: the data is complete. `digest` is the hex checksum of
/// the WHOLE file (from byte 0, also when resumed) and `size` its length.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// Total file size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Lowercase hex digest of the whole file.
    #[serde(default)]
    pub digest: String,
    /// The sender gave up (a local read error, or the receiver already
    /// refused); the receiver keeps what it has for a later resume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,
}

/// Server to client: the upload is verified, fsynced and in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Size stored.
    pub size: u64,
    /// Hex digest the server computed.
    pub digest: String,
}

/// Client to server: download a file, from byte `offset`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Get {
    /// Source path.
    pub path: String,
    /// First byte to send (the length of the client's partial file).
    #[serde(default)]
    pub offset: u64,
    /// Checksum the closing `end` carries.
    #[serde(default)]
    pub hash: HashAlg,
}

/// Server to client: the file about to be sent (then [`Data`]* and [`End`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHead {
    /// Size when the transfer started.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time (ns since the epoch).
    pub mtime_ns: i64,
    /// Where the data starts: the requested offset, or 0 when that offset
    /// was past the end of the file (the client then starts over).
    pub offset: u64,
}

/// Client to server: list a directory (or describe a single file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ls {
    /// Directory to list.
    pub path: String,
    /// Walk the whole tree (pre-order: a directory comes before its
    /// contents); symlinks are listed, never followed.
    #[serde(default)]
    pub recursive: bool,
    /// Only the entries beneath `path` whose relative path matches this
    /// glob, one component at a time (`*/x?.log`; `*` never crosses a
    /// `/`): how a client expands `HOST:logs/*.log` inside the root.
    /// `recursive` is ignored when a pattern is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// Server to client: a batch of [`Entry`] values as a JSON array in the
/// body; the last batch has `more: false`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entries {
    /// Further `entries` frames follow.
    pub more: bool,
}

/// Client to server: describe one path (without following a final symlink).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// The path.
    pub path: String,
}

/// Server to client: the answer to [`Stat`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatReply {
    /// The object.
    pub entry: Entry,
}

/// Client to server: remove a file or symlink (a directory needs
/// `recursive`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rm {
    /// The path.
    pub path: String,
    /// Remove a directory and everything in it.
    #[serde(default)]
    pub recursive: bool,
}

/// Client to server: create a directory. With `exist_ok` an existing
/// directory is fine and only gets `mode`/`mtime_ns` applied (how `put -r`
/// restores directory times after filling them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mkdir {
    /// The path.
    pub path: String,
    /// Create missing parents too.
    #[serde(default)]
    pub parents: bool,
    /// An existing directory is not an error.
    #[serde(default)]
    pub exist_ok: bool,
    /// Permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Modification time (ns since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
}

/// Client to server: rename `from` to `to` (into `to` when it is a
/// directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mv {
    /// Existing path.
    pub from: String,
    /// New path.
    pub to: String,
    /// Replace an existing file at `to`.
    #[serde(default)]
    pub force: bool,
}

/// Server to client: `rm`, `mkdir`, `mv` or a symlink `put` succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkReply {}

crate::messages!(
    Put => "put",
    Ready => "ready",
    Data => "data",
    End => "end",
    Done => "done",
    Get => "get",
    FileHead => "file",
    Ls => "ls",
    Entries => "entries",
    Stat => "stat",
    StatReply => "stat_ok",
    Rm => "rm",
    Mkdir => "mkdir",
    Mv => "mv",
    OkReply => "ok",
);

phase! {
    /// Client to server after a file `put` (unless refused while resuming):
    /// the file's data, closed by `end`.
    pub enum UploadData {
        /// A chunk of the file.
        Data(Data, body),
        /// The file is complete (or aborted).
        End(End),
    }
}

phase! {
    /// Server to client after a `file` head: the file's data, closed by
    /// `end`, or an `error` when reading failed part-way.
    pub enum DownloadData {
        /// A chunk of the file.
        Data(Data, body),
        /// The file is complete.
        End(End),
        /// The download failed; nothing more comes for this file.
        Error(ErrorMsg),
    }
}

phase! {
    /// Server to client: the answer to a files request (for `put`, each of
    /// its two answers; for `get`, its head; for `ls`, each batch).
    pub enum FilesReply {
        /// `rm`, `mkdir`, `mv` or a symlink `put` succeeded.
        Ok(OkReply),
        /// The upload may send data.
        Ready(Ready),
        /// An upload over several connections is open (`put_open`).
        Opened(super::streams::Opened),
        /// The upload is committed.
        Done(Done),
        /// The download starts; its data follows.
        File(FileHead),
        /// The answer to `stat`.
        StatOk(StatReply),
        /// A batch of `ls` entries (a JSON array in the body).
        Entries(Entries, with_body),
        /// The request failed.
        Error(ErrorMsg),
    }
}
