//! Trees as one stream, in either direction (PROTOCOL.md section 7,
//! "put_tree" and "get_tree").
//!
//! A `put -r` of many files as separate `put` requests costs a `ready`, a
//! `done` and three frames per file, and a window counted in requests ties
//! its speed to the round-trip time. A tree upload instead sends entries
//! back to back under a window counted in bytes: small files travel whole,
//! many to a frame ([`TreeFiles`]); large ones as a [`TreeFile`] head, then
//! `data` frames and an `end`. The server answers asynchronously, in
//! batches ([`TreeAck`]), each after the batch is durable.
//!
//! A tree download (`get_tree`) is the same stream the other way round:
//! the server sends the entries, the client writes them and answers with
//! `tree_ack`s, under a window the client granted.

use serde::{Deserialize, Serialize};

use super::files::{Data, End, HashAlg};
use super::phase;
use crate::{ErrorCode, ErrorMsg};

/// Client to server: start a tree upload. Answered by [`TreeReady`] (or an
/// error, after which the client sends nothing more for it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutTree {
    /// Replace existing files (never directories).
    #[serde(default)]
    pub force: bool,
    /// The checksum each file carries.
    #[serde(default)]
    pub hash: HashAlg,
}

/// Client to server: send the tree beneath `path` as a stream of entries
/// (the same frames a `put_tree` carries, server to client), keeping at
/// most `window` bytes unacknowledged. Answered by [`TreeReady`] (with
/// the window the server will use) or an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetTree {
    /// The directory to send.
    pub path: String,
    /// The checksum each file carries.
    #[serde(default)]
    pub hash: HashAlg,
    /// The window the client grants, in bytes.
    pub window: u64,
}

/// The receiver of a tree to its sender: send entries; at most `window` bytes of them may be
/// unacknowledged at any time (see [`TreeAck`] for how they are counted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeReady {
    /// The window, in bytes.
    pub window: u64,
}

/// Client to server: create a directory (an existing one is fine) and
/// apply `mode` and `mtime_ns` when given. Sent with them after the
/// directory's contents, since filling a directory changes its mtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeDir {
    /// The entry's number, unique within the tree upload.
    pub id: u64,
    /// Path under the server root.
    pub path: String,
    /// Permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Modification time (ns since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
}

/// One file of a tree upload. In a [`TreeFiles`] batch it carries its
/// `digest` and its bytes are the next `size` bytes of the body; as a
/// `tree_file` head (a large file) its data follows in `data` frames
/// closed by an `end` that carries the digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeFile {
    /// The entry's number, unique within the tree upload.
    pub id: u64,
    /// Path under the server root.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// Permission bits; default 0o644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Modification time (ns since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// Lowercase hex digest of the whole file (in a batch only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
}

/// Client to server: whole small files; the body is their bytes, one
/// after another, in the order of `files`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeFiles {
    /// The files, in body order.
    pub files: Vec<TreeFile>,
}

/// Client to server: create a symlink (same rules as a symlink `put`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeLink {
    /// The entry's number, unique within the tree upload.
    pub id: u64,
    /// Path under the server root.
    pub path: String,
    /// The link's target.
    pub target: String,
}

/// Client to server: no more entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEnd {}

/// One entry that failed, and why: inside a [`TreeAck`], or on its own
/// (`tree_failure`) when the sender could not read an entry; the receiver
/// then answers that entry as failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeFailure {
    /// The entry's number.
    pub id: u64,
    /// What went wrong.
    pub code: ErrorCode,
    /// For the user.
    pub message: String,
}

/// Receiver to sender: entries finished. Every entry is answered exactly
/// once, in `done` or in `failed`; a file in `done` is verified, in place
/// and durable (it survives a crash of the server). Each answered entry
/// gives back its size plus [`TreeAck::ENTRY_COST`] bytes of the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeAck {
    /// Entries that succeeded.
    #[serde(default)]
    pub done: Vec<u64>,
    /// Entries that failed.
    #[serde(default)]
    pub failed: Vec<TreeFailure>,
}

impl TreeAck {
    /// What an entry costs in the window beyond its bytes, so that the
    /// number of unanswered entries is bounded too.
    pub const ENTRY_COST: u64 = 1024;
}

/// Server to client: the tree upload is over (after `tree_end`, once
/// every entry was answered); the session goes on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeDone {
    /// Files stored.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Entries that failed.
    pub failed: u64,
}

crate::messages!(
    PutTree => "put_tree",
    GetTree => "get_tree",
    TreeFailure => "tree_failure",
    TreeReady => "tree_ready",
    TreeDir => "tree_dir",
    TreeFile => "tree_file",
    TreeFiles => "tree_files",
    TreeLink => "tree_link",
    TreeEnd => "tree_end",
    TreeAck => "tree_ack",
    TreeDone => "tree_done",
);

phase! {
    /// Sender to receiver during a tree transfer (client to server for
    /// `put_tree`, server to client for `get_tree`).
    pub enum TreeInput {
        /// A directory.
        Dir(TreeDir),
        /// Whole small files (their bytes are the body).
        Files(TreeFiles, with_body),
        /// A large file's head; `data` frames and an `end` follow.
        File(TreeFile),
        /// A chunk of the current large file.
        Data(Data, body),
        /// The current large file is complete (or aborted).
        End(End),
        /// A symlink.
        Link(TreeLink),
        /// An entry the sender could not read.
        Failure(TreeFailure),
        /// No more entries.
        Finish(TreeEnd),
    }
}

phase! {
    /// Receiver to sender during a tree transfer (`tree_done` only from a
    /// server that received a `put_tree`).
    pub enum TreeOutput {
        /// The transfer may start.
        Ready(TreeReady),
        /// Entries answered.
        Ack(TreeAck),
        /// Everything answered.
        Done(TreeDone),
        /// The tree transfer as a whole was refused or failed.
        Error(ErrorMsg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Frame;

    fn roundtrip(msg: &impl crate::Message, body: &[u8]) -> Frame {
        let mut wire = bytes::BytesMut::new();
        crate::encode_frame(msg, body, &mut wire).unwrap();
        crate::FrameDecoder::new()
            .decode(&mut wire)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_batch_of_files_carries_its_bytes() {
        let files = TreeFiles {
            files: vec![TreeFile {
                id: 3,
                path: "a/b".into(),
                size: 2,
                digest: "00".into(),
                ..Default::default()
            }],
        };
        let got = TreeInput::from_frame(roundtrip(&files, b"hi")).unwrap();
        assert_eq!(
            got,
            TreeInput::Files((files, bytes::Bytes::from_static(b"hi")))
        );
    }

    #[test]
    fn acks_read_back() {
        let ack = TreeAck {
            done: vec![1, 2],
            failed: vec![TreeFailure {
                id: 4,
                code: ErrorCode::Exists,
                message: "x".into(),
            }],
        };
        assert_eq!(
            TreeOutput::from_frame(roundtrip(&ack, b"")).unwrap(),
            TreeOutput::Ack(ack)
        );
    }
}
