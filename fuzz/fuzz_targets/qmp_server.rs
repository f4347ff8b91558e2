//! `cargo fuzz run qmp_server`: bytes on a QMP connection through the JSON splitter, command parser and argument reader.
//! The invariants are those of `migtest_vmm::fuzzing::check_qmp_server_input`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| migtest_vmm::fuzzing::check_qmp_server_input(data));
