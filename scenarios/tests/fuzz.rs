//! The proptest state-machine test: the reference model generates op sequences and the real
//! pair (builtin migtest-vmm, and real QEMU in `fuzz_real_qemu`) runs them in lockstep with
//! the model, which judges every observation. Fixed seed; a bounded case count so it runs within 2 minutes on a 2-core
//! machine (`PROPTEST_CASES` overrides it); bounded shrinking; regressions are committed in
//! `tests/fuzz.proptest-regressions` and replayed first. A failing case is shrunk, written
//! to the failures folder and the message prints `migtest replay FILE`.

use std::time::Duration;

use migtest::fuzz::{fuzz, Focus, FuzzOptions};

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

/// Cases of each focused run when `PROPTEST_CASES` is not set.
pub const FOCUSED_CASES: u32 = 40;

/// The fuzz test with generation steered towards one feature (`migtest::fuzz::Focus`); the
/// same model judges every op.
fn fuzz_focused(focus: Focus) {
    let mut opts = FuzzOptions::new(CI_SEED);
    opts.cases = Some(FOCUSED_CASES);
    if let Some(n) = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.cases = Some(n);
    }
    opts.focus = focus;
    opts.max_shrink_time = Duration::from_secs(60);
    opts.exec.wait_timeout = Duration::from_secs(20);
    opts.label = format!("fuzz-{}", focus.name());
    match fuzz(&opts) {
        Ok(r) => println!(
            "fuzz_real_builtin focus {}: {} cases passed ({} unreproducible failures) in {:.1} s (seed {CI_SEED})",
            focus.name(),
            r.cases,
            r.flaky,
            r.elapsed.as_secs_f64()
        ),
        Err(f) => panic!("{f}"),
    }
}

/// Postcopy focus: `postcopy-ram`, a slow `max-postcopy-bandwidth`, `start-postcopy`, kills
/// during postcopy, destinations that run the guest during postcopy.
#[test]
fn fuzz_real_builtin_postcopy() {
    fuzz_focused(Focus::Postcopy);
}

/// auto-converge focus: held migrations that throttle, and their end.
#[test]
fn fuzz_real_builtin_auto_converge() {
    fuzz_focused(Focus::AutoConverge);
}

/// XBZRLE focus: held migrations of the scribble guest with XBZRLE, released, compared.
#[test]
fn fuzz_real_builtin_xbzrle() {
    fuzz_focused(Focus::Xbzrle);
}

/// Cases for QEMU (TCG is slow; cases that need `switchover-hold` are skipped there and do
/// not count) when `PROPTEST_CASES` is not set.
pub const QEMU_CASES: u32 = 64;

/// The same fuzz test against real QEMU (`MIGTEST_QEMU`, `QTEST_QEMU_BINARY` or
/// `qemu-system-x86_64` on `PATH`; fails without one unless `MIGTEST_SKIP_QEMU=1`).
#[test]
fn fuzz_real_qemu() {
    let Some((src, dst)) =
        migtest::backend::qemu_pair_for_test("fuzz_real_qemu").unwrap_or_else(|e| panic!("{e:#}"))
    else {
        return;
    };
    let mut opts = FuzzOptions::new(CI_SEED);
    if std::env::var_os("PROPTEST_CASES").is_none() {
        opts.cases = Some(QEMU_CASES);
    }
    opts.max_shrink_time = Duration::from_secs(60);
    opts.exec = migtest::scenario::exec::ExecOptions::new(src, dst);
    opts.exec.wait_timeout = Duration::from_secs(30);
    opts.label = "fuzz-qemu".into();
    match fuzz(&opts) {
        Ok(r) => {
            println!(
                "fuzz_real_qemu: {} cases passed, {} skipped (need switchover-hold), {} unreproducible failures, in {:.1} s (seed {CI_SEED})",
                r.cases,
                r.skipped,
                r.flaky,
                r.elapsed.as_secs_f64()
            );
            assert!(r.cases > 0, "no case ran on QEMU");
        }
        Err(f) => panic!("{f}"),
    }
}
