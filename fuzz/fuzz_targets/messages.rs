//! libFuzzer entry for the `messages` target; what it checks is documented on
//! `skiff_fuzz::messages`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| skiff_fuzz::messages(input));
