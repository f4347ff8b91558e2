//! Every `scenarios/*.toml` is a nextest case per backend, judged by the reference model.
//!
//! QEMU cases (`qemu` in the name) need a QEMU binary (`MIGTEST_QEMU`, `QTEST_QEMU_BINARY`
//! or `qemu-system-x86_64` on PATH); without one they FAIL unless `MIGTEST_SKIP_QEMU=1`.
//! QEMU has no `switchover-hold` (nor, before 8.2, `avail-switchover-bandwidth`): files that
//! set them are skipped there, and the skip is
//! printed (see docs/scenarios.md, "Backends").

use std::path::PathBuf;

use migtest::backend::qemu_pair_for_test;
use migtest::model::{multifd, Model};
use migtest::scenario::exec::{run_scenario, ExecError, ExecOptions};
use migtest::scenario::{Op, Scenario, Side};
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
        Err(e) if opts.src_backend.is_qemu() && qemu_mismatch_hang(&scenario, &e.to_string()) => {
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

/// QEMU 7.2's defect after a multifd channel-count mismatch: sometimes the
/// destination keeps failing channels but its monitor never answers again
/// (seen once in a fresh-clone CI run on `multifd-mismatch.toml`,
/// 2026-12-06; the other runs fail the destination as modelled). Only a
/// scenario that migrates with channel counts that differ (the model's
/// [`multifd::mismatch`], each side's settings at `migrate`), only a QMP
/// reply timeout from the destination.
fn qemu_mismatch_hang(scenario: &Scenario, err: &str) -> bool {
    err.contains("timed out after")
        && err.contains("from destination")
        && migrates_with_channel_mismatch(scenario)
}

/// Whether some `migrate` of `scenario` meets a multifd channel-count
/// mismatch, by the model's account of each side's settings.
fn migrates_with_channel_mismatch(scenario: &Scenario) -> bool {
    let mut model = Model::new(scenario.pair.clone());
    scenario.ops.iter().any(|op| {
        let settings = |side| Some((model.capabilities(side)?, model.parameters(side)?));
        let mismatched = matches!(op, Op::Migrate { .. })
            && matches!(
                (settings(Side::Source), settings(Side::Destination)),
                (Some(src), Some(dst)) if multifd::mismatch((&src.0, &src.1), (&dst.0, &dst.1)).is_some()
            );
        model.apply(op);
        mismatched
    })
}

#[test]
fn only_the_mismatch_scenario_migrates_with_a_channel_mismatch() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("Cargo.toml") {
            let scenario = migtest::replay::load(&path).unwrap();
            if migrates_with_channel_mismatch(&scenario) {
                found.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert_eq!(found, ["multifd-mismatch.toml"]);
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
