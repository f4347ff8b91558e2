//! auto-converge: QEMU 7.2's parameter texts and the engine throttling a
//! held migration's guest, the throttle shown in `query-migrate` and lifted
//! when the migration ends.

use migtest_qmp::args::Args;
use migtest_qmp::schema::{MigrationInfo, MigrationStatus, RunState};
use migtest_vmm::migration::testing::TestHost;
use migtest_vmm::migration::Migration;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn args(v: Value) -> Args {
    match v {
        Value::Object(m) => Args::new(Some(m)),
        _ => panic!("arguments must be an object"),
    }
}

fn info(m: &Migration) -> MigrationInfo {
    serde_json::from_value(m.query_migrate().unwrap()).unwrap()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn set_caps(m: &Migration, name: &str, state: bool) -> Result<Value, String> {
    m.set_capabilities(args(
        json!({"capabilities": [{"capability": name, "state": state}]}),
    ))
    .map_err(|e| e.desc)
}

/// Each request and QEMU 7.2's reply to it (recorded from
/// `qemu-system-x86_64 -M none -qmp stdio`, in this order).
const QEMU_7_2: &[(&str, &str)] = &[
    (r#"{"cpu-throttle-initial":0}"#, "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
    (r#"{"cpu-throttle-initial":100}"#, "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
    (r#"{"cpu-throttle-increment":0}"#, "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99"),
    (r#"{"cpu-throttle-increment":100}"#, "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99"),
    (r#"{"max-cpu-throttle":0}"#, "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
    (r#"{"max-cpu-throttle":100}"#, "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
    (r#"{"max-cpu-throttle":10}"#, "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
    (r#"{"cpu-throttle-initial":256}"#, "Parameter 'cpu-throttle-initial' expects uint8_t"),
    (r#"{"cpu-throttle-initial":-1}"#, "Parameter 'cpu-throttle-initial' expects uint8_t"),
    (r#"{"cpu-throttle-initial":"a"}"#, "Parameter 'cpu-throttle-initial' expects uint64"),
    (r#"{"cpu-throttle-tailslow":1}"#, "Invalid parameter type for 'cpu-throttle-tailslow', expected: boolean"),
    (r#"{"cpu-throttle-initial":50,"max-cpu-throttle":40}"#, "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
    (r#"{"cpu-throttle-initial":0,"max-cpu-throttle":100}"#, "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
    (r#"{"cpu-throttle-initial":30,"max-cpu-throttle":30,"cpu-throttle-tailslow":true,"cpu-throttle-increment":5}"#, ""),
    (r#"{"cpu-throttle-initial":40}"#, "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
    (r#"{"downtime-limit":3000000,"cpu-throttle-initial":0}"#, "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
];

#[test]
fn parameters_as_qemu_7_2() {
    let (_h, m) = TestHost::new(4, RunState::Running);
    let q = m.query_parameters().unwrap();
    assert_eq!(
        (
            &q["cpu-throttle-initial"],
            &q["cpu-throttle-increment"],
            &q["cpu-throttle-tailslow"],
            &q["max-cpu-throttle"]
        ),
        (&json!(20), &json!(10), &json!(false), &json!(99))
    );
    for (req, want) in QEMU_7_2 {
        let got = m
            .set_parameters(args(serde_json::from_str(req).unwrap()))
            .err()
            .map(|e| e.desc)
            .unwrap_or_default();
        assert_eq!(&got, want, "{req}");
    }
    let q = m.query_parameters().unwrap();
    assert_eq!(
        (
            &q["cpu-throttle-initial"],
            &q["cpu-throttle-increment"],
            &q["cpu-throttle-tailslow"],
            &q["max-cpu-throttle"],
            &q["downtime-limit"]
        ),
        (&json!(30), &json!(5), &json!(true), &json!(30), &json!(300))
    );
    set_caps(&m, "auto-converge", true).unwrap();
    assert!(m.capabilities().auto_converge());
}

/// A "vCPU" rewriting pages while the guest runs.
fn dirtier(host: Arc<TestHost>, quit: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let pages = host.ram.snapshot().len() as u64 / 4096;
        let mut n = 0u64;
        while !quit.load(Ordering::SeqCst) {
            n += 1;
            if !host.guest_write((n % pages) * 4096, &n.to_le_bytes()) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if n.is_multiple_of(32) {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    })
}

/// A held migration of a dirtying guest with auto-converge on: after two
/// periods of a second the throttle starts at `cpu-throttle-initial`, then
/// steps up to `max-cpu-throttle`; `how` ends the migration, which lifts it.
fn held_and_throttled(how: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (src, sm) = TestHost::new(256, RunState::Running);
    let (_dst, dm) = TestHost::new(256, RunState::Prelaunch);
    dm.start_incoming_from_cmdline("defer").unwrap();
    let uri = format!("unix:{}", dir.path().join("mig.sock").display());
    dm.migrate_incoming(args(json!({"uri": uri, "exit-on-error": false})))
        .unwrap();
    set_caps(&sm, "auto-converge", true).unwrap();
    sm.set_parameters(args(json!({"switchover-hold": true, "max-bandwidth": 0,
        "cpu-throttle-initial": 30, "cpu-throttle-increment": 60, "max-cpu-throttle": 80})))
        .unwrap();
    let quit = Arc::new(AtomicBool::new(false));
    let t = dirtier(src.clone(), quit.clone());
    sm.migrate(args(json!({"uri": uri}))).unwrap();
    wait_until("the throttle to start", 30, || src.cpu_throttle_now() > 0);
    let first = info(&sm).cpu_throttle_percentage;
    assert!(matches!(first, Some(30) | Some(80)), "{first:?}");
    assert_eq!(
        set_caps(&sm, "auto-converge", false).unwrap_err(),
        "There's a migration process in progress"
    );
    wait_until("the throttle to reach the max", 30, || {
        src.cpu_throttle_now() == 80
    });
    assert_eq!(
        info(&sm).status,
        Some(MigrationStatus::Active),
        "still held"
    );
    let end = if how == "cancel" {
        sm.migrate_cancel().unwrap();
        MigrationStatus::Cancelled
    } else {
        sm.set_parameters(args(json!({"switchover-hold": false})))
            .unwrap();
        MigrationStatus::Completed
    };
    wait_until("the end of the migration", 30, || {
        let i = info(&sm);
        // Never a finished migration that still throttles.
        assert!(
            !(i.status.is_some_and(|s| s.is_terminal()) && i.cpu_throttle_percentage.is_some()),
            "{i:?}"
        );
        i.status == Some(end)
    });
    assert_eq!(src.cpu_throttle_now(), 0);
    assert_eq!(info(&sm).cpu_throttle_percentage, None);
    quit.store(true, Ordering::SeqCst);
    t.join().unwrap();
}

#[test]
fn throttled_while_held_then_lifted_at_completion() {
    held_and_throttled("release");
}

#[test]
fn throttled_while_held_then_lifted_at_cancel() {
    held_and_throttled("cancel");
}
