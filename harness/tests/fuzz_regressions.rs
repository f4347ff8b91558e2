//! Replays every input kept under `fixtures/fuzz-regressions/scenario_file/`
//! (crashes `cargo fuzz run scenario_file` found, fixed at their cause) and
//! the shipped `scenarios/*.toml` through the fuzz target's check,
//! `migtest::scenario::file_check::check_scenario_file`.

use migtest::scenario::file_check::check_scenario_file;
use std::path::{Path, PathBuf};

fn replay(dir: &Path, keep: impl Fn(&Path) -> bool) -> usize {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| keep(p))
        .collect();
    paths.sort();
    for path in &paths {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| check_scenario_file(&data)).is_err() {
            panic!(
                "{}: the scenario_file check failed (message above)",
                path.display()
            );
        }
    }
    paths.len()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn scenario_file_regressions() {
    let dir = root().join("fixtures/fuzz-regressions/scenario_file");
    replay(&dir, |p| p.file_name().is_some_and(|n| n != "README.md"));
}

#[test]
fn scenario_file_shipped_scenarios() {
    let n = replay(&root().join("scenarios"), |p| {
        p.extension().is_some_and(|e| e == "toml") && !p.ends_with("Cargo.toml")
    });
    assert!(n >= 10, "only {n} scenario files");
}
