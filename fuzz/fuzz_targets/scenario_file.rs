//! `cargo fuzz run scenario_file`: text read as a scenario file, then judged by the model.
//! The invariants are those of `migtest::scenario::file_check::check_scenario_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| migtest::scenario::file_check::check_scenario_file(data));
