//! The recipe of a new file in terms of the receiver's old copy: ranges to
//! copy from the old file and literal bytes, produced by the sender in one
//! streaming pass (its assembly by the receiver is [`crate::assemble`]).

use std::io::{self, Read};

use crate::chunker::{read_full, Signature};
use crate::hash::Hash;

/// Literal pieces of a file the receiver has no copy of are cut at this
/// size (no chunking needed when nothing can match).
pub const PLAIN_PIECE: usize = 1024 * 1024;

/// A run of matching chunks is sent as one copy once it reaches this
/// length, and the next run starts: the receiver can copy (and hash) the
/// start of a long unchanged stretch while the sender is still cutting
/// the rest, instead of getting the whole stretch at its end.
pub const COPY_RUN_MAX: u64 = 64 << 20;

/// One step of a recipe as the sender produces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Copy `len` bytes at `offset` of the old file (runs of matching
    /// chunks are merged into one copy).
    Copy {
        /// Offset in the old file.
        offset: u64,
        /// Number of bytes.
        len: u64,
    },
    /// These bytes, which the old file does not have (one chunk at most,
    /// so at most [`crate::params::MAX_CHUNK`] bytes).
    Literal(&'a [u8]),
}

/// Copies of consecutive old ranges merged into runs of at most
/// [`COPY_RUN_MAX`], as the recipe sends them.
#[derive(Default)]
pub(crate) struct CopyRun(Option<(u64, u64)>);

impl CopyRun {
    /// Adds a copy of `len` bytes at `offset`, emitting the pending run
    /// first when this one does not continue it.
    pub(crate) fn add<F>(&mut self, offset: u64, len: u64, emit: &mut F) -> io::Result<()>
    where
        F: FnMut(Piece<'_>) -> io::Result<()> + ?Sized,
    {
        match &mut self.0 {
            Some((o, l)) if *o + *l == offset && *l < COPY_RUN_MAX => *l += len,
            pending => {
                if let Some((offset, len)) = pending.take() {
                    emit(Piece::Copy { offset, len })?;
                }
                *pending = Some((offset, len));
            }
        }
        Ok(())
    }

    /// Emits the pending run, if any.
    pub(crate) fn flush<F>(&mut self, emit: &mut F) -> io::Result<()>
    where
        F: FnMut(Piece<'_>) -> io::Result<()> + ?Sized,
    {
        match self.0.take() {
            Some((offset, len)) => emit(Piece::Copy { offset, len }),
            None => Ok(()),
        }
    }
}

/// Streams the recipe of `new` against `old` (the receiver's signature of
/// its old copy; `None` when it has none) into `emit`, reading `new` once:
/// where the old chunks are unchanged it follows them, hashing only, and
/// it cuts around the edits (the `follow` module). Returns the BLAKE3 and
/// length of `new` as read, which the receiver checks after assembly.
pub fn make_recipe<R, F>(
    new: R,
    size_hint: Option<u64>,
    old: Option<&Signature>,
    emit: F,
) -> io::Result<(Hash, u64)>
where
    R: Read,
    F: FnMut(Piece<'_>) -> io::Result<()>,
{
    let Some(sig) = old.filter(|s| !s.chunks.is_empty()) else {
        return plain_recipe(new, size_hint, emit);
    };
    let params = sig.params.validate().map_err(io::Error::other)?;
    crate::follow::follow_recipe(new, size_hint, sig, params, emit)
}

fn plain_recipe<R, F>(mut new: R, size_hint: Option<u64>, mut emit: F) -> io::Result<(Hash, u64)>
where
    R: Read,
    F: FnMut(Piece<'_>) -> io::Result<()>,
{
    let cap = size_hint.map_or(PLAIN_PIECE, |s| (s as usize).clamp(1, PLAIN_PIECE));
    let mut buf = vec![0u8; cap];
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    loop {
        let filled = read_full(&mut new, &mut buf)?;
        if filled == 0 {
            return Ok((hasher.finalize().into(), total));
        }
        crate::hash::update(&mut hasher, &buf[..filled]);
        total += filled as u64;
        emit(Piece::Literal(&buf[..filled]))?;
        if filled < buf.len() {
            return Ok((hasher.finalize().into(), total));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::{AssembleError, Assembler};
    use crate::params::ChunkParams;
    use crate::testdata::pseudo_random;
    use proptest::prelude::*;

    /// Runs the whole round: signature of `old`, recipe of `new`, assembly.
    /// Returns the assembled bytes and the literal byte count.
    fn round_trip(old: &[u8], new: &[u8]) -> (Vec<u8>, u64) {
        let sig = Signature::of_reader(old, old.len() as u64).unwrap();
        let mut asm = Assembler::new(Some((old, old.len() as u64)), Vec::new(), new.len() as u64);
        let mut literal = 0u64;
        let (hash, size) = make_recipe(new, Some(new.len() as u64), Some(&sig), |p| {
            match p {
                Piece::Copy { offset, len } => asm.copy(offset, len),
                Piece::Literal(d) => {
                    literal += d.len() as u64;
                    asm.literal(d)
                }
            }
            .map_err(io::Error::other)
        })
        .unwrap();
        assert_eq!(size, new.len() as u64);
        assert_eq!(hash, Hash::of(new));
        (asm.finish(hash).unwrap(), literal)
    }

    #[test]
    fn unchanged_file_is_one_copy() {
        let old = pseudo_random(3 << 20, 1);
        let sig = Signature::of_reader(&old[..], old.len() as u64).unwrap();
        let mut pieces = Vec::new();
        make_recipe(&old[..], None, Some(&sig), |p| {
            pieces.push(format!("{p:?}"));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            pieces,
            [format!(
                "{:?}",
                Piece::Copy {
                    offset: 0,
                    len: 3 << 20
                }
            )]
        );
    }

    #[test]
    fn scattered_rewrites_and_an_insertion_send_little() {
        let old = pseudo_random(16 << 20, 2);
        let mut new = old.clone();
        for i in 0..4 {
            let at = (i * 4 + 1) << 20;
            new[at..at + 4096].copy_from_slice(&pseudo_random(4096, 10 + i as u64));
        }
        let (out, literal) = round_trip(&old, &new);
        assert_eq!(out, new);
        assert!(
            literal < 4 * 4 * ChunkParams::for_size(old.len() as u64).max as u64,
            "{literal}"
        );
        let mut ins = old.clone();
        ins.splice(8 << 20..8 << 20, pseudo_random(1 << 20, 99));
        let (out, literal) = round_trip(&old, &ins);
        assert_eq!(out, ins);
        assert!(
            literal < (1 << 20) + 3 * u64::from(ChunkParams::for_size(old.len() as u64).max),
            "{literal}"
        );
    }

    #[test]
    fn no_old_copy_sends_plain_pieces() {
        let new = pseudo_random(PLAIN_PIECE * 2 + 5, 3);
        let mut lens = Vec::new();
        let (h, n) = make_recipe(&new[..], Some(new.len() as u64), None, |p| {
            if let Piece::Literal(d) = p {
                lens.push(d.len());
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(lens, [PLAIN_PIECE, PLAIN_PIECE, 5]);
        assert_eq!((h, n), (Hash::of(&new), new.len() as u64));
        let (h, n) = make_recipe(&b""[..], Some(0), None, |_| panic!("nothing to emit")).unwrap();
        assert_eq!((h, n), (Hash::of(b""), 0));
    }

    #[test]
    fn assembly_refuses_what_does_not_add_up() {
        let old = b"0123456789".as_slice();
        let mut a = Assembler::new(Some((old, 10)), Vec::new(), 4);
        assert!(matches!(
            a.copy(8, 4),
            Err(AssembleError::CopyOutOfRange { .. })
        ));
        assert!(matches!(
            a.copy(u64::MAX, 2),
            Err(AssembleError::CopyOutOfRange { .. })
        ));
        assert!(matches!(
            a.literal(b"12345"),
            Err(AssembleError::TooLong(4))
        ));
        a.copy(0, 4).unwrap();
        assert!(matches!(
            a.finish(Hash::of(b"0124")),
            Err(AssembleError::HashMismatch { .. })
        ));
        let a: Assembler<&[u8], _> = Assembler::new(None, Vec::new(), 3);
        assert!(matches!(
            a.finish(Hash::of(b"abc")),
            Err(AssembleError::SizeMismatch { got: 0, want: 3 })
        ));
        let mut a: Assembler<&[u8], _> = Assembler::new(None, Vec::new(), 3);
        assert!(a.copy(0, 1).is_err(), "no old file to copy from");
    }

    #[test]
    fn an_old_file_that_changed_is_caught_by_the_whole_hash() {
        let old = pseudo_random(1 << 20, 5);
        let new = [&old[..], b"tail"].concat();
        let sig = Signature::of_reader(&old[..], old.len() as u64).unwrap();
        let mut changed = old.clone();
        changed[1000] ^= 1;
        let mut asm = Assembler::new(
            Some((&changed[..], changed.len() as u64)),
            Vec::new(),
            new.len() as u64,
        );
        let (hash, _) = make_recipe(&new[..], None, Some(&sig), |p| {
            match p {
                Piece::Copy { offset, len } => asm.copy(offset, len),
                Piece::Literal(d) => asm.literal(d),
            }
            .map_err(io::Error::other)
        })
        .unwrap();
        assert!(matches!(
            asm.finish(hash),
            Err(AssembleError::HashMismatch { .. })
        ));
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(usize, Vec<u8>),
        Delete(usize, usize),
        Overwrite(usize, Vec<u8>),
        Truncate(usize),
        Grow(Vec<u8>),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let bytes = prop::collection::vec(any::<u8>(), 0..20_000);
        prop_oneof![
            (any::<usize>(), bytes.clone()).prop_map(|(a, b)| Edit::Insert(a, b)),
            (any::<usize>(), 0usize..50_000).prop_map(|(a, n)| Edit::Delete(a, n)),
            (any::<usize>(), bytes.clone()).prop_map(|(a, b)| Edit::Overwrite(a, b)),
            any::<usize>().prop_map(Edit::Truncate),
            bytes.prop_map(Edit::Grow),
        ]
    }

    fn apply(data: &mut Vec<u8>, e: &Edit) {
        let at = |a: usize, len: usize| if len == 0 { 0 } else { a % (len + 1) };
        match e {
            Edit::Insert(a, b) => {
                let p = at(*a, data.len());
                data.splice(p..p, b.iter().copied());
            }
            Edit::Delete(a, n) => {
                let p = at(*a, data.len());
                let end = (p + n).min(data.len());
                data.drain(p..end);
            }
            Edit::Overwrite(a, b) => {
                let p = at(*a, data.len());
                let end = (p + b.len()).min(data.len());
                data.splice(p..end, b.iter().copied());
            }
            Edit::Truncate(a) => {
                let p = at(*a, data.len());
                data.truncate(p);
            }
            Edit::Grow(b) => data.extend_from_slice(b),
        }
    }

    /// Each step of a recipe, with literals by their hash.
    fn steps<Run>(run: Run) -> Vec<String>
    where
        Run: FnOnce(&mut dyn FnMut(Piece<'_>) -> io::Result<()>) -> io::Result<(Hash, u64)>,
    {
        let mut out = Vec::new();
        run(&mut |p| {
            out.push(match p {
                Piece::Copy { offset, len } => format!("copy {offset} {len}"),
                Piece::Literal(d) => format!("literal {} {}", d.len(), Hash::of(d)),
            });
            Ok(())
        })
        .unwrap();
        out
    }

    /// The recipe by cutting every byte of `new` and looking each chunk
    /// up: what following must give.
    fn cut_recipe(
        new: &[u8],
        sig: &Signature,
        emit: &mut dyn FnMut(Piece<'_>) -> io::Result<()>,
    ) -> io::Result<(Hash, u64)> {
        let mut index = std::collections::HashMap::new();
        for c in sig.located() {
            index.entry(c.hash).or_insert(c.offset);
        }
        let mut run = CopyRun::default();
        let mut chunker = crate::Chunker::new(new, sig.params, None);
        while let Some(block) = chunker.next_block()? {
            for c in &block.chunks {
                match index.get(&c.hash) {
                    Some(&at) => run.add(at, u64::from(c.len), emit)?,
                    None => {
                        run.flush(emit)?;
                        emit(Piece::Literal(block.bytes_of(c)))?;
                    }
                }
            }
        }
        run.flush(emit)?;
        chunker.finish()
    }

    /// Content that repeats (every chunk of zeros alike) still rebuilds
    /// exactly, though a copy may come from another place with the same
    /// bytes.
    #[test]
    fn repeated_content_round_trips() {
        let old = vec![0u8; 3 << 20];
        let mut new = old.clone();
        new.splice(1 << 20..1 << 20, pseudo_random(50_000, 4));
        let (out, literal) = round_trip(&old, &new);
        assert_eq!(out, new);
        assert!(literal < 200_000, "{literal}");
    }

    /// Random old content of `len` bytes and a copy with `edits` applied.
    fn edited(len: usize, seed: u64, edits: &[Edit]) -> (Vec<u8>, Vec<u8>) {
        let old = pseudo_random(len, seed);
        let mut new = old.clone();
        for e in edits {
            apply(&mut new, e);
        }
        (old, new)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Following the old chunks gives, step for step, the recipe of
        /// cutting the whole new file, which the signature cache's
        /// derived entries rely on.
        #[test]
        fn following_gives_the_recipe_cutting_gives(
            len in 0usize..1_500_000,
            seed in any::<u64>(),
            edits in prop::collection::vec(edit(), 0..6),
        ) {
            let (old, new) = edited(len, seed, &edits);
            let sig = Signature::of_reader(&old[..], old.len() as u64).unwrap();
            let followed = steps(|emit| make_recipe(&new[..], Some(new.len() as u64), Some(&sig), emit));
            let cut = steps(|emit| cut_recipe(&new, &sig, emit));
            prop_assert_eq!(followed, cut);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn recipe_applied_to_old_gives_new(
            len in 0usize..400_000,
            seed in any::<u64>(),
            edits in prop::collection::vec(edit(), 0..6),
        ) {
            let (old, new) = edited(len, seed, &edits);
            let (out, literal) = round_trip(&old, &new);
            prop_assert_eq!(&out, &new);
            prop_assert!(literal <= new.len() as u64);
        }
    }
}
