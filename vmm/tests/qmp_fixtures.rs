//! Replays the QMP exchanges recorded from real QEMU 7.2
//! (`fixtures/qemu-7.2/*.json`) against migtest-vmm and compares the replies:
//! same keys, same JSON types, same error classes, same `desc` texts, same
//! string/bool values, same event sequences. Every difference found is
//! rendered as one line; the set of lines must equal [`ALLOWED`] exactly, so
//! a new difference fails, and so does a listed one that went away (update
//! `docs/qemu-compatibility.md` and the list together).

mod common;

use common::{Launch, Qmp, Vmm};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// Documented differences (see docs/qemu-compatibility.md). `DIR` stands
/// for the test's temp dir, where QEMU had `/tmp/migtest-rec`.
const ALLOWED: &[&str] = &[
    // Deliberate: migtest-vmm offers no out-of-band execution.
    r#"greeting #0 reply.QMP.capabilities: QEMU ["oob"], migtest-vmm []"#,
    // Deliberate: one QMP message is at most 1 MiB (QEMU: 64 MiB, 2 Mi tokens).
    r#"bad-input-too-many-tokens #1: replies by desc QEMU {"JSON parse error, expecting value": 51425, "JSON token count limit exceeded": 1, "QMP input must be a JSON object": 51425}, migtest-vmm {"JSON parse error, message exceeds 1048576 bytes": 1}"#,
    // Deliberate: migtest-vmm implements only the migration parameters it uses, plus
    // `switchover-hold` and `avail-switchover-bandwidth` (QEMU 8.1+).
    r#"migrate-set-parameters-max-bandwidth-negative #2 reply.return: extra keys ["avail-switchover-bandwidth", "switchover-hold"]"#,
    r#"migrate-set-parameters-max-bandwidth-negative #2 reply.return: missing keys ["announce-initial", "announce-max", "announce-rounds", "announce-step", "block-incremental", "compress-level", "compress-threads", "compress-wait-thread", "decompress-threads", "multifd-compression", "multifd-zlib-level", "multifd-zstd-level", "throttle-trigger-threshold", "tls-authz", "tls-creds", "tls-hostname", "x-checkpoint-delay"]"#,
    r#"migrate-set-parameters-max-bandwidth-too-large #2 reply.return: extra keys ["avail-switchover-bandwidth", "switchover-hold"]"#,
    r#"migrate-set-parameters-max-bandwidth-too-large #2 reply.return: missing keys ["announce-initial", "announce-max", "announce-rounds", "announce-step", "block-incremental", "compress-level", "compress-threads", "compress-wait-thread", "decompress-threads", "multifd-compression", "multifd-zlib-level", "multifd-zstd-level", "throttle-trigger-threshold", "tls-authz", "tls-creds", "tls-hostname", "x-checkpoint-delay"]"#,
    r#"query-migrate-parameters #1 reply.return: extra keys ["avail-switchover-bandwidth", "switchover-hold"]"#,
    r#"query-migrate-parameters #1 reply.return: missing keys ["announce-initial", "announce-max", "announce-rounds", "announce-step", "block-incremental", "compress-level", "compress-threads", "compress-wait-thread", "decompress-threads", "multifd-compression", "multifd-zlib-level", "multifd-zstd-level", "throttle-trigger-threshold", "tls-authz", "tls-creds", "tls-hostname", "x-checkpoint-delay"]"#,
    // migration/params.rs (not owned here): texts and unsupported parameters.
    // migration/incoming.rs: a waiting destination reports `setup` (the harness model relies on it).
    r#"query-migrate-dst-waiting #1 reply.return: extra keys ["status"]"#,
];

const REC_DIR: &str = "/tmp/migtest-rec";

fn fixtures_dir() -> std::path::PathBuf {
    common::repo().join("fixtures/qemu-7.2")
}

/// Loads a fixture's transcript with the recorder's dir replaced by `dir`.
fn transcript(name: &str, dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures_dir().join(format!("{name}.json")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = text.replace(REC_DIR, &dir.display().to_string());
    let v: Value = serde_json::from_str(&text).unwrap();
    v["transcript"].as_array().unwrap().clone()
}

/// Keys whose string values legitimately differ (version strings).
const VOLATILE_STRINGS: &[&str] = &["package"];

use migtest_qmp::schema::json_type_name as kind;

/// Structural comparison of one QEMU message with ours.
fn compare(ctx: &str, path: &str, q: &Value, o: &Value, out: &mut Vec<String>) {
    if kind(q) != kind(o) {
        out.push(format!(
            "{ctx} {path}: type QEMU {} ({q}), migtest-vmm {} ({o})",
            kind(q),
            kind(o)
        ));
        return;
    }
    match (q, o) {
        (Value::Object(qm), Value::Object(om)) => {
            let qk: BTreeSet<&String> = qm.keys().collect();
            let ok: BTreeSet<&String> = om.keys().collect();
            let missing: Vec<_> = qk.difference(&ok).collect();
            let extra: Vec<_> = ok.difference(&qk).collect();
            if !missing.is_empty() {
                out.push(format!("{ctx} {path}: missing keys {missing:?}"));
            }
            if !extra.is_empty() {
                out.push(format!("{ctx} {path}: extra keys {extra:?}"));
            }
            for k in qk.intersection(&ok) {
                if VOLATILE_STRINGS.contains(&k.as_str()) {
                    continue;
                }
                compare(ctx, &format!("{path}.{k}"), &qm[*k], &om[*k], out);
            }
        }
        (Value::Array(qa), Value::Array(oa)) => {
            let by_cap = |a: &Vec<Value>| -> Option<BTreeMap<String, Value>> {
                a.iter()
                    .map(|e| Some((e.get("capability")?.as_str()?.to_string(), e.clone())))
                    .collect()
            };
            if let (Some(qc), Some(oc)) = (by_cap(qa), by_cap(oa)) {
                if !qa.is_empty() && !oa.is_empty() {
                    // capability lists: compare by name
                    let missing: Vec<_> = qc.keys().filter(|k| !oc.contains_key(*k)).collect();
                    let extra: Vec<_> = oc.keys().filter(|k| !qc.contains_key(*k)).collect();
                    if !missing.is_empty() {
                        out.push(format!("{ctx} {path}: missing capabilities {missing:?}"));
                    }
                    if !extra.is_empty() {
                        out.push(format!("{ctx} {path}: extra capabilities {extra:?}"));
                    }
                    for (k, qv) in &qc {
                        if let Some(ov) = oc.get(k) {
                            compare(ctx, &format!("{path}[{k}]"), qv, ov, out);
                        }
                    }
                    return;
                }
            }
            if qa.len() != oa.len() || qa.iter().any(|e| !e.is_object()) {
                if qa != oa {
                    out.push(format!("{ctx} {path}: QEMU {q}, migtest-vmm {o}"));
                }
                return;
            }
            for (i, (qe, oe)) in qa.iter().zip(oa).enumerate() {
                compare(ctx, &format!("{path}[{i}]"), qe, oe, out);
            }
        }
        (Value::Number(_), Value::Number(_)) => {}
        _ => {
            if q != o {
                out.push(format!("{ctx} {path}: QEMU {q}, migtest-vmm {o}"));
            }
        }
    }
}

fn is_event(m: &Value) -> bool {
    m.get("event").is_some()
}

/// An event without its timestamp.
fn event_key(m: &Value) -> Value {
    json!({"event": m["event"], "data": m.get("data").cloned().unwrap_or(Value::Null)})
}

/// Expected messages of a step, repeats expanded.
fn expand(recvs: &[Value]) -> Vec<Value> {
    let mut v = Vec::new();
    for r in recvs {
        let n = r.get("repeat").and_then(Value::as_u64).unwrap_or(1);
        for _ in 0..n {
            v.push(serde_json::from_str(r["line"].as_str().unwrap()).unwrap());
        }
    }
    v
}

/// The raw bytes of a `send_raw`/`send_raw_summary` entry.
fn raw_bytes(e: &Value) -> Vec<u8> {
    if let Some(s) = e.get("send_raw").and_then(Value::as_str) {
        // The recorder stored the invalid bytes \xff\xfe as U+FFFD.
        let mut out = Vec::new();
        let mut n = 0;
        for ch in s.chars() {
            if ch == '\u{fffd}' {
                out.push(if n % 2 == 0 { 0xff } else { 0xfe });
                n += 1;
            } else {
                let mut b = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
            }
        }
        return out;
    }
    let summary = e["send_raw_summary"].as_str().unwrap();
    let len = e["len"].as_u64().unwrap() as usize;
    let bytes = if summary.starts_with("1100 nested") {
        format!("{}{}\n", "[".repeat(1100), "]".repeat(1100)).into_bytes()
    } else if summary.contains("zeros") {
        let mut s = String::with_capacity(len);
        s.push('[');
        for i in 0..1_100_001 {
            if i > 0 {
                s.push(',');
            }
            s.push('0');
        }
        s.push_str("]\n");
        s.into_bytes()
    } else {
        panic!("unknown summary {summary}");
    };
    assert_eq!(bytes.len(), len, "{summary}");
    bytes
}

/// Reads messages until `want_replies` non-events arrived and then until
/// `want_events` events arrived (or `wait` passed); then drains briefly.
fn collect(q: &mut Qmp, want_replies: usize, want_events: usize, wait: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    // MIGRATION_PASS counts vary, so they never satisfy the event count.
    let count = |g: &Vec<Value>, ev: bool| {
        g.iter()
            .filter(|m| is_event(m) == ev && m["event"] != "MIGRATION_PASS")
            .count()
    };
    while count(&got, false) < want_replies || count(&got, true) < want_events {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match q.try_recv_line(left) {
            Some(l) => got.push(serde_json::from_str(&l).unwrap()),
            None => break,
        }
    }
    while let Some(l) = q.try_recv_line(Duration::from_millis(60)) {
        got.push(serde_json::from_str(&l).unwrap());
    }
    got
}

/// Counts of replies by `desc` (for the truncated token-count fixture).
fn by_desc(msgs: &[Value]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in msgs {
        let d = r["error"]["desc"]
            .as_str()
            .unwrap_or("<return>")
            .to_string();
        *m.entry(d).or_insert(0) += 1;
    }
    m
}

/// MIGRATION_PASS counts vary between runs (QEMU: 2 or 3 passes); compare
/// event sequences without them and check them separately.
fn without_passes(evs: &[Value]) -> Vec<Value> {
    evs.iter()
        .filter(|e| e["event"] != "MIGRATION_PASS")
        .cloned()
        .collect()
}

fn check_passes(ctx: &str, ours: &[Value], out: &mut Vec<String>) {
    let passes: Vec<_> = ours
        .iter()
        .filter(|e| e["event"] == "MIGRATION_PASS")
        .collect();
    for (i, p) in passes.iter().enumerate() {
        if p["data"] != json!({"pass": i as u64 + 1}) {
            out.push(format!("{ctx}: MIGRATION_PASS #{i} data {}", p["data"]));
        }
    }
}

/// Replays a fixture on `q` (negotiated or not, as the fixture needs) and
/// appends the differences to `out`. `vmm` is used for `process_exit`.
fn replay(name: &str, dir: &Path, q: &mut Qmp, vmm: Option<&mut Vmm>, out: &mut Vec<String>) {
    let mut diffs = Vec::new();
    replay_inner(name, dir, q, vmm, &mut diffs);
    let d = dir.display().to_string();
    out.extend(diffs.into_iter().map(|s| s.replace(&d, "DIR")));
}

fn replay_inner(
    name: &str,
    dir: &Path,
    q: &mut Qmp,
    mut vmm: Option<&mut Vmm>,
    out: &mut Vec<String>,
) {
    let t = transcript(name, dir);
    // Split into steps: [input?, expected entries...]
    let mut steps: Vec<(Option<Value>, Vec<Value>)> = vec![(None, Vec::new())];
    for e in t {
        if e.get("send").is_some()
            || e.get("send_raw").is_some()
            || e.get("send_raw_summary").is_some()
        {
            steps.push((Some(e), Vec::new()));
        } else {
            steps.last_mut().unwrap().1.push(e);
        }
    }
    for (si, (input, expected)) in steps.into_iter().enumerate() {
        let ctx = format!("{name} #{si}");
        let recvs: Vec<Value> = expected
            .iter()
            .filter(|e| e.get("recv").is_some())
            .cloned()
            .collect();
        let exp = expand(&recvs);
        let exp_replies: Vec<Value> = exp.iter().filter(|m| !is_event(m)).cloned().collect();
        let exp_events: Vec<Value> = exp.iter().filter(|m| is_event(m)).map(event_key).collect();
        let want_events = exp_events
            .iter()
            .filter(|e| e["event"] != "MIGRATION_PASS")
            .count();
        let truncated = expected.iter().find_map(|e| e.get("truncated").cloned());
        let raw = input.as_ref().is_some_and(|i| i.get("send").is_none());
        let ours: Vec<Value> = match &input {
            None if si == 0 && exp.is_empty() => Vec::new(),
            None => collect(q, exp_replies.len(), want_events, Duration::from_secs(10)),
            Some(i) if !raw => {
                q.send_raw(format!("{}\n", i["send"]).as_bytes());
                collect(q, exp_replies.len(), want_events, Duration::from_secs(10))
            }
            Some(i) => {
                // Fence as the recorder did: everything before the fence's
                // reply was caused by the raw input.
                q.send_raw(&raw_bytes(i));
                q.send_raw(b"{\"execute\": \"query-name\", \"id\": \"fence\"}\n");
                let mut got = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match q.try_recv_line(left) {
                        Some(l) => {
                            let m: Value = serde_json::from_str(&l).unwrap();
                            if m.get("id") == Some(&json!("fence")) {
                                break;
                            }
                            got.push(m);
                        }
                        None => {
                            out.push(format!("{ctx}: input swallowed the fence command"));
                            break;
                        }
                    }
                }
                got
            }
        };
        let our_replies: Vec<Value> = ours.iter().filter(|m| !is_event(m)).cloned().collect();
        let our_events: Vec<Value> = ours.iter().filter(|m| is_event(m)).map(event_key).collect();
        if let Some(tr) = truncated {
            let mut want: BTreeMap<String, u64> = by_desc(&exp_replies);
            for (d, n) in tr["replies_by_desc"].as_object().unwrap() {
                *want.entry(d.clone()).or_insert(0) += n.as_u64().unwrap();
            }
            // the summary counts the logged replies too
            for (d, n) in by_desc(&exp_replies) {
                *want.get_mut(&d).unwrap() -= n;
            }
            let got = by_desc(&our_replies);
            if got != want {
                out.push(format!(
                    "{ctx}: replies by desc QEMU {want:?}, migtest-vmm {got:?}"
                ));
            }
        } else if exp_replies.len() != our_replies.len() {
            let descs = |v: &[Value]| -> Vec<String> {
                v.iter()
                    .map(|m| {
                        m["error"]["desc"]
                            .as_str()
                            .unwrap_or("<return>")
                            .to_string()
                    })
                    .collect()
            };
            out.push(format!(
                "{ctx}: {} replies {:?}, migtest-vmm {} replies {:?}",
                exp_replies.len(),
                descs(&exp_replies),
                our_replies.len(),
                descs(&our_replies)
            ));
        } else {
            let mut exp_replies = exp_replies.clone();
            if name == "migrate-start-and-first-query"
                && our_replies
                    .last()
                    .is_some_and(|r| r["return"]["status"] == "active")
            {
                // The fixture README: under load QEMU may already report
                // `active` here; compare with QEMU's `active` reply then.
                let active = expand(
                    &transcript("query-migrate-active", dir)
                        .into_iter()
                        .filter(|e| e.get("recv").is_some())
                        .collect::<Vec<_>>(),
                );
                *exp_replies.last_mut().unwrap() =
                    active.into_iter().rfind(|m| !is_event(m)).unwrap();
            }
            for (i, (qm, om)) in exp_replies.iter().zip(&our_replies).enumerate() {
                let c = if exp_replies.len() > 1 {
                    format!("{ctx}.{i}")
                } else {
                    ctx.clone()
                };
                compare(&c, "reply", qm, om, out);
            }
        }
        let spanned = SPAN.with(|sp| {
            let mut sp = sp.borrow_mut();
            match sp.as_mut() {
                Some((qs, os)) => {
                    qs.extend(exp_events.iter().cloned());
                    os.extend(our_events.iter().cloned());
                    true
                }
                None => false,
            }
        });
        let (qe, oe) = if spanned {
            (Vec::new(), Vec::new())
        } else if name.starts_with("migration-") {
            check_passes(&ctx, &ours, out);
            (without_passes(&exp_events), without_passes(&our_events))
        } else {
            // MIGRATION_PASS events of a running migration land between
            // whichever commands they happen to fall between: timing, not
            // protocol. Pass sequences are checked in the migration fixtures.
            (without_passes(&exp_events), without_passes(&our_events))
        };
        if qe != oe {
            out.push(format!(
                "{ctx}: events QEMU {}, migtest-vmm {}",
                Value::from(qe),
                Value::from(oe)
            ));
        }
        // Trailing connection/process entries.
        for e in &expected {
            if e.get("eof").is_some() {
                let mut eof = false;
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    match q.try_recv_line(Duration::from_millis(200)) {
                        None => {
                            eof = true;
                            break;
                        }
                        Some(l) => out.push(format!("{ctx}: extra message before EOF {l}")),
                    }
                }
                if !eof {
                    out.push(format!("{ctx}: no EOF"));
                }
            }
            if let Some(st) = e.get("process_exit").and_then(Value::as_str) {
                let v = vmm.as_deref_mut().expect("process_exit needs the vmm");
                let got = match v.try_wait_exit(Duration::from_secs(5)) {
                    Some(st) => format!("{st}"),
                    None => "still running after 5 s".to_string(),
                };
                if got != st {
                    out.push(format!("{ctx}: process {st:?}, migtest-vmm {got:?}"));
                }
            }
        }
    }
}

thread_local! {
    /// While set, event sequences are compared over a span of fixtures
    /// (QEMU, ours) instead of per step: during a migration the split of
    /// events between consecutive commands depends on timing.
    static SPAN: std::cell::RefCell<Option<(Vec<Value>, Vec<Value>)>> =
        const { std::cell::RefCell::new(None) };
}

fn begin_span() {
    SPAN.with(|sp| *sp.borrow_mut() = Some((Vec::new(), Vec::new())));
}

/// Compares the events of the span (MIGRATION_PASS checked separately).
fn end_span(label: &str, out: &mut Vec<String>) {
    let (qe, oe) = SPAN.with(|sp| sp.borrow_mut().take()).unwrap();
    check_passes(label, &oe, out);
    let (qe, oe) = (without_passes(&qe), without_passes(&oe));
    if qe != oe {
        out.push(format!(
            "{label}: events QEMU {}, migtest-vmm {}",
            Value::from(qe),
            Value::from(oe)
        ));
    }
}

/// Compares our greeting with the recorded one.
fn compare_greeting(q: &Qmp, out: &mut Vec<String>) {
    let exp = expand(&transcript("greeting", Path::new(REC_DIR))[..]);
    compare(
        "greeting #0",
        "reply",
        &exp[0],
        q.greeting.as_ref().unwrap(),
        out,
    );
}

fn launch(extra: &[&str]) -> Vmm {
    Vmm::launch(
        Launch {
            name: Some("single".into()),
            ..Launch::default()
        }
        .args(extra),
    )
}

/// Fixtures replayed on a fresh VM each: (fixture, extra args, negotiate,
/// setup commands).
fn single_vm_cases() -> Vec<(&'static str, Vec<&'static str>, bool, Vec<Value>)> {
    let s = || vec!["-S"];
    let none = Vec::new;
    let events_on = || {
        vec![json!({"execute": "migrate-set-capabilities",
                    "arguments": {"capabilities": [{"capability": "events", "state": true}]}})]
    };
    let stop = || vec![json!({"execute": "stop"})];
    let mut v = vec![
        ("qmp_capabilities", s(), false, none()),
        ("bad-command-before-capabilities", s(), false, none()),
        ("bad-qmp-capabilities-unknown-enable", s(), false, none()),
        ("bad-qmp-capabilities-twice", s(), true, none()),
        ("id-echo-string", s(), true, none()),
        ("id-echo-number", s(), true, none()),
        ("id-echo-object", s(), true, none()),
        ("query-version", s(), true, none()),
        ("query-name", s(), true, none()),
        ("query-status-prelaunch", s(), true, none()),
        ("query-status-after-bad-input", s(), true, none()),
        ("query-migrate-none", s(), true, none()),
        ("query-migrate-parameters", s(), true, none()),
        ("query-migrate-capabilities", s(), true, none()),
        ("migrate-set-capabilities-events", s(), true, none()),
        ("migrate-continue-wrong-state", s(), true, none()),
        ("migrate-incoming-without-defer", s(), true, none()),
        ("migrate-cancel-none", s(), true, none()),
        ("migrate-bad-uri", s(), true, none()),
        ("stop-in-prelaunch", s(), true, none()),
        ("cont-from-prelaunch", s(), true, none()),
        ("query-status-running", vec![], true, none()),
        ("cont-while-running", vec![], true, none()),
        ("stop-while-running", vec![], true, none()),
        ("query-status-paused", vec![], true, stop()),
        ("stop-while-paused", vec![], true, stop()),
        ("cont-from-paused", vec![], true, stop()),
        ("migrate-failed-bad-destination", vec![], true, events_on()),
    ];
    for f in std::fs::read_dir(fixtures_dir()).unwrap() {
        let n = f.unwrap().file_name().into_string().unwrap();
        let Some(stem) = n.strip_suffix(".json") else {
            continue;
        };
        let stem: &'static str = Box::leak(stem.to_string().into_boxed_str());
        if stem.starts_with("bad-input-")
            || stem.starts_with("bad-command-") && stem != "bad-command-before-capabilities"
            || stem.starts_with("migrate-set-parameters-")
                && stem != "migrate-set-parameters-during-migration"
        {
            v.push((stem, s(), true, none()));
        }
    }
    v
}

#[test]
fn single_vm_fixtures_match_qemu() {
    let mut out = Vec::new();
    let cases = single_vm_cases();
    let mut names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    names.push("greeting");
    for (name, extra, negotiate, setup) in cases {
        let vmm = launch(&extra);
        let mut q = if negotiate { vmm.qmp() } else { vmm.connect() };
        if name == "qmp_capabilities" {
            compare_greeting(&q, &mut out);
        }
        for c in setup {
            let r = q.execute(c["execute"].as_str().unwrap(), c.get("arguments").cloned());
            assert!(r.get("return").is_some(), "{name}: setup {c}: {r}");
            q.events.clear();
        }
        replay(name, vmm.dir.path(), &mut q, None, &mut out);
    }
    check(&names, out);
}

/// Fixtures replayed on an incoming VM.
#[test]
fn incoming_vm_fixtures_match_qemu() {
    let mut out = Vec::new();
    let names = [
        "query-status-inmigrate",
        "stop-cont-inmigrate",
        "migrate-incoming-already-started",
    ];
    for name in names {
        let dir = common::tempdir();
        let sock = format!("unix:{}/mig1.sock", dir.path().display());
        let vmm = launch(&["-incoming", &sock]);
        let mut q = vmm.qmp();
        replay(name, dir.path(), &mut q, None, &mut out);
    }
    check(&names, out);
}

fn setup_cmd(q: &mut Qmp, name: &str, args: Value) {
    let r = q.execute(name, Some(args));
    assert!(r.get("return").is_some(), "{name}: {r}");
}

fn enable_events(q: &mut Qmp) {
    setup_cmd(
        q,
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
}

/// A source/destination pair like the recorder's: src running, dst with
/// `-incoming unix:DIR/<sock>`, events capability on both.
fn pair(sock: &str) -> (tempfile::TempDir, Vmm, Qmp, Vmm, Qmp) {
    let dir = common::tempdir();
    let uri = format!("unix:{}/{sock}", dir.path().display());
    let dst = Vmm::launch(
        Launch {
            name: Some("dst".into()),
            ..Launch::default()
        }
        .args(&["-incoming", &uri]),
    );
    let src = Vmm::launch(Launch {
        name: Some("src".into()),
        ..Launch::default()
    });
    let mut dq = dst.qmp();
    let mut sq = src.qmp();
    enable_events(&mut dq);
    enable_events(&mut sq);
    (dir, src, sq, dst, dq)
}

#[test]
fn throttled_migration_fixtures_match_qemu() {
    let mut out = Vec::new();
    let (dir, _src, mut sq, mut dst, mut dq) = pair("mig1.sock");
    let d = dir.path();
    replay("query-migrate-dst-waiting", d, &mut dq, None, &mut out);
    setup_cmd(
        &mut sq,
        "migrate-set-parameters",
        // QEMU needed the 4 MiB/s throttle to keep the migration active;
        // migtest-vmm holds it deterministically with switchover-hold.
        json!({"max-bandwidth": 4 << 20, "switchover-hold": true}),
    );
    begin_span();
    replay("migrate-start-and-first-query", d, &mut sq, None, &mut out);
    replay("query-migrate-active", d, &mut sq, None, &mut out);
    end_span("migrate-start-and-first-query #events", &mut out);
    replay("query-migrate-dst-active", d, &mut dq, None, &mut out);
    for name in [
        "query-status-running-during-migration",
        "migrate-while-active",
        "migrate-continue-while-active",
        "migrate-set-capabilities-during-migration",
        "migrate-set-parameters-during-migration",
        "migrate-cancel",
    ] {
        replay(name, d, &mut sq, None, &mut out);
    }
    replay("migrate-cancel-dst", d, &mut dq, Some(&mut dst), &mut out);
    check(
        &[
            "query-migrate-dst-waiting",
            "migrate-start-and-first-query",
            "query-migrate-active",
            "query-migrate-dst-active",
            "query-status-running-during-migration",
            "migrate-while-active",
            "migrate-continue-while-active",
            "migrate-set-capabilities-during-migration",
            "migrate-set-parameters-during-migration",
            "migrate-cancel",
            "migrate-cancel-dst",
        ],
        out,
    );
}

#[test]
fn full_migration_fixtures_match_qemu() {
    let mut out = Vec::new();
    let (dir, _src, mut sq, _dst, mut dq) = pair("mig2.sock");
    let d = dir.path();
    setup_cmd(
        &mut sq,
        "migrate-set-parameters",
        json!({"max-bandwidth": 1u64 << 30, "downtime-limit": 1000}),
    );
    begin_span();
    replay("migration-full-src", d, &mut sq, None, &mut out);
    end_span("migration-full-src #events", &mut out);
    replay("migration-full-dst", d, &mut dq, None, &mut out);
    for name in [
        "query-migrate-completed-src",
        "query-status-postmigrate",
        "migrate-after-completed",
        "cont-from-postmigrate",
    ] {
        replay(name, d, &mut sq, None, &mut out);
    }
    for name in [
        "query-migrate-completed-dst",
        "query-status-running-after-migration",
    ] {
        replay(name, d, &mut dq, None, &mut out);
    }
    check(
        &[
            "migration-full-src",
            "migration-full-dst",
            "query-migrate-completed-src",
            "query-status-postmigrate",
            "migrate-after-completed",
            "cont-from-postmigrate",
            "query-migrate-completed-dst",
            "query-status-running-after-migration",
        ],
        out,
    );
}

/// The event-only fixtures equal the events of the full transcripts, so
/// comparing those covers them; make sure that stays true.
#[test]
fn event_fixtures_are_covered_by_full_transcripts() {
    for side in ["src", "dst"] {
        let d = Path::new(REC_DIR);
        let evs = |name: &str| -> Vec<Value> {
            expand(
                &transcript(name, d)
                    .into_iter()
                    .filter(|e| e.get("recv").is_some())
                    .collect::<Vec<_>>(),
            )
            .into_iter()
            .filter(is_event)
            .collect()
        };
        assert_eq!(
            evs(&format!("migration-events-{side}")),
            evs(&format!("migration-full-{side}"))
        );
    }
}

/// Asserts that the differences found by a test are exactly the ALLOWED
/// entries about the fixtures it replayed.
fn check(names: &[&str], out: Vec<String>) {
    let got: BTreeSet<String> = out.into_iter().collect();
    let mine = |d: &str| names.iter().any(|n| d.starts_with(&format!("{n} #")));
    let allowed: BTreeSet<String> = ALLOWED
        .iter()
        .filter(|d| mine(d))
        .map(|s| s.to_string())
        .collect();
    let new: Vec<&str> = got.difference(&allowed).map(String::as_str).collect();
    let gone: Vec<&str> = allowed.difference(&got).map(String::as_str).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "differences from QEMU 7.2 not in ALLOWED (fix migtest-vmm or document them):\n{}\n\
         ALLOWED entries that no longer occur (remove them here and in the doc):\n{}",
        new.join("\n"),
        gone.join("\n")
    );
}
