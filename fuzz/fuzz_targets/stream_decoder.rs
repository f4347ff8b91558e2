//! `cargo fuzz run stream_decoder`: a whole incoming migration stream loaded into a fresh destination.
//! The invariants are those of `migtest_vmm::fuzzing::check_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| migtest_vmm::fuzzing::check_stream(data));
