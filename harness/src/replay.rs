//! `migtest replay FILE`: runs one scenario file against a VMM and judges it with the model.
//! Exit codes suit `git bisect run`: 0 pass, 1 fail, 125 cannot test (file unreadable,
//! VMM missing or not launchable, capability absent).

use std::path::Path;

use crate::scenario::exec::report::run_recorded;
use crate::scenario::exec::{run_scenario, ExecError, ExecOptions};
use crate::scenario::Scenario;

/// Exit code: the scenario passed.
pub const PASS: i32 = 0;
/// Exit code: the model rejected what the VMMs did.
pub const FAIL: i32 = 1;
/// Exit code: the scenario could not be tested here (`git bisect run` skips the commit).
pub const CANNOT_TEST: i32 = 125;

/// Reads a scenario file (TOML, or JSON when the name ends in `.json`).
pub fn load(path: &Path) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let s = if path.extension().is_some_and(|e| e == "json") {
        Scenario::from_json_str(&text)?
    } else {
        Scenario::from_toml_str(&text)?
    };
    Ok(s)
}

/// Replays `path` with `opts`, printing the verdict; returns the exit code.
pub fn replay(path: &Path, opts: &ExecOptions) -> i32 {
    replay_reported(path, opts, None)
}

/// [`replay`]; with `report`, the run's telemetry is recorded and
/// `report/index.html` written (the result table, the plot, the failure
/// report and QMP transcript tails).
pub fn replay_reported(path: &Path, opts: &ExecOptions, report: Option<&Path>) -> i32 {
    let scenario = match load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("migtest replay: cannot test: {e:#}");
            return CANNOT_TEST;
        }
    };
    println!(
        "replay {} ({} ops, {}): {}",
        path.display(),
        scenario.ops.len(),
        opts.src_backend.describe(),
        scenario.purpose
    );
    let name = path
        .file_stem()
        .map_or("scenario".into(), |s| s.to_string_lossy().into_owned());
    let (result, entry) = match report {
        Some(_) => {
            let run = run_recorded(&scenario, &name, opts);
            let entry = run.entry(&name, scenario.ops.len());
            (run.result, Some(entry))
        }
        None => (run_scenario(&scenario, opts), None),
    };
    let code = match result {
        Ok(summary) => {
            for h in &summary.history {
                println!("  {h}");
            }
            println!("PASS in {:.1} s", summary.elapsed.as_secs_f64());
            PASS
        }
        Err(ExecError::CannotTest(m)) => {
            eprintln!("migtest replay: cannot test: {m}");
            CANNOT_TEST
        }
        Err(ExecError::Failed(f)) => {
            println!("FAIL {f}");
            FAIL
        }
    };
    if let (Some(dir), Some(entry)) = (report, entry) {
        let subtitle = format!(
            "{} ({}): {}",
            path.display(),
            opts.src_backend.describe(),
            scenario.purpose
        );
        if let Err(e) =
            crate::scenario::exec::report::write(dir, "migtest replay", subtitle, vec![entry])
        {
            eprintln!("migtest replay: cannot write the report: {e:#}");
        }
    }
    code
}
