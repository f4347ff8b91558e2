//! `cargo fuzz run guest_image`: guest-image text parsed and laid out for many RAM sizes and vCPU counts.
//! The invariants are those of `migtest_vmm::fuzzing::check_guest_image`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| migtest_vmm::fuzzing::check_guest_image(data));
