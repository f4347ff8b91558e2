//! `migtest compare SCENARIO`: one catalog scenario on the builtin VMM and
//! on QEMU, side by side: the event sequence (`MIGRATION`,
//! `MIGRATION_PASS`, `STOP`, `RESUME`, runs of passes collapsed), pass
//! counts, times, downtime, throughput, and every difference in the shape
//! (keys and JSON types) of the `query-migrate`, `query-migrate-parameters`
//! and `query-status` replies seen during the run.
//!
//! Recording works through a [`ReplyObserver`] that [`record`] hands to the
//! run, which plugs it into its VMs ([`CatalogConfig::observer`]); VMs
//! without it record nothing.

use crate::catalog::{catalog, CatalogConfig, ScenarioOutcome};
use crate::pair::no_progress;
use crate::vm::{ReplyObserver, Vm};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Commands whose reply shapes are recorded.
pub const SHAPED_COMMANDS: [&str; 3] =
    ["query-migrate", "query-migrate-parameters", "query-status"];

/// Event names shown in the sequence.
pub const SEQUENCE_EVENTS: [&str; 4] = ["MIGRATION", "MIGRATION_PASS", "STOP", "RESUME"];

/// Key path (`ram.transferred`) to the JSON types seen there.
pub type Shape = BTreeMap<String, BTreeSet<&'static str>>;

/// One event of the merged sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqEvent {
    /// Receive time relative to the start of the recording.
    pub ms: u64,
    /// `src`, `dst`, `dst2`, ... (destinations numbered from the second).
    pub who: String,
    /// Event name.
    pub event: String,
    /// `MIGRATION`'s status or `MIGRATION_PASS`'s pass, else empty.
    pub detail: String,
}

/// What one run recorded.
#[derive(Debug, Default)]
pub struct Recording {
    /// Reply shapes per command.
    pub shapes: BTreeMap<String, Shape>,
    /// Events of every VM, ordered by receive time.
    pub events: Vec<SeqEvent>,
}

#[derive(Debug)]
struct VmEvents {
    label: String,
    events: Vec<crate::qmp_client::ReceivedEvent>,
}

#[derive(Debug, Default)]
struct RecorderState {
    shapes: BTreeMap<String, Shape>,
    /// Per VMM pid.
    vms: BTreeMap<u32, VmEvents>,
    destinations: u32,
}

/// The [`ReplyObserver`] [`record`] plugs into the VMs of a run.
#[derive(Debug)]
struct Recorder {
    start: Instant,
    state: Mutex<RecorderState>,
}

impl ReplyObserver for Recorder {
    fn observe(&self, vm: &Vm, command: &str, reply: &Value) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let rec = &mut *guard;
        if SHAPED_COMMANDS.contains(&command) {
            shape_of(
                reply,
                "",
                rec.shapes.entry(command.to_string()).or_default(),
            );
        }
        let pid = vm.pid();
        if !rec.vms.contains_key(&pid) {
            let label = if vm.role() == "source" {
                "src".to_string()
            } else {
                rec.destinations += 1;
                if rec.destinations == 1 {
                    "dst".to_string()
                } else {
                    format!("dst{}", rec.destinations)
                }
            };
            rec.vms.insert(
                pid,
                VmEvents {
                    label,
                    events: Vec::new(),
                },
            );
        }
        if let Some(v) = rec.vms.get_mut(&pid) {
            v.events = vm.qmp().received_events();
        }
    }
}

/// Adds the key paths and JSON types of `v` under `prefix` to `shape`.
pub fn shape_of(v: &Value, prefix: &str, shape: &mut Shape) {
    let ty = migtest_qmp::schema::json_type_name(v);
    if !prefix.is_empty() {
        shape.entry(prefix.to_string()).or_default().insert(ty);
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                shape_of(x, &p, shape);
            }
        }
        Value::Array(a) => {
            for x in a {
                shape_of(x, &format!("{prefix}[]"), shape);
            }
        }
        _ => {}
    }
}

/// Runs `f` with a recorder it can plug into the VMs it launches (for
/// the catalog: [`CatalogConfig::observer`]); returns its result and what
/// was recorded.
pub fn record<T>(f: impl FnOnce(Arc<dyn ReplyObserver>) -> T) -> (T, Recording) {
    let recorder = Arc::new(Recorder {
        start: Instant::now(),
        state: Mutex::default(),
    });
    let out = f(recorder.clone());
    let start = recorder.start;
    let rec = std::mem::take(&mut *recorder.state.lock().unwrap_or_else(|e| e.into_inner()));
    let mut events = Vec::new();
    for v in rec.vms.values() {
        for e in &v.events {
            if !SEQUENCE_EVENTS.contains(&e.event.event.as_str()) {
                continue;
            }
            let data = e.event.data.as_ref();
            let detail = match e.event.event.as_str() {
                "MIGRATION" => data
                    .and_then(|d| d.get("status"))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string(),
                "MIGRATION_PASS" => data
                    .and_then(|d| d.get("pass"))
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            events.push(SeqEvent {
                ms: e.received.saturating_duration_since(start).as_millis() as u64,
                who: v.label.clone(),
                event: e.event.event.clone(),
                detail,
            });
        }
    }
    events.sort_by_key(|e| e.ms);
    (
        out,
        Recording {
            shapes: rec.shapes,
            events,
        },
    )
}

/// The sequence as lines, consecutive `MIGRATION_PASS` events of one VM
/// collapsed into `src MIGRATION_PASS 2..7 (x6)`.
pub fn sequence_lines(events: &[SeqEvent]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let e = &events[i];
        if e.event == "MIGRATION_PASS" {
            let mut j = i;
            while j + 1 < events.len()
                && events[j + 1].event == "MIGRATION_PASS"
                && events[j + 1].who == e.who
            {
                j += 1;
            }
            if j > i {
                out.push(format!(
                    "{} PASS {}..{} (x{})",
                    e.who,
                    e.detail,
                    events[j].detail,
                    j - i + 1
                ));
                i = j + 1;
                continue;
            }
            out.push(format!("{} PASS {}", e.who, e.detail));
        } else if e.detail.is_empty() {
            out.push(format!("{} {}", e.who, e.event));
        } else {
            out.push(format!("{} {} {}", e.who, e.event, e.detail));
        }
        i += 1;
    }
    out
}

/// One backend's run.
pub struct Side {
    /// `builtin` or `qemu`.
    pub name: String,
    /// What the catalog reported.
    pub result: Result<ScenarioOutcome, String>,
    /// What was recorded.
    pub recording: Recording,
    /// The run's telemetry (for `--report`).
    pub telemetry: crate::telemetry::Recorder,
}

/// Runs `scenario` with `cfg`, recording it.
pub fn run_side(name: &str, scenario: &str, cfg: &CatalogConfig) -> anyhow::Result<Side> {
    let all = catalog();
    let s = all
        .iter()
        .find(|s| s.name == scenario)
        .ok_or_else(|| anyhow::anyhow!("no scenario named '{scenario}' (see `migtest list`)"))?;
    let telemetry = crate::telemetry::Recorder::new(scenario);
    let (result, recording) = record(|observer| {
        let mut cfg = cfg.clone();
        cfg.observer = Some(observer);
        s.run_recorded(&cfg, no_progress(), &telemetry)
    });
    Ok(Side {
        name: name.to_string(),
        result: result.map_err(|e| format!("{e:#}")),
        recording,
        telemetry,
    })
}

/// The `--report` page of a comparison: one entry, both runs on one plot.
pub fn html_report(scenario: &str, a: &Side, b: &Side) -> crate::report::Report {
    use crate::report::{Entry, Report, Verdict};
    let failed = a.result.is_err() || b.result.is_err();
    let cell = |s: &Side| match &s.result {
        Ok(o) => o.figures.as_ref().map_or("-".to_string(), |f| {
            format!(
                "{} passes, {} ms down, {:.0} MB/s",
                f.passes,
                f.downtime_ms.unwrap_or(0),
                f.throughput_mbs
            )
        }),
        Err(_) => "FAIL".to_string(),
    };
    let errors: Vec<String> = [a, b]
        .iter()
        .filter_map(|s| s.result.as_ref().err().map(|e| format!("{}: {e}", s.name)))
        .collect();
    Report {
        title: format!("migtest compare {scenario}"),
        subtitle: "builtin (solid) and QEMU (dashed) on one plot".into(),
        columns: vec![a.name.clone(), b.name.clone()],
        entries: vec![Entry {
            name: scenario.to_string(),
            verdict: if failed { Verdict::Fail } else { Verdict::Pass },
            cells: vec![cell(a), cell(b)],
            text: Some(report(scenario, a, b))
                .into_iter()
                .chain(errors)
                .reduce(|x, y| x + "\n" + &y),
            transcript: None,
            runs: vec![
                (a.name.clone(), a.telemetry.records()),
                (b.name.clone(), b.telemetry.records()),
            ],
        }],
    }
}

const COL: usize = 25;

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

fn row(out: &mut String, label: &str, a: &str, b: &str) {
    let _ = writeln!(
        out,
        "{:<26} {:<COL$} {:<COL$}",
        cut(label, 26),
        cut(a, COL),
        cut(b, COL)
    );
}

/// The side-by-side report (at most 79 columns wide).
pub fn report(scenario: &str, a: &Side, b: &Side) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "migtest compare: {scenario}");
    let _ = writeln!(out);
    row(&mut out, "", &a.name, &b.name);
    let _ = writeln!(out, "{}", "-".repeat(78));
    let figs = |s: &Side| -> [String; 7] {
        match &s.result {
            Err(_) => [
                "FAIL".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
            Ok(o) => {
                let f = o.figures.clone();
                [
                    if o.skipped.is_some() {
                        "skipped".into()
                    } else {
                        "ok".into()
                    },
                    o.hold.map_or("-".into(), |h| match h {
                        crate::pair::HoldMethod::SwitchoverHold => "switchover-hold".into(),
                        crate::pair::HoldMethod::LegacyThrottle => "legacy 3 MB/s, 1 ms".into(),
                    }),
                    f.as_ref().map_or("-".into(), |f| f.passes.to_string()),
                    format!("{:.2} s", o.elapsed.as_secs_f64()),
                    f.as_ref()
                        .map_or("-".into(), |f| format!("{} ms", f.total_ms)),
                    f.as_ref()
                        .and_then(|f| f.downtime_ms)
                        .map_or("-".into(), |d| format!("{d} ms")),
                    f.as_ref()
                        .map_or("-".into(), |f| format!("{:.1} MB/s", f.throughput_mbs)),
                ]
            }
        }
    };
    let (fa, fb) = (figs(a), figs(b));
    for (i, label) in [
        "result",
        "hold",
        "passes (dirty-sync-count)",
        "scenario wall time",
        "migration total-time",
        "downtime",
        "throughput",
    ]
    .iter()
    .enumerate()
    {
        row(&mut out, label, &fa[i], &fb[i]);
    }
    let count = |s: &Side, name: &str| {
        s.recording
            .events
            .iter()
            .filter(|e| e.event == name)
            .count()
            .to_string()
    };
    for name in SEQUENCE_EVENTS {
        row(
            &mut out,
            &format!("{name} events"),
            &count(a, name),
            &count(b, name),
        );
    }
    for s in [a, b] {
        if let Err(e) = &s.result {
            let _ = writeln!(out, "\n{} failed:", s.name);
            for l in e.lines() {
                for w in crate::text::wrap(l, 74) {
                    let _ = writeln!(out, "    {w}");
                }
            }
        }
        if let Ok(o) = &s.result {
            for n in o.skipped.iter().chain(&o.notes) {
                let _ = writeln!(out, "\n{} note:", s.name);
                for w in crate::text::wrap(n, 74) {
                    let _ = writeln!(out, "    {w}");
                }
            }
        }
    }

    let _ = writeln!(out, "\nevent sequence (in order received)");
    let _ = writeln!(out, "{}", "-".repeat(78));
    let (sa, sb) = (
        sequence_lines(&a.recording.events),
        sequence_lines(&b.recording.events),
    );
    let _ = writeln!(out, "{:<38} | {}", a.name, b.name);
    for i in 0..sa.len().max(sb.len()) {
        let l = sa.get(i).map(String::as_str).unwrap_or("");
        let r = sb.get(i).map(String::as_str).unwrap_or("");
        let mark = if l == r { ' ' } else { '*' };
        let _ = writeln!(out, "{:<37}{mark} | {}", cut(l, 37), cut(r, 37));
    }
    let _ = writeln!(out, "(* = the two sequences differ on this line)");

    let _ = writeln!(out, "\nQMP reply shapes (keys and JSON types)");
    let _ = writeln!(out, "{}", "-".repeat(78));
    let mut any = false;
    for cmd in SHAPED_COMMANDS {
        let empty = Shape::new();
        let sa = a.recording.shapes.get(cmd);
        let sb = b.recording.shapes.get(cmd);
        if sa.is_none() || sb.is_none() {
            let _ = writeln!(
                out,
                "{cmd}: not seen on {}",
                match (sa, sb) {
                    (None, None) => "either side".to_string(),
                    (None, _) => a.name.clone(),
                    _ => b.name.clone(),
                }
            );
            continue;
        }
        let (sa, sb) = (sa.unwrap_or(&empty), sb.unwrap_or(&empty));
        let keys: BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
        let types = |s: &Shape, k: &String| {
            s.get(k).map_or("(absent)".to_string(), |t| {
                t.iter().copied().collect::<Vec<_>>().join("|")
            })
        };
        let diffs: Vec<_> = keys.iter().filter(|k| sa.get(**k) != sb.get(**k)).collect();
        let _ = writeln!(
            out,
            "{cmd}: {} keys, {} same, {} differ",
            keys.len(),
            keys.len() - diffs.len(),
            diffs.len()
        );
        for k in diffs {
            any = true;
            let _ = writeln!(
                out,
                "  {:<36} {:<19} {}",
                cut(k, 36),
                cut(&format!("{}: {}", a.name, types(sa, k)), 19),
                cut(&format!("{}: {}", b.name, types(sb, k)), 19)
            );
        }
    }
    if !any {
        let _ = writeln!(out, "no shape differences");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_flatten_keys_and_types() {
        let mut s = Shape::new();
        shape_of(
            &json!({"status": "active", "ram": {"total": 1, "mbps": 0.5}, "a": [{"x": null}]}),
            "",
            &mut s,
        );
        shape_of(
            &json!({"status": "active", "ram": {"total": 2.5}}),
            "",
            &mut s,
        );
        let flat: Vec<String> = s
            .iter()
            .map(|(k, v)| format!("{k}={}", v.iter().copied().collect::<Vec<_>>().join("|")))
            .collect();
        assert_eq!(
            flat,
            [
                "a=array",
                "a[]=object",
                "a[].x=null",
                "ram=object",
                "ram.mbps=number",
                "ram.total=number",
                "status=string"
            ]
        );
    }

    #[test]
    fn passes_collapse() {
        let ev = |who: &str, event: &str, detail: &str| SeqEvent {
            ms: 0,
            who: who.into(),
            event: event.into(),
            detail: detail.into(),
        };
        let lines = sequence_lines(&[
            ev("src", "MIGRATION", "setup"),
            ev("src", "MIGRATION_PASS", "1"),
            ev("src", "MIGRATION_PASS", "2"),
            ev("src", "MIGRATION_PASS", "3"),
            ev("dst", "MIGRATION", "active"),
            ev("src", "MIGRATION_PASS", "4"),
            ev("src", "STOP", ""),
        ]);
        assert_eq!(
            lines,
            [
                "src MIGRATION setup",
                "src PASS 1..3 (x3)",
                "dst MIGRATION active",
                "src PASS 4",
                "src STOP"
            ]
        );
    }

    #[test]
    fn nothing_recorded_without_a_run() {
        let ((), rec) = record(|_observer| {});
        assert!(rec.events.is_empty());
        assert!(rec.shapes.is_empty());
    }
}
