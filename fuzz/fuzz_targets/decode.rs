//! libFuzzer entry for the `decode` target; what it checks is documented on
//! `skiff_fuzz::decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| skiff_fuzz::decode(input));
