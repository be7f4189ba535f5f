//! Small whole files, many to a frame (`sync_files`, PROTOCOL.md section
//! 8): the sender's [`Pack`] gathers new files (and files replacing an
//! entry of another kind) that have no old copy to be a basis, reading
//! and hashing each whole; the receiver's [`unpack`] checks a batch as a
//! unit before any of it is handed to the disk thread.
//!
//! Why: sent one by one, each such file costs three frames (`sync_file`,
//! `sync_data`, `sync_end`), three JSON headers to write, parse and
//! dispatch, and a message each through the receiver's inbox. A tree of
//! small files then spends more on frames than on its data; one frame per
//! [`SyncFiles::MAX_FILES`] files or [`SyncFiles::MAX_BYTES`] bytes is
//! what `put -r`'s `tree_files` costs.
//!
//! Each file is still checked on its own at the receiver (size and
//! whole-file BLAKE3 before it becomes visible, `super::disk`) and a
//! failure is still reported per file (`sync_failed`); only a batch whose
//! header does not describe its body (sizes that do not add up, bounds
//! passed, a bad or repeated path) ends the sync, as any malformed frame.

use std::collections::HashSet;

use bytes::Bytes;
use skiff_sync::compress::{decompress, Compressor};
use skiff_wire::message::sync::{SyncBatchFile, SyncFiles};
use skiff_wire::Frame;

use super::{link, SyncError};
use crate::transfer::chunk_pool::ChunkPool;

/// A batch is sent before its header would pass this many bytes (frame
/// headers are limited to 64 KiB, and paths may be long).
const MAX_HEADER: usize = 48 * 1024;

/// Header bytes per file besides its path (field names, numbers, hash).
const FILE_HEADER: usize = 160;

/// The small files gathered for one `sync_files` frame (sender side).
/// Bodies are read into buffers recycled once the session has written
/// them (`transfer::chunk_pool`, as `put -r`'s batches): a fresh 1 MiB
/// per batch would be faulted in page by page each time.
#[derive(Default)]
pub struct Pack {
    files: Vec<SyncBatchFile>,
    body: Vec<u8>,
    header: usize,
    pool: ChunkPool,
}

impl Pack {
    /// Whether a file of `size` bytes travels in a batch at all.
    pub fn takes(size: u64) -> bool {
        size <= SyncFiles::MAX_FILE
    }

    /// Whether a file of `size` bytes named `path` still fits this batch
    /// (otherwise send the batch first).
    pub fn has_room(&self, path: &str, size: u64) -> bool {
        self.files.len() < SyncFiles::MAX_FILES
            && self.body.len() as u64 + size <= SyncFiles::MAX_BYTES
            && self.header + path.len() + FILE_HEADER <= MAX_HEADER
    }

    /// Whether it holds no file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether it should be sent now: no file could be added.
    pub fn is_full(&self) -> bool {
        self.files.len() >= SyncFiles::MAX_FILES
            || self.body.len() as u64 >= SyncFiles::MAX_BYTES
            || self.header + FILE_HEADER >= MAX_HEADER
    }

    /// The buffer the next file's bytes are read into (appended to the
    /// body); [`add`](Self::add) then describes them, or
    /// [`truncate`](Self::truncate) drops them.
    pub fn body(&mut self) -> &mut Vec<u8> {
        if self.body.capacity() == 0 {
            self.body = self.pool.buffer(SyncFiles::MAX_BYTES as usize);
        }
        &mut self.body
    }

    /// Length of the body so far (where the next file starts).
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Drops the body's bytes from `at` on (a file that could not be read
    /// whole).
    pub fn truncate(&mut self, at: usize) {
        self.body.truncate(at);
    }

    /// Adds a file whose `file.size` bytes were just appended to the body.
    pub fn add(&mut self, file: SyncBatchFile) {
        self.header += file.path.len() + FILE_HEADER;
        self.files.push(file);
    }

    /// The batch as a frame (compressed with `compressor` when that
    /// shrinks it), and its literal bytes; the pack is empty again.
    pub fn take(
        &mut self,
        compressor: Option<&mut Compressor>,
    ) -> Result<Option<(Frame, u64)>, SyncError> {
        if self.files.is_empty() {
            return Ok(None);
        }
        let files = std::mem::take(&mut self.files);
        self.header = 0;
        let raw = self.body.len() as u64;
        let (raw_len, body) = match compressor.and_then(|c| c.compress(&self.body)) {
            Some(z) => {
                // The plain bytes stay here: the next batch reuses them.
                self.body.clear();
                (u32::try_from(raw).ok(), Bytes::from(z))
            }
            None => (None, self.pool.lend(std::mem::take(&mut self.body))),
        };
        let head = SyncFiles {
            files,
            raw: raw_len,
        };
        Ok(Some((link::frame(&head, body)?, raw)))
    }
}

/// A batch that breaks the rules (the sync ends with `bad_frame`).
fn bad(why: impl std::fmt::Display) -> SyncError {
    SyncError::BadList(format!("sync_files: {why}"))
}

/// Checks a received batch and cuts its body into its files' bytes (each
/// a slice of the one body, no copy). Refused as a whole, before anything
/// of it is written: more than [`SyncFiles::MAX_FILES`] files, a file
/// over [`SyncFiles::MAX_FILE`], more than [`SyncFiles::MAX_BYTES`] in
/// all, a compressed body that does not expand to exactly `raw`, sizes
/// that do not add up to the body, a path that is not a plain relative
/// path, or a path given twice.
pub fn unpack(head: SyncFiles, body: Bytes) -> Result<Vec<(SyncBatchFile, Bytes)>, SyncError> {
    if head.files.is_empty() || head.files.len() > SyncFiles::MAX_FILES {
        return Err(bad(format!(
            "{} files (1 to {} allowed)",
            head.files.len(),
            SyncFiles::MAX_FILES
        )));
    }
    let mut total: u64 = 0;
    let mut seen = HashSet::with_capacity(head.files.len());
    for f in &head.files {
        if f.size > SyncFiles::MAX_FILE {
            return Err(bad(format!(
                "{}: {} bytes (at most {} in a batch)",
                f.path,
                f.size,
                SyncFiles::MAX_FILE
            )));
        }
        total += f.size;
        skiff_sync::entry::check_path(&f.path).map_err(|e| bad(format!("{:?}: {e}", f.path)))?;
        if !seen.insert(f.path.as_str()) {
            return Err(bad(format!("{:?} appears twice", f.path)));
        }
    }
    if total > SyncFiles::MAX_BYTES {
        return Err(bad(format!(
            "{total} bytes (at most {})",
            SyncFiles::MAX_BYTES
        )));
    }
    let data = match head.raw {
        None => body,
        Some(raw) if u64::from(raw) != total => {
            return Err(bad(format!(
                "expands to {raw} bytes, the files hold {total}"
            )))
        }
        Some(raw) => decompress(&body, raw as usize, SyncFiles::MAX_BYTES as usize)
            .map(Bytes::from)
            .map_err(bad)?,
    };
    if data.len() as u64 != total {
        return Err(bad(format!(
            "the body holds {} bytes, the files {total}",
            data.len()
        )));
    }
    let mut at = 0usize;
    let mut out = Vec::with_capacity(head.files.len());
    for f in head.files {
        // `total` is the body's length, so every size fits usize.
        let len = f.size as usize;
        out.push((f, data.slice(at..at + len)));
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> SyncBatchFile {
        SyncBatchFile {
            path: path.into(),
            size,
            mode: 0o644,
            mtime_ns: 0,
            hash: String::new(),
            replace: false,
        }
    }

    fn packed(files: &[(&str, &[u8])], z: bool) -> (SyncFiles, Bytes) {
        let mut p = Pack::default();
        for (path, data) in files {
            assert!(p.has_room(path, data.len() as u64));
            p.body().extend_from_slice(data);
            p.add(file(path, data.len() as u64));
        }
        let mut c = Compressor::new(1).unwrap();
        let (f, raw) = p.take(z.then_some(&mut c)).unwrap().unwrap();
        assert!(p.is_empty() && p.body().is_empty());
        assert_eq!(raw, files.iter().map(|f| f.1.len() as u64).sum::<u64>());
        let head: SyncFiles = f.parse().unwrap();
        (head, f.body().clone())
    }

    #[test]
    fn a_batch_unpacks_into_its_files_with_and_without_compression() {
        let random: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let zeros = vec![0u8; 20_000];
        for z in [false, true] {
            let (head, body) = packed(
                &[("a", b"hello"), ("d/b", &zeros), ("c", &random), ("e", b"")],
                z,
            );
            assert_eq!(head.raw.is_some(), z, "zeros compress");
            let got = unpack(head, body).unwrap();
            let got: Vec<(String, Vec<u8>)> =
                got.into_iter().map(|(f, b)| (f.path, b.to_vec())).collect();
            assert_eq!(got[0], ("a".into(), b"hello".to_vec()));
            assert_eq!(got[1], ("d/b".into(), zeros.clone()));
            assert_eq!(got[2], ("c".into(), random.clone()));
            assert_eq!(got[3], ("e".into(), Vec::new()));
        }
        // Nothing shrinks: sent as it is.
        let mut p = Pack::default();
        p.body().extend_from_slice(&random[..64]);
        p.add(file("r", 64));
        let mut c = Compressor::new(1).unwrap();
        let (f, _) = p.take(Some(&mut c)).unwrap().unwrap();
        assert!(f.parse::<SyncFiles>().unwrap().raw.is_none());
        assert!(Pack::default().take(None).unwrap().is_none());
    }

    #[test]
    fn a_sent_batch_lends_its_buffer_to_the_next() {
        let mut p = Pack::default();
        p.body().extend_from_slice(b"abc");
        let at = p.body().as_ptr();
        p.add(file("a", 3));
        let (f, _) = p.take(None).unwrap().unwrap();
        drop(f);
        assert_eq!(p.body().as_ptr(), at, "the same allocation again");
        assert!(p.body().is_empty());
    }

    #[test]
    fn a_pack_stays_within_its_bounds() {
        let mut p = Pack::default();
        for i in 0..SyncFiles::MAX_FILES {
            assert!(p.has_room("f", 1), "{i}");
            p.body().push(0);
            p.add(file("f", 1));
        }
        assert!(!p.has_room("f", 1), "file count");
        let p = Pack::default();
        assert!(p.has_room("f", SyncFiles::MAX_BYTES));
        assert!(!p.has_room("f", SyncFiles::MAX_BYTES + 1));
        let long = "x".repeat(MAX_HEADER);
        assert!(!p.has_room(&long, 1), "header size");
        assert!(Pack::takes(SyncFiles::MAX_FILE) && !Pack::takes(SyncFiles::MAX_FILE + 1));
    }

    #[test]
    fn a_batch_that_does_not_describe_its_body_is_refused_whole() {
        let head = |files: Vec<SyncBatchFile>, raw| SyncFiles { files, raw };
        let body = Bytes::from_static(b"abcdef");
        let cases: Vec<(SyncFiles, Bytes, &str)> = vec![
            (
                head(vec![file("a", 2), file("b", 2)], None),
                body.clone(),
                "body holds 6",
            ),
            (head(vec![file("a", 7)], None), body.clone(), "body holds 6"),
            (head(vec![], None), Bytes::new(), "0 files"),
            (
                head(vec![file("a", 1); SyncFiles::MAX_FILES + 1], None),
                Bytes::new(),
                "257 files",
            ),
            (
                head(vec![file("a", SyncFiles::MAX_FILE + 1)], None),
                Bytes::new(),
                "at most",
            ),
            (
                head(vec![file("a", u64::MAX)], None),
                Bytes::new(),
                "at most",
            ),
            (
                head(
                    (0..5)
                        .map(|i| file(&format!("f{i}"), SyncFiles::MAX_FILE))
                        .collect(),
                    None,
                ),
                Bytes::new(),
                "at most 1048576",
            ),
            (head(vec![file("../x", 6)], None), body.clone(), "../x"),
            (head(vec![file("/etc/x", 6)], None), body.clone(), "/etc/x"),
            (
                head(vec![file("d/../../x", 6)], None),
                body.clone(),
                "d/../../x",
            ),
            (
                head(vec![file("a", 3), file("a", 3)], None),
                body.clone(),
                "twice",
            ),
            (
                head(vec![file("a", 6)], Some(6)),
                body.clone(),
                "sync_files",
            ),
            (
                head(vec![file("a", 6)], Some(100 << 20)),
                body.clone(),
                "expands to",
            ),
        ];
        for (h, b, says) in cases {
            let what = format!("{h:?}");
            match unpack(h, b) {
                Err(e) => assert!(e.to_string().contains(says), "{what}: {e}"),
                Ok(_) => panic!("{what} accepted"),
            }
        }
    }
}
