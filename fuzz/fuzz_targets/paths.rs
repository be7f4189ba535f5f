//! libFuzzer entry for the `paths` target; what it checks is documented on
//! `skiff_fuzz::paths`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| skiff_fuzz::paths(input));
