//! The telemetry file of a real run reads back with the schema of
//! `docs/telemetry.md`: every line parses, every member is documented for
//! its record type, and the run's samples, events and ops are there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use migtest::backend::{qemu_pair_for_test, Backend, QEMU_TEST_MEMORY};
use migtest::catalog::{catalog, CatalogConfig};
use migtest::pair::no_progress;
use migtest::telemetry::{read_jsonl, Record, Recorder};
use serde_json::Value;

/// Record type -> members, from the tables of `docs/telemetry.md`.
fn documented_members() -> BTreeMap<String, BTreeSet<String>> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/telemetry.md"))
            .unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = None;
    for line in doc.lines() {
        if let Some(rest) = line.strip_prefix("### `") {
            current = rest.split('`').next().map(String::from);
        } else if let (Some(ty), Some(rest)) = (&current, line.strip_prefix("| `")) {
            let member = rest.split('`').next().unwrap().to_string();
            out.entry(ty.clone()).or_default().insert(member);
        }
    }
    out
}

/// Runs catalog scenario `name`, writes its telemetry, reads it back and
/// checks it against the documentation; returns the records.
fn run_and_read_back(name: &str, cfg: &CatalogConfig) -> Vec<Record> {
    let all = catalog();
    let scenario = all.iter().find(|s| s.name == name).unwrap();
    let rec = Recorder::new(name);
    let outcome = scenario.run_recorded(cfg, no_progress(), &rec);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    rec.write_jsonl(&path).unwrap();
    outcome.unwrap_or_else(|e| panic!("{e:?}"));

    let docs = documented_members();
    let text = std::fs::read_to_string(&path).unwrap();
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        let ty = v["type"].as_str().unwrap();
        let members = docs
            .get(ty)
            .unwrap_or_else(|| panic!("line {}: record type '{ty}' not documented", i + 1));
        for key in v.as_object().unwrap().keys().filter(|k| *k != "type") {
            assert!(
                members.contains(key),
                "line {}: member '{key}' of '{ty}' not in docs/telemetry.md: {line}",
                i + 1
            );
        }
    }
    let records = read_jsonl(&path).unwrap();
    assert!(
        matches!(&records[0], Record::Start { schema: 1, scenario, .. } if scenario == name),
        "{:?}",
        records[0]
    );
    assert!(
        matches!(records.last(), Some(Record::End { result, .. }) if result == "pass"),
        "{:?}",
        records.last()
    );
    let times: Vec<f64> = records.iter().map(Record::t).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not ordered by t");
    for role in ["source", "destination"] {
        assert!(
            records
                .iter()
                .any(|r| matches!(r, Record::Vm { role: r, sampled: true, .. } if r == role)),
            "no sampled {role}"
        );
    }
    records
}

fn samples(records: &[Record]) -> Vec<&migtest::telemetry::Sample> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Sample(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn ops(records: &[Record]) -> Vec<&str> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Op { op, .. } => Some(op.as_str()),
            _ => None,
        })
        .collect()
}

fn has_event(records: &[Record], vm_role: &str, name: &str) -> bool {
    records
        .iter()
        .any(|r| matches!(r, Record::Event { vm, event, .. } if vm == vm_role && event == name))
}

#[test]
fn builtin_mission_telemetry_reads_back() {
    let mut cfg = CatalogConfig::new(Backend::Builtin);
    cfg.memory = migtest::size::Size::mib(64);
    let records = run_and_read_back("mission", &cfg);
    let s = samples(&records);
    assert!(s.iter().any(|s| s.trigger == "interval"));
    assert!(s.iter().any(|s| s.trigger == "MIGRATION_PASS"));
    assert!(s.iter().any(|s| s.trigger == "MIGRATION"));
    let max_pass = s.iter().filter_map(|s| s.pass).max().unwrap_or(0);
    assert!(max_pass >= cfg.passes, "passes seen: {max_pass}");
    let done = s
        .iter()
        .find(|s| s.status.as_deref() == Some("completed"))
        .expect("a completed sample");
    assert_eq!(done.remaining, Some(0));
    assert!(s.iter().any(|s| s.dst_status.as_deref() == Some("active")));
    assert!(s
        .iter()
        .all(|s| s.status.as_deref() != Some("active") || s.mbps.is_some()));
    let o = ops(&records);
    let set = o.iter().position(|o| *o == "hold-set").expect("hold-set");
    let migrate = o.iter().position(|o| *o == "migrate").expect("migrate");
    let cleared = o
        .iter()
        .position(|o| *o == "hold-cleared")
        .expect("hold-cleared");
    assert!(set < migrate && migrate < cleared, "{o:?}");
    assert!(has_event(&records, "source", "MIGRATION_PASS"));
    assert!(has_event(&records, "destination", "MIGRATION"));
}

#[test]
fn builtin_kill_and_cancel_are_recorded() {
    let mut cfg = CatalogConfig::new(Backend::Builtin);
    cfg.memory = migtest::size::Size::mib(64);
    let killed = run_and_read_back("destination-killed", &cfg);
    assert!(ops(&killed).contains(&"kill"), "{:?}", ops(&killed));
    assert!(samples(&killed)
        .iter()
        .any(|s| s.dst_alive == Some(false) || s.status.as_deref() == Some("failed")));
    let cancelled = run_and_read_back("preheat-cancel", &cfg);
    assert!(ops(&cancelled).contains(&"cancel"));
    assert!(samples(&cancelled)
        .iter()
        .any(|s| s.status.as_deref() == Some("cancelled")));
}

#[test]
fn qemu_telemetry_reads_back() {
    let Some((src, dst)) = qemu_pair_for_test("qemu_telemetry_reads_back").unwrap() else {
        return;
    };
    let mut cfg = CatalogConfig::new(src);
    cfg.dst_backend = dst;
    cfg.memory = QEMU_TEST_MEMORY;
    let records = run_and_read_back("non-live", &cfg);
    let s = samples(&records);
    assert!(s
        .iter()
        .any(|s| s.status.as_deref() == Some("completed") && s.total_time_ms.is_some()));
    assert!(s.iter().any(|s| s.dst_status.is_some()));
    assert!(has_event(&records, "source", "MIGRATION"));
    assert!(ops(&records).contains(&"migrate"));
}

/// What nextest shows of a failing catalog case: the catalog tests panic with
/// `{e:?}` of [`catalog::run_named`]'s error, which nextest prints and puts
/// into its JUnit output. It must name the telemetry file written into the
/// kept source log directory, with the QMP transcripts beside it.
#[test]
fn failing_scenario_writes_telemetry_into_its_kept_log_dir() {
    if !migtest_vmm::FAULT_INJECTION {
        println!("NOT RUN: needs migtest-vmm's fault-injection feature (ci/test builds with it)");
        return;
    }
    let mut cfg = CatalogConfig::new(Backend::Builtin);
    cfg.memory = migtest::size::Size::mib(32);
    cfg.src_extra = vec!["-x-fault".into(), "skip-one-dirty-page".into()];
    let name = "mission/tcp/smp1";
    let err = migtest::catalog::run_named(name, &cfg)
        .expect_err("the planted fault must fail the scenario");
    let message = format!("{err:?}");
    let lines: Vec<&str> = message
        .lines()
        .filter_map(|l| l.trim().strip_prefix("telemetry: "))
        .collect();
    assert_eq!(lines.len(), 1, "one telemetry line in:\n{message}");
    let path = Path::new(lines[0]);
    let records = read_jsonl(path).unwrap_or_else(|e| panic!("{e:#}\n{message}"));
    let dirs: Vec<String> = records
        .iter()
        .filter_map(|r| match r {
            Record::Vm { log_dir, .. } => Some(log_dir.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        path.parent().map(|p| p.display().to_string()).as_ref(),
        dirs.first(),
        "written into the source's log directory"
    );
    assert!(
        matches!(&records[0], Record::Start { scenario, .. } if scenario == name),
        "{:?}",
        records[0]
    );
    assert!(
        matches!(records.last(), Some(Record::End { result, error: Some(_), .. }) if result == "fail"),
        "{:?}",
        records.last()
    );
    assert!(samples(&records)
        .iter()
        .any(|s| s.pass.is_some_and(|p| p >= 1)));
    assert!(ops(&records).contains(&"migrate"));
    let transcript =
        std::fs::read_to_string(path.with_file_name(migtest::telemetry::TRANSCRIPT_FILE)).unwrap();
    assert!(transcript.contains("\"migrate\""), "{transcript:.2000}");
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}
