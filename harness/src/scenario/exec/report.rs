//! A scenario-file run with its telemetry, as one entry of a `--report`
//! page (`migtest replay --report DIR`, and the shrunk case of a failing
//! `migtest fuzz --report DIR`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{run_scenario, ExecError, ExecOptions, RunSummary};
use crate::report::{Entry, Report, Verdict};
use crate::scenario::Scenario;
use crate::telemetry::Recorder;

/// The table columns of a scenario-file report, after scenario and result.
pub const COLUMNS: [&str; 2] = ["ops", "time s"];

/// A run of one scenario file and its telemetry.
pub struct RecordedRun {
    /// What [`run_scenario`] returned.
    pub result: Result<RunSummary, ExecError>,
    /// The run's telemetry (finished).
    pub telemetry: Recorder,
    /// Wall time of the run.
    pub elapsed: std::time::Duration,
}

/// Runs `scenario` (named `name` in its telemetry) with `opts`, recording
/// telemetry as the catalog does.
pub fn run_recorded(scenario: &Scenario, name: &str, opts: &ExecOptions) -> RecordedRun {
    let telemetry = Recorder::new(name);
    let start = Instant::now();
    let result = {
        let _on = telemetry.start();
        run_scenario(scenario, opts)
    };
    match &result {
        Ok(_) => telemetry.finish(Ok(true)),
        Err(ExecError::CannotTest(_)) => telemetry.finish(Ok(false)),
        Err(e) => telemetry.finish(Err(&e.to_string())),
    }
    RecordedRun {
        result,
        telemetry,
        elapsed: start.elapsed(),
    }
}

impl RecordedRun {
    /// The report entry: verdict, ops and time, the failure report (or the
    /// reason it could not run) and the QMP transcript tails, the telemetry.
    pub fn entry(&self, name: &str, ops: usize) -> Entry {
        let (verdict, text, transcript) = match &self.result {
            Ok(s) => (Verdict::Pass, Some(s.history.join("\n")), None),
            Err(ExecError::CannotTest(m)) => {
                (Verdict::Skip, Some(format!("cannot test: {m}")), None)
            }
            Err(ExecError::Failed(f)) => (
                Verdict::Fail,
                Some(f.to_string()),
                Some(f.transcripts.clone()),
            ),
        };
        Entry {
            name: name.to_string(),
            verdict,
            cells: vec![
                ops.to_string(),
                format!("{:.2}", self.elapsed.as_secs_f64()),
            ],
            text: text.filter(|t| !t.is_empty()),
            transcript,
            runs: vec![(name.to_string(), self.telemetry.records())],
        }
    }
}

/// Writes `dir/index.html` with `entries` under `title`; prints and
/// returns its path.
pub fn write(
    dir: &Path,
    title: &str,
    subtitle: String,
    entries: Vec<Entry>,
) -> anyhow::Result<PathBuf> {
    let report = Report {
        title: title.to_string(),
        subtitle,
        columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
        entries,
    };
    let path = report.write(dir)?;
    println!("report: {}", path.display());
    Ok(path)
}
