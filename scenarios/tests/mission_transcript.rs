//! The mission flow's QMP transcripts, as insta snapshots: commands and
//! replies in order, and each side's event sequence with runs of
//! `MIGRATION_PASS` collapsed. Timestamps, ids, sizes, counters, timings and
//! socket paths are redacted, so the snapshot pins the protocol, not the
//! machine's speed.

use migtest::backend::Backend;
use migtest::pair::{Pair, PairLaunch};
use migtest::vm::Vm;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Replaces every number below `value` by "[n]".
fn redact_numbers(value: &mut Value) {
    match value {
        Value::Number(_) => *value = json!("[n]"),
        Value::Array(a) => a.iter_mut().for_each(redact_numbers),
        Value::Object(o) => o.values_mut().for_each(redact_numbers),
        _ => {}
    }
}

fn normalize(msg: &Value) -> Value {
    let mut m = msg.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("timestamp");
        if o.contains_key("id") {
            o.insert("id".into(), json!("[id]"));
        }
        if let Some(r) = o.get_mut("return").and_then(Value::as_object_mut) {
            for key in [
                "ram",
                "total-time",
                "setup-time",
                "downtime",
                "expected-downtime",
            ] {
                if let Some(v) = r.get_mut(key) {
                    redact_numbers(v);
                }
            }
            if r.contains_key("socket-address") {
                r.insert("socket-address".into(), json!("[address]"));
            }
        }
        if o.get("execute").and_then(Value::as_str) == Some("migrate")
            || o.get("execute").and_then(Value::as_str) == Some("migrate-incoming")
        {
            o.insert("arguments".into(), json!({"uri": "[uri]"}));
        }
        if o.get("event").and_then(Value::as_str) == Some("MIGRATION_PASS") {
            o.insert("data".into(), json!({"pass": "[n]"}));
        }
    }
    m
}

/// (commands and replies, events) of one VM, normalized; consecutive equal
/// events collapsed (the number of held passes varies from run to run).
fn transcript(vm: &Vm) -> (Vec<Value>, Vec<Value>) {
    let mut exchanges = Vec::new();
    let mut events: Vec<Value> = Vec::new();
    for entry in vm.qmp().transcript().values() {
        let dir = entry["dir"].as_str().unwrap_or("?").to_string();
        let msg = normalize(&entry["msg"]);
        if msg.get("event").is_some() {
            if events.last() != Some(&msg) {
                events.push(msg);
            }
        } else if msg.get("QMP").is_none() {
            exchanges.push(json!({"dir": dir, "msg": msg}));
        }
    }
    (exchanges, events)
}

#[test]
fn mission_flow_transcripts() {
    let mut spec = PairLaunch::new(Backend::Builtin);
    spec.pair.memory = migtest::size::Size(64 << 20);
    let mut pair = Pair::launch(spec).expect("launch");
    let hold = pair.hold_switchover().expect("hold");
    assert_eq!(hold.to_string(), "switchover-hold");
    pair.migrate().expect("migrate");
    pair.src
        .wait_event_matching(
            "MIGRATION_PASS",
            |e| e.data.as_ref().and_then(|d| d["pass"].as_u64()) >= Some(3),
            T,
        )
        .expect("3 passes while held");
    assert_eq!(pair.src.events_seen("STOP"), 0, "STOP while held");
    pair.release_switchover().expect("release");
    pair.src
        .wait_migration_event("completed", T)
        .expect("source completed");
    let dst = pair.dst.as_ref().expect("destination");
    dst.wait_migration_event("completed", T)
        .expect("destination completed");
    pair.src.wait_event("STOP", T).expect("STOP");
    let (src_x, src_ev) = transcript(&pair.src);
    let (dst_x, dst_ev) = transcript(dst);
    insta::assert_json_snapshot!("source_commands", src_x);
    insta::assert_json_snapshot!("source_events", src_ev);
    insta::assert_json_snapshot!("destination_commands", dst_x);
    insta::assert_json_snapshot!("destination_events", dst_ev);
}
