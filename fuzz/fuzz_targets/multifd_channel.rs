//! `cargo fuzz run multifd_channel`: one multifd page channel (hello and body) decoded as a
//! destination's receive thread does it. The invariants are those of
//! `migtest_vmm::fuzzing::check_multifd_channel`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| migtest_vmm::fuzzing::check_multifd_channel(data));
