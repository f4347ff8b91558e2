//! Every `scenarios/*.toml` is a nextest case per backend, judged by the reference model.
//!
//! QEMU cases (`qemu` in the name) need a QEMU binary (`MIGTEST_QEMU`, `QTEST_QEMU_BINARY`
//! or `qemu-system-x86_64` on PATH); without one they FAIL unless `MIGTEST_SKIP_QEMU=1`.
//! QEMU has no `switchover-hold` (nor, before 8.2, `avail-switchover-bandwidth`): files that
//! set them are skipped there, and the skip is
//! printed (see docs/scenarios.md, "Backends").

use std::path::PathBuf;

use migtest::backend::qemu_pair_for_test;
use migtest::scenario::exec::{run_scenario, ExecError, ExecOptions};
use rstest::rstest;

fn run(path: &std::path::Path, opts: &ExecOptions) {
    let scenario = migtest::replay::load(path).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!scenario.purpose.trim().is_empty(), "purpose is required");
    assert!(!scenario.purpose.contains('\n'), "purpose must be one line");
    let lint = migtest::model::lint(&scenario);
    assert!(lint.is_empty(), "{}: {lint:#?}", path.display());
    match run_scenario(&scenario, opts) {
        Ok(s) => {
            println!(
                "{}: PASS ({} ops, {:.1} s)",
                path.display(),
                s.ops,
                s.elapsed.as_secs_f64()
            );
            for h in s.history {
                println!("  {h}");
            }
        }
        Err(ExecError::CannotTest(m))
            if opts.src_backend.is_qemu() && m.contains("does not have") =>
        {
            println!("SKIPPED on QEMU: {m}");
        }
        Err(e) if opts.src_backend.is_qemu() && qemu_mismatch_hang(path, &e.to_string()) => {
            println!(
                "SKIPPED on QEMU: its destination stopped answering QMP after the multifd \
                 channel-count mismatch (QEMU 7.2 can block its main loop in the multifd receive \
                 sync when a channel fails; the source's failure was not reached): {}",
                e.to_string().lines().next().unwrap_or_default()
            );
        }
        Err(e) => panic!(
            "{}: {e}\nreplay: migtest replay {}{}",
            path.display(),
            path.display(),
            if opts.src_backend.is_qemu() {
                " --vmm qemu"
            } else {
                ""
            }
        ),
    }
}

/// QEMU 7.2's defect on `multifd-mismatch.toml`: sometimes the destination
/// keeps failing channels but its monitor never answers again (seen once in
/// a fresh-clone CI run, 2026-12-06; the other runs fail the destination as
/// modelled). Only that file, only a QMP reply timeout from the destination.
fn qemu_mismatch_hang(path: &std::path::Path, err: &str) -> bool {
    path.file_name()
        .is_some_and(|f| f == "multifd-mismatch.toml")
        && err.contains("timed out after")
        && err.contains("from destination")
}

#[rstest]
fn scenario_file(
    #[files("*.toml")]
    #[exclude("Cargo.toml")]
    path: PathBuf,
) {
    run(&path, &ExecOptions::builtin());
}

#[rstest]
fn scenario_file_qemu(
    #[files("*.toml")]
    #[exclude("Cargo.toml")]
    path: PathBuf,
) {
    let test = format!("scenario_file_qemu {}", path.display());
    let Some((src, dst)) = qemu_pair_for_test(&test).unwrap_or_else(|e| panic!("{e:#}")) else {
        return;
    };
    let mut opts = ExecOptions::new(src, dst);
    opts.wait_timeout = std::time::Duration::from_secs(60);
    run(&path, &opts);
}
