//! The fuzz targets' bodies (fuzz/src/lib.rs) under plain `cargo test`:
//! every committed seed of each target, then random and mutated inputs
//! (proptest). The libFuzzer runs themselves are in fuzz/README.md; a
//! crash they find is added to fuzz/seeds/TARGET/ and so replayed here.

#[allow(dead_code)]
#[path = "../../../fuzz/src/lib.rs"]
mod harness;

use proptest::prelude::*;

/// Every file of `fuzz/seeds/TARGET`, at least one.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.expect("entry").path()).expect("read seed"))
        .collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out.sort();
    out
}

/// A seed with some bytes overwritten, some cut off: cheap mutations that
/// stay close to valid input.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let all = seeds(target);
    (
        0..all.len(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        any::<usize>(),
    )
        .prop_map(move |(i, edits, cut)| {
            let mut s = all[i].clone();
            for (at, b) in edits {
                if !s.is_empty() {
                    let n = s.len();
                    s[at % n] = b;
                }
            }
            let keep = if s.is_empty() { 0 } else { cut % (s.len() + 1) };
            s.truncate(keep.max(s.len() / 2));
            s
        })
}

macro_rules! corpus_tests {
    ($($target:ident),*) => {
        mod seeds_replay {
            $(
                #[test]
                fn $target() {
                    for s in super::seeds(stringify!($target)) {
                        super::harness::$target(&s);
                    }
                }
            )*
        }
        mod random_inputs {
            use super::*;
            $(
                proptest! {
                    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
                    #[test]
                    fn $target(
                        input in prop_oneof![
                            proptest::collection::vec(any::<u8>(), 0..512),
                            mutated(stringify!($target)),
                        ]
                    ) {
                        harness::$target(&input);
                    }
                }
            )*
        }
    };
}

corpus_tests!(decode, messages, handshake, paths);
