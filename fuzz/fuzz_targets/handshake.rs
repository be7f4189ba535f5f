//! libFuzzer entry for the `handshake` target; what it checks is documented on
//! `skiff_fuzz::handshake`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| skiff_fuzz::handshake(input));
