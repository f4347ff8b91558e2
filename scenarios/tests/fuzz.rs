//! The proptest state-machine test: the reference model generates op sequences and the real
//! pair (builtin migtest-vmm) runs them in lockstep with the model, which judges every
//! observation. Fixed seed; a bounded case count so it runs within 2 minutes on a 2-core
//! machine (`PROPTEST_CASES` overrides it); bounded shrinking; regressions are committed in
//! `tests/fuzz.proptest-regressions` and replayed first. A failing case is shrunk, written
//! to the failures folder and the message prints `migtest replay FILE`.

use std::time::Duration;

use migtest::fuzz::{fuzz, FuzzOptions};

/// Cases in CI when `PROPTEST_CASES` is not set.
pub const CI_CASES: u32 = 120;
/// The CI seed.
pub const CI_SEED: u64 = 5;

#[test]
fn fuzz_real_builtin() {
    let mut opts = FuzzOptions::new(CI_SEED);
    if std::env::var_os("PROPTEST_CASES").is_none() {
        opts.cases = Some(CI_CASES);
    }
    opts.max_shrink_time = Duration::from_secs(60);
    opts.exec.wait_timeout = Duration::from_secs(20);
    opts.regressions = Some(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz.proptest-regressions"),
    );
    match fuzz(&opts) {
        Ok(r) => println!(
            "fuzz_real_builtin: {} cases passed ({} unreproducible failures) in {:.1} s (seed {CI_SEED})",
            r.cases,
            r.flaky,
            r.elapsed.as_secs_f64()
        ),
        Err(f) => panic!("{f}"),
    }
}
