//! The compact form of a file-list batch on the wire: a binary record per
//! entry, each path stored as the bytes it shares with the previous path
//! plus the rest, each mtime as the difference from the previous one, and
//! the whole batch zstd-compressed. A list of a tree whose names share
//! long prefixes costs a few bytes per entry, not the hundred of a JSON
//! object.
//!
//! Record (integers are LEB128 varints, `zigzag` maps signed to unsigned):
//!
//! | field | encoding |
//! |---|---|
//! | flags | one byte: bits 0-1 kind (0 file, 1 directory, 2 symlink), bit 2 a hash follows |
//! | shared | varint: bytes of the previous path (`""` for the first) that begin this one |
//! | rest | varint length, then the bytes |
//! | mode | varint |
//! | mtime | varint `zigzag(mtime_ns - previous mtime_ns)` (wrapping; the first is against 0) |
//! | size | varint, files only (a directory's is 0, a link's the length of its target) |
//! | target | symlinks only: varint length, then the bytes |
//! | hash | 32 bytes, when flagged |
//!
//! Decoding checks every length against what is left and the result
//! against [`RAW_MAX`]; paths and targets must be UTF-8. Whether a path
//! is acceptable (plain components, sorted) is the merge's check.

use crate::entry::{Entry, Kind};
use crate::hash::Hash;

/// Most bytes a batch may expand to. An encoder starts a new batch well
/// before that ([`ListEncoder::is_full`]).
pub const RAW_MAX: usize = 8 << 20;

/// Raw bytes after which an encoder's batch is full.
pub const RAW_TARGET: usize = 1 << 20;

/// zstd level for list batches: the fastest, lists are small.
const LEVEL: i32 = 1;

/// Why a batch was refused.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The compressed form is bad or expands beyond the limit.
    #[error(transparent)]
    Compressed(#[from] crate::compress::DecompressError),
    /// A record is cut short or has an impossible field.
    #[error("bad list record {index}: {why}")]
    Record {
        /// Which record (0-based).
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// Compression failed (out of memory).
    #[error("list compression failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds one batch.
#[derive(Default)]
pub struct ListEncoder {
    raw: Vec<u8>,
    prev_path: String,
    prev_mtime: i64,
    count: usize,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl ListEncoder {
    /// An empty batch.
    pub fn new() -> ListEncoder {
        ListEncoder::default()
    }

    /// Appends `e`.
    pub fn push(&mut self, e: &Entry) {
        let kind = match e.kind {
            Kind::File => 0u8,
            Kind::Dir => 1,
            Kind::Symlink => 2,
        };
        let flags = kind | if e.hash.is_some() { 4 } else { 0 };
        self.raw.push(flags);
        let shared = self
            .prev_path
            .bytes()
            .zip(e.path.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        put_varint(&mut self.raw, shared as u64);
        let rest = &e.path.as_bytes()[shared..];
        put_varint(&mut self.raw, rest.len() as u64);
        self.raw.extend_from_slice(rest);
        put_varint(&mut self.raw, u64::from(e.mode));
        put_varint(
            &mut self.raw,
            zigzag(e.mtime_ns.wrapping_sub(self.prev_mtime)),
        );
        match e.kind {
            Kind::File => put_varint(&mut self.raw, e.size),
            Kind::Dir => {}
            Kind::Symlink => {
                let t = e.target.as_deref().unwrap_or("").as_bytes();
                put_varint(&mut self.raw, t.len() as u64);
                self.raw.extend_from_slice(t);
            }
        }
        if let Some(h) = &e.hash {
            self.raw.extend_from_slice(&h.0);
        }
        self.prev_path.clear();
        self.prev_path.push_str(&e.path);
        self.prev_mtime = e.mtime_ns;
        self.count += 1;
    }

    /// Entries in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch has no entry.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the batch should be sent now (its raw size reached
    /// [`RAW_TARGET`]; one more entry of the longest path and target
    /// still stays under [`RAW_MAX`]).
    pub fn is_full(&self) -> bool {
        self.raw.len() >= RAW_TARGET
    }

    /// The compressed batch and its raw length; the encoder is empty
    /// again (a new batch starts from an empty previous path).
    pub fn finish(&mut self) -> Result<(Vec<u8>, usize), ListError> {
        let raw = std::mem::take(&mut self.raw);
        *self = ListEncoder::default();
        let z = zstd::bulk::compress(&raw, LEVEL)?;
        Ok((z, raw.len()))
    }
}

/// Reads records from a raw batch.
struct Reader<'a> {
    buf: &'a [u8],
    index: usize,
}

impl Reader<'_> {
    fn bad(&self, why: &'static str) -> ListError {
        ListError::Record {
            index: self.index,
            why,
        }
    }

    fn byte(&mut self) -> Result<u8, ListError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| self.bad("cut short"))?;
        self.buf = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, ListError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad("varint too long"))
    }

    fn bytes(&mut self, n: u64) -> Result<&[u8], ListError> {
        let n = usize::try_from(n).map_err(|_| self.bad("length too large"))?;
        if n > self.buf.len() {
            return Err(self.bad("length beyond the batch"));
        }
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(b)
    }

    fn string(&mut self, n: u64) -> Result<String, ListError> {
        let b = self.bytes(n)?.to_vec();
        String::from_utf8(b).map_err(|_| self.bad("not UTF-8"))
    }
}

/// Decodes a batch of `raw_len` bytes once expanded (refused above
/// [`RAW_MAX`] before anything is allocated).
pub fn decode_batch(compressed: &[u8], raw_len: usize) -> Result<Vec<Entry>, ListError> {
    let raw = crate::compress::decompress(compressed, raw_len, RAW_MAX)?;
    let mut r = Reader {
        buf: &raw,
        index: 0,
    };
    let mut out = Vec::new();
    let mut prev_path = String::new();
    let mut prev_mtime = 0i64;
    while !r.buf.is_empty() {
        let flags = r.byte()?;
        let kind = match flags & 3 {
            0 => Kind::File,
            1 => Kind::Dir,
            2 => Kind::Symlink,
            _ => return Err(r.bad("unknown kind")),
        };
        if flags & !7 != 0 {
            return Err(r.bad("unknown flags"));
        }
        let shared = r.varint()?;
        if shared > prev_path.len() as u64 {
            return Err(r.bad("shares more than the previous path"));
        }
        let rest_len = r.varint()?;
        let rest = r.bytes(rest_len)?;
        let mut path = prev_path.as_bytes()[..shared as usize].to_vec();
        path.extend_from_slice(rest);
        let path = String::from_utf8(path).map_err(|_| r.bad("path is not UTF-8"))?;
        let mode = u32::try_from(r.varint()?).map_err(|_| r.bad("mode too large"))?;
        let mtime_ns = prev_mtime.wrapping_add(unzigzag(r.varint()?));
        let (size, target) = match kind {
            Kind::File => (r.varint()?, None),
            Kind::Dir => (0, None),
            Kind::Symlink => {
                let n = r.varint()?;
                let t = r.string(n)?;
                (t.len() as u64, Some(t))
            }
        };
        let hash = if flags & 4 != 0 {
            let b = r.bytes(32)?;
            let mut h = [0u8; 32];
            h.copy_from_slice(b);
            Some(Hash(h))
        } else {
            None
        };
        prev_path.clone_from(&path);
        prev_mtime = mtime_ns;
        out.push(Entry {
            path,
            kind,
            mode,
            mtime_ns,
            size,
            target,
            hash,
        });
        r.index += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(path: &str, kind: Kind, mtime_ns: i64) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            mtime_ns,
            size: if kind == Kind::File { 4096 } else { 0 },
            target: None,
            hash: None,
        }
    }

    #[test]
    fn round_trip_and_size() {
        let mut es = vec![entry("d000", Kind::Dir, 1_700_000_000_123_456_789)];
        for i in 0..1000 {
            es.push(entry(
                &format!("d000/f{i:05}"),
                Kind::File,
                1_700_000_000_123_456_789 + i * 37_000,
            ));
        }
        es.push(Entry {
            target: Some("d000/f00001".into()),
            size: 11,
            ..entry("l", Kind::Symlink, -5)
        });
        es.push(Entry {
            hash: Some(Hash::of(b"x")),
            ..entry("z", Kind::File, 0)
        });
        let mut enc = ListEncoder::new();
        for e in &es {
            enc.push(e);
        }
        assert_eq!(enc.len(), es.len());
        let (z, raw) = enc.finish().unwrap();
        assert!(enc.is_empty());
        assert_eq!(decode_batch(&z, raw).unwrap(), es);
        // JSON takes about 100 bytes per entry; this a handful.
        assert!(z.len() < 8 * es.len(), "{} bytes", z.len());
    }

    #[test]
    fn hostile_batches_are_refused() {
        let bad = |raw: &[u8]| {
            let z = zstd::bulk::compress(raw, 1).unwrap();
            decode_batch(&z, raw.len()).unwrap_err()
        };
        bad(&[3, 0, 0, 0, 0, 0]); // kind 3
        bad(&[0, 5, 1, b'a', 0, 0, 0]); // shares 5 bytes of ""
        bad(&[0, 0, 200, 1]); // rest beyond the batch
        bad(&[0, 0, 2, 0xc3, 0x28, 0, 0, 0]); // not UTF-8
        bad(&[
            0, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        bad(&[4, 0, 1, b'a', 0, 0, 0, 1, 2]); // hash cut short
                                              // A huge announced size is refused before allocating.
        assert!(decode_batch(b"junk", usize::MAX).is_err());
        assert!(decode_batch(b"junk", 4).is_err());
    }

    proptest! {
        #[test]
        fn any_list_round_trips(items in proptest::collection::vec(
            ("[a-z/é]{1,12}", 0u8..3, any::<i64>(), any::<u64>(), 0u32..0o7777, any::<bool>()), 0..40)) {
            let es: Vec<Entry> = items.into_iter().map(|(p, k, m, s, mode, h)| {
                let kind = [Kind::File, Kind::Dir, Kind::Symlink][k as usize];
                Entry {
                    path: p.clone(),
                    kind,
                    mode,
                    mtime_ns: m,
                    size: match kind { Kind::File => s, Kind::Dir => 0, Kind::Symlink => p.len() as u64 },
                    target: (kind == Kind::Symlink).then(|| p.clone()),
                    hash: h.then(|| Hash::of(p.as_bytes())),
                }
            }).collect();
            let mut enc = ListEncoder::new();
            for e in &es { enc.push(e); }
            let (z, raw) = enc.finish().unwrap();
            prop_assert_eq!(decode_batch(&z, raw).unwrap(), es);
        }
    }
}
