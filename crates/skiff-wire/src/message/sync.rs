//! Tree synchronisation (PROTOCOL.md section 8, docs/SYNC.md).
//!
//! After [`SyncRequest`] and [`SyncReady`] the session belongs to the sync until
//! [`SyncSummary`]. One side is the *receiver* (it holds the destination)
//! and the other the *sender* (it holds the source); which is which
//! follows from `push`. The receiver describes what it has; the sender
//! merges that with its own list and sends what differs. List and
//! signature traffic is asked for by the sender ([`SyncMore`],
//! [`SyncSigReq`]), so the receiver never sends more than was asked and
//! neither side needs unbounded buffers.

use serde::{Deserialize, Serialize};

use super::phase;
use crate::{ErrorCode, ErrorMsg};

/// Client to server: start a sync of the server path `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The directory on the server (the root when empty or `/`).
    pub path: String,
    /// `true`: the client sends, the server's `path` is the destination;
    /// `false`: the server sends, `path` is the source.
    pub push: bool,
    /// Compare files by BLAKE3 instead of size and mtime.
    #[serde(default)]
    pub checksum: bool,
    /// Remove destination paths the source lacks (after everything else).
    #[serde(default)]
    pub delete: bool,
    /// zstd-compress data chunks that shrink.
    #[serde(default)]
    pub compress: bool,
    /// Report what would change; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Exclude patterns (gitignore lines) given on the client's command
    /// line; the sender applies them with the source's `.skiffignore`s.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Push only: build the new tree beside the destination and exchange
    /// the two in one step at the end (`skiff sync --atomic`). Left out
    /// when false, so older servers see the request they know.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub atomic: bool,
}

/// Server to client: the sync is accepted; role traffic follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReady {
    /// The server will apply the push atomically (it was asked and
    /// supports it). A server that does not know `atomic` leaves this
    /// out, and the client then stops before anything is sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub atomic: bool,
}

/// Receiver to sender, first role frame: the destination root as a file
/// list entry (JSON), absent when it does not exist yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRoot {
    /// Mode of the destination root, if it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Its mtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// The receiver takes [`SyncFiles`] batches. Left out when false, so
    /// a receiver that does not know them is sent files one by one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files: bool,
}

/// Sender to receiver: send the next batch of the destination list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMore {}

/// Receiver to sender: one batch of the destination list in list order,
/// in the compact binary form (PROTOCOL.md, `skiff_sync::list`) and
/// zstd-compressed in the body; `done` on the last (possibly empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncList {
    /// No batch follows.
    pub done: bool,
    /// Length of the batch once decompressed.
    pub raw: u32,
}

/// Sender to receiver: describe the chunks of your copy of `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSigReq {
    /// A file of the destination list.
    pub path: String,
}

/// Receiver to sender: the signature of the old copy. The body is 36
/// bytes per chunk, in file order: u32 big-endian length, 32-byte BLAKE3.
/// `missing` when the file cannot be read (the sender sends it whole).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSig {
    /// Length of the old copy.
    pub size: u64,
    /// FastCDC minimum chunk size.
    pub min: u32,
    /// FastCDC average chunk size (a power of two).
    pub avg: u32,
    /// FastCDC maximum chunk size.
    pub max: u32,
    /// The file could not be described.
    #[serde(default)]
    pub missing: bool,
}

/// Sender to receiver: create (or replace) directory `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMkdir {
    /// The directory.
    pub path: String,
    /// Final permission bits (applied by the later [`SyncMeta`]).
    pub mode: u32,
    /// Something else (file, symlink) is there and goes.
    #[serde(default)]
    pub replace: bool,
}

/// Sender to receiver: make `path` a symlink to `target`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSymlink {
    /// The link.
    pub path: String,
    /// Its target, which must resolve inside the destination.
    pub target: String,
    /// Something is there and is replaced.
    #[serde(default)]
    pub replace: bool,
}

/// Sender to receiver: a file follows as [`SyncCopy`] / [`SyncData`]
/// steps closed by [`SyncEnd`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncFile {
    /// The file.
    pub path: String,
    /// Its size.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime_ns: i64,
    /// The receiver's old copy is the basis of copy steps.
    #[serde(default)]
    pub update: bool,
    /// Something of another kind is there and is replaced.
    #[serde(default)]
    pub replace: bool,
}

/// One file of a [`SyncFiles`] batch: a new file, or one replacing an
/// entry of another kind, sent whole (no old copy is its basis).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncBatchFile {
    /// The file.
    pub path: String,
    /// Its size: its bytes are the next `size` bytes of the batch.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime_ns: i64,
    /// BLAKE3 (hex) of its content, checked before it becomes visible.
    pub hash: String,
    /// Something of another kind is there and is replaced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
}

/// Sender to receiver: many small files sent whole in one frame, instead
/// of a [`SyncFile`], a [`SyncData`] and a [`SyncEnd`] each. The body is
/// their bytes, one after another in the order of `files`; with `raw`
/// the body is zstd and expands to exactly `raw` bytes. Bounded:
/// [`SyncFiles::MAX_FILES`] files, [`SyncFiles::MAX_FILE`] bytes each,
/// [`SyncFiles::MAX_BYTES`] in all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncFiles {
    /// The files, in body order.
    pub files: Vec<SyncBatchFile>,
    /// Uncompressed length of the body when it is compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<u32>,
}

impl SyncFiles {
    /// Files in one batch, at most.
    pub const MAX_FILES: usize = 256;
    /// Size of one file in a batch, at most (a larger one goes as
    /// `sync_file`).
    pub const MAX_FILE: u64 = 256 * 1024;
    /// The files' bytes in one batch (uncompressed), at most.
    pub const MAX_BYTES: u64 = 1024 * 1024;
}

/// Sender to receiver: copy `size` bytes at `offset` of the old copy.
/// (`len` is the frame layer's, so the length is `size`.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCopy {
    /// Offset in the old copy.
    pub offset: u64,
    /// Number of bytes.
    pub size: u64,
}

/// Sender to receiver: literal bytes in the body; with `raw` the body is
/// zstd and expands to exactly `raw` bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncData {
    /// Uncompressed length when the body is compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<u32>,
}

/// Sender to receiver: the file is complete; `hash` is the BLAKE3 (hex) of
/// the whole new file, which the receiver checks before committing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEnd {
    /// Whole-file digest.
    pub hash: String,
    /// The sender could not read the file to its end: discard it.
    #[serde(default)]
    pub abort: bool,
}

/// Sender to receiver: set the mode and mtime of `path` (a file whose
/// content is unchanged, or a directory whose contents are done).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMeta {
    /// The path (`""` is the destination root).
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime_ns: i64,
}

/// Sender to receiver: remove `path`. `forced`: it is inside a directory
/// being replaced by a file, so it goes now; otherwise it is a `--delete`
/// and waits until everything else succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncDelete {
    /// The path.
    pub path: String,
    /// A directory (removed only once empty).
    #[serde(default)]
    pub dir: bool,
    /// Part of a replacement.
    #[serde(default)]
    pub forced: bool,
}

/// Why a [`SyncNote`] path is left alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoteKind {
    /// Excluded: never replaced or deleted at the destination.
    #[default]
    Protect,
    /// A destination directory holding excluded entries cannot become a
    /// file or link without deleting them; counts as a failure.
    Conflict,
}

/// Sender to receiver: a path that is left alone, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncNote {
    /// The path.
    pub path: String,
    /// Why.
    pub what: NoteKind,
}

/// Receiver to sender, unsolicited: applying `path` failed (the sync goes
/// on; deletes are then skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncFailed {
    /// The path.
    pub path: String,
    /// Why (`checksum_mismatch`, `path_escape`, `conflict`, ...).
    pub code: ErrorCode,
    /// For humans.
    pub message: String,
}

/// Sender to receiver: everything was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncFinish {
    /// Source entries examined.
    pub checked: u64,
    /// Total size of the source's files.
    pub total_size: u64,
    /// Source paths that could not be read (deletes are then skipped,
    /// since the source list is incomplete).
    pub source_errors: u64,
}

/// Receiver to sender, last frame of the sync: what happened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSummary {
    /// Source entries examined.
    pub checked: u64,
    /// Entries created or changed (files, directories, links).
    pub changed: u64,
    /// Files whose data was sent and committed.
    #[serde(default)]
    pub files_sent: u64,
    /// Entries deleted.
    pub deleted: u64,
    /// Entries that failed.
    pub failed: u64,
    /// Total size of the source's files.
    pub total_size: u64,
    /// Literal file bytes received (their size after decompression).
    pub literal_bytes: u64,
    /// File bytes reused from old copies.
    pub matched_bytes: u64,
    /// Literal bytes as they travelled (after compression).
    pub literal_wire_bytes: u64,
    /// Why deletes were skipped, if they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_skipped: Option<String>,
    /// With `atomic`: `exchanged` (the new tree replaced the old one in
    /// one step), `unchanged` (nothing differed, no exchange) or `kept`
    /// (something failed; the destination is still the old tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atomic: Option<String>,
}

crate::messages!(
    SyncRequest => "sync",
    SyncReady => "sync_ready",
    SyncRoot => "sync_root",
    SyncMore => "sync_more",
    SyncList => "sync_list",
    SyncSigReq => "sync_sig_req",
    SyncSig => "sync_sig",
    SyncMkdir => "sync_mkdir",
    SyncSymlink => "sync_symlink",
    SyncFile => "sync_file",
    SyncCopy => "sync_copy",
    SyncData => "sync_data",
    SyncEnd => "sync_end",
    SyncFiles => "sync_files",
    SyncMeta => "sync_meta",
    SyncDelete => "sync_delete",
    SyncNote => "sync_note",
    SyncFailed => "sync_failed",
    SyncFinish => "sync_finish",
    SyncSummary => "sync_summary",
);

phase! {
    /// What the receiver reads during a sync: the sender's requests and
    /// changes, in order. `Finish` is the last.
    pub enum ToReceiver {
        /// Send the next list batch.
        More(SyncMore),
        /// Describe the old copy of a file.
        SigReq(SyncSigReq),
        /// Create a directory.
        Mkdir(SyncMkdir),
        /// Create a symlink.
        Symlink(SyncSymlink),
        /// A file follows (steps, then `End`).
        File(SyncFile),
        /// Copy from the old copy.
        Copy(SyncCopy),
        /// Literal bytes.
        Data(SyncData, with_body),
        /// The file is complete.
        End(SyncEnd),
        /// Small files, whole.
        Files(SyncFiles, with_body),
        /// Set mode and mtime.
        Meta(SyncMeta),
        /// Remove a path.
        Delete(SyncDelete),
        /// A path left alone.
        Note(SyncNote),
        /// Everything was sent.
        Finish(SyncFinish),
        /// The sender gave up.
        Error(ErrorMsg),
    }
}

phase! {
    /// What the sender reads during a sync: answers to what it asked, and
    /// failure notices. `Summary` (or `Error`) is the last.
    pub enum ToSender {
        /// The destination root.
        Root(SyncRoot),
        /// A list batch (compressed records in the body).
        List(SyncList, with_body),
        /// A signature (36-byte records in the body).
        Sig(SyncSig, with_body),
        /// Applying a path failed.
        Failed(SyncFailed),
        /// The end of the sync.
        Summary(SyncSummary),
        /// The receiver gave up.
        Error(ErrorMsg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Frame;

    /// Every message encodes: none defines a field the frame layer owns
    /// (`op`, `len`).
    #[test]
    fn every_message_is_a_valid_frame() {
        fn enc<M: crate::Message>(m: M) {
            let mut buf = bytes::BytesMut::new();
            crate::encode_frame(&m, b"", &mut buf).unwrap_or_else(|e| panic!("{}: {e}", M::OP));
        }
        enc(SyncRequest::default());
        enc(SyncReady::default());
        enc(SyncRoot::default());
        enc(SyncMore::default());
        enc(SyncList::default());
        enc(SyncSigReq::default());
        enc(SyncSig::default());
        enc(SyncMkdir::default());
        enc(SyncSymlink::default());
        enc(SyncFile::default());
        enc(SyncCopy::default());
        enc(SyncData::default());
        enc(SyncEnd::default());
        enc(SyncFiles {
            files: vec![SyncBatchFile::default()],
            raw: Some(1),
        });
        enc(SyncMeta::default());
        enc(SyncDelete::default());
        enc(SyncNote::default());
        enc(SyncFailed {
            path: String::new(),
            code: ErrorCode::Internal,
            message: String::new(),
        });
        enc(SyncFinish::default());
        enc(SyncSummary::default());
    }

    #[test]
    fn phases_read_their_frames() {
        let f = Frame::from_message(
            &SyncData { raw: Some(3) },
            bytes::Bytes::from_static(b"xyz"),
        )
        .unwrap();
        assert_eq!(
            ToReceiver::from_frame(f).unwrap(),
            ToReceiver::Data((SyncData { raw: Some(3) }, bytes::Bytes::from_static(b"xyz")))
        );
        let f = Frame::from_message(
            &SyncFailed {
                path: "a".into(),
                code: ErrorCode::PathEscape,
                message: "m".into(),
            },
            bytes::Bytes::new(),
        )
        .unwrap();
        assert!(matches!(
            ToSender::from_frame(f).unwrap(),
            ToSender::Failed(SyncFailed {
                code: ErrorCode::PathEscape,
                ..
            })
        ));
        let f = Frame::from_message(&SyncMore {}, bytes::Bytes::new()).unwrap();
        assert!(
            ToSender::from_frame(f).is_err(),
            "sync_more goes the other way"
        );
        let f = Frame::from_message(
            &SyncNote {
                path: "p".into(),
                what: NoteKind::Conflict,
            },
            bytes::Bytes::new(),
        )
        .unwrap();
        assert!(String::from_utf8_lossy(f.header()).contains(r#""what":"conflict""#));
    }
}
