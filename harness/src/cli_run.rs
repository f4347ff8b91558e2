//! `migtest run`: the scenario catalog from a terminal, with a live progress
//! display (an `indicatif` spinner line on a terminal, plain lines in a
//! pipe or CI) and a result table that fits 80 columns.

use crate::backend::Backend;
use crate::catalog::{catalog, CatalogConfig, ScenarioOutcome};
use crate::pair::{HoldMethod, Progress};
use crate::report::{Entry, Report, Verdict};
use crate::telemetry::{Recorder, TRANSCRIPT_FILE};
/// Kept here for callers of `cli_run::wrap`; it lives in [`crate::text`].
pub use crate::text::wrap;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use migtest_qmp::schema::MigrationInfo;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of `migtest run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Backend settings.
    pub config: CatalogConfig,
    /// Only scenarios whose name contains this.
    pub filter: Option<String>,
    /// Write an HTML report with telemetry plots into this directory.
    pub report: Option<std::path::PathBuf>,
}

/// Least time between two plain progress lines that only report a new
/// pass count (a status change is printed at once).
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// The terminal display of the scenario being run: an `indicatif` spinner
/// line redrawn in place, with the scenario's number, name and elapsed time.
fn spinner(index: usize, total: usize, name: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
    let style = ProgressStyle::with_template("{spinner} [{prefix}] {elapsed:>4} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_prefix(format!("{index}/{total} {}", truncate(name, 28)));
    bar.set_message("starting");
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// The progress sink of one scenario: the migration status, the pass count
/// (`dirty-sync-count`), the remaining RAM and the step, shown on `bar`
/// (a terminal); without one (CI, a pipe) a plain line whenever the status
/// changes, and at most every [`PLAIN_EVERY`] when only the pass count did.
fn live_status(name: &str, bar: Option<ProgressBar>) -> Progress {
    let name = name.to_string();
    // (status, pass) of the last plain line, and when it was printed.
    let last = Mutex::new((String::new(), 0u64, Instant::now()));
    Arc::new(move |what: &str, info: &MigrationInfo| {
        let ram = info.ram.clone().unwrap_or_default();
        let status = info.status.map(|s| s.as_str()).unwrap_or("none");
        let pass = ram.dirty_sync_count;
        if let Some(bar) = &bar {
            bar.set_message(format!(
                "{status:<14} pass {pass:>4} rem {:>7} KiB  {what}",
                ram.remaining / 1024
            ));
            return;
        }
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        let new_status = last.0 != status;
        if new_status || (pass != last.1 && last.2.elapsed() >= PLAIN_EVERY) {
            println!("    {name}: {status}, pass {pass} ({what})");
            *last = (status.to_string(), pass, Instant::now());
        }
    })
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

/// One row of the result table.
struct Row {
    name: String,
    result: Result<ScenarioOutcome, String>,
    telemetry: Recorder,
}

/// Runs the catalog; returns the process exit code (0 all passed, 1 otherwise).
pub fn run(opts: &RunOptions) -> i32 {
    let scenarios: Vec<_> = catalog()
        .into_iter()
        .filter(|s| opts.filter.as_deref().is_none_or(|f| s.name.contains(f)))
        .collect();
    if scenarios.is_empty() {
        eprintln!("migtest run: no scenario matches the filter");
        return 1;
    }
    let backend = match (&opts.config.backend, &opts.config.dst_backend) {
        (Backend::Builtin, Backend::Builtin) => "builtin migtest-vmm".to_string(),
        (src, dst) if src == dst => src.describe(),
        (src, dst) => format!("{} -> {}", src.describe(), dst.describe()),
    };
    println!(
        "migtest: {} scenario(s) on {backend}, {} MiB, {} held passes",
        scenarios.len(),
        opts.config.memory.bytes() >> 20,
        opts.config.passes
    );
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut rows = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        let bar = tty.then(|| spinner(i + 1, scenarios.len(), &s.name));
        if bar.is_none() {
            println!("  [{}/{}] {} ...", i + 1, scenarios.len(), s.name);
        }
        let telemetry = Recorder::new(&s.name);
        let result = s
            .run_recorded(&opts.config, live_status(&s.name, bar.clone()), &telemetry)
            .map_err(|e| format!("{e:#}"));
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let mark = match &result {
            Ok(o) if o.skipped.is_some() => "skip",
            Ok(_) => "ok  ",
            Err(_) => "FAIL",
        };
        let passes = match &result {
            Ok(o) => o
                .figures
                .as_ref()
                .map(|f| format!(" ({} passes)", f.passes)),
            Err(_) => None,
        };
        println!(
            "  {mark} {}{}",
            truncate(&s.name, 60),
            passes.unwrap_or_default()
        );
        match &result {
            Err(e) => {
                for line in e.lines() {
                    println!("       {line}");
                }
            }
            Ok(o) => {
                for line in o.skipped.iter().chain(&o.notes) {
                    for l in wrap(line, 71) {
                        println!("       {l}");
                    }
                }
                for dir in &o.kept_logs {
                    println!("       kept logs: {}", dir.display());
                }
            }
        }
        rows.push(Row {
            name: s.name.clone(),
            result,
            telemetry,
        });
    }
    print_table(&rows);
    if let Some(dir) = &opts.report {
        let subtitle = format!(
            "{} scenario(s) on {backend}, {} MiB, {} held passes",
            rows.len(),
            opts.config.memory.bytes() >> 20,
            opts.config.passes
        );
        match report(&rows, subtitle).write(dir) {
            Ok(path) => println!("report: {}", path.display()),
            Err(e) => {
                eprintln!("migtest run: cannot write the report: {e:#}");
                return 1;
            }
        }
    }
    let failed = rows.iter().filter(|r| r.result.is_err()).count();
    let skipped = rows
        .iter()
        .filter(|r| r.result.as_ref().is_ok_and(|o| o.skipped.is_some()))
        .count();
    println!(
        "{} passed, {} failed, {} skipped (not run) in {:.1} s",
        rows.len() - failed - skipped,
        failed,
        skipped,
        start.elapsed().as_secs_f64()
    );
    i32::from(failed > 0)
}

const COLUMNS: [&str; 5] = ["hold", "passes", "time s", "downtime", "MB/s"];

/// The result and the [`COLUMNS`] cells of a row.
fn cells(r: &Row) -> (&'static str, [String; 5]) {
    let hold = match r.result.as_ref().ok().and_then(|o| o.hold) {
        Some(HoldMethod::SwitchoverHold) => "switch",
        Some(HoldMethod::LegacyThrottle) => "legacy",
        None => "-",
    }
    .to_string();
    let dash = || "-".to_string();
    match &r.result {
        Ok(o) if o.skipped.is_some() => (
            "skip",
            [
                hold,
                dash(),
                format!("{:.2}", o.elapsed.as_secs_f64()),
                dash(),
                dash(),
            ],
        ),
        Ok(o) => {
            let f = o.figures.clone().unwrap_or_default();
            let has = o.figures.is_some();
            (
                "ok",
                [
                    hold,
                    if has { f.passes.to_string() } else { dash() },
                    format!("{:.2}", o.elapsed.as_secs_f64()),
                    f.downtime_ms.map_or(dash(), |d| format!("{d} ms")),
                    if has {
                        format!("{:.0}", f.throughput_mbs)
                    } else {
                        dash()
                    },
                ],
            )
        }
        Err(_) => ("FAIL", [hold, dash(), dash(), dash(), dash()]),
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<28} {:<6} {:<6} {:>6} {:>8} {:>9} {:>9}",
        "scenario", "result", COLUMNS[0], COLUMNS[1], COLUMNS[2], COLUMNS[3], COLUMNS[4]
    );
    println!("{}", "-".repeat(78));
    for r in rows {
        let (res, [hold, passes, time, down, mbs]) = cells(r);
        println!(
            "{:<28} {:<6} {:<6} {:>6} {:>8} {:>9} {:>9}",
            truncate(&r.name, 28),
            res,
            hold,
            passes,
            time,
            down,
            mbs
        );
    }
    println!();
}

/// The HTML report of a run: the table, each scenario's telemetry, and
/// for failures the report text and the QMP transcripts kept beside the
/// telemetry in the source's log directory.
fn report(rows: &[Row], subtitle: String) -> Report {
    let entries = rows
        .iter()
        .map(|r| {
            let (res, cells) = cells(r);
            let verdict = match res {
                "ok" => Verdict::Pass,
                "skip" => Verdict::Skip,
                _ => Verdict::Fail,
            };
            let text = match &r.result {
                Err(e) => Some(e.clone()),
                Ok(o) => {
                    let lines: Vec<&str> = o
                        .skipped
                        .iter()
                        .chain(&o.notes)
                        .map(String::as_str)
                        .collect();
                    (!lines.is_empty()).then(|| lines.join("\n"))
                }
            };
            let transcript = r.result.is_err().then(|| {
                r.telemetry
                    .log_dirs()
                    .first()
                    .and_then(|d| std::fs::read_to_string(d.join(TRANSCRIPT_FILE)).ok())
            });
            Entry {
                name: r.name.clone(),
                verdict,
                cells: cells.to_vec(),
                text,
                transcript: transcript.flatten(),
                runs: vec![(r.name.clone(), r.telemetry.records())],
            }
        })
        .collect();
    Report {
        title: "migtest run".into(),
        subtitle,
        columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
        entries,
    }
}
