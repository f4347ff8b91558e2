//! The QMP client and VM handle against real `qemu-system-x86_64`
//! (`-machine none`, no guest: QMP only).

mod common;

use std::time::Duration;

use common::{launch_qemu_none, wait_pid_gone};
use migtest::backend::{Backend, LaunchSpec};
use migtest::qmp_client::QmpError;
use migtest::vm::Vm;
use migtest_qmp::schema::{MigrationStatus, RunState};
use serde_json::{json, Value};

const SHORT: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn greeting_capabilities_and_query_status() {
    let vm = launch_qemu_none("source");
    let g = vm.qmp().greeting();
    assert!(g.version.qemu.major >= 7, "{g:?}");
    // Negotiation is done: a second qmp_capabilities is refused.
    let err = vm
        .qmp()
        .execute("qmp_capabilities", Value::Null)
        .unwrap_err();
    assert_eq!(err.body().unwrap().class, "CommandNotFound", "{err}");
    let st = vm.query_status().unwrap();
    assert!(st.running);
    assert_eq!(st.status, RunState::Running);
    let t = vm.qmp().transcript_tail(10);
    assert!(
        t.contains("> {\"execute\":\"qmp_capabilities\",\"id\":1}"),
        "{t}"
    );
    assert!(t.contains("< {\"QMP\""), "{t}");
}

#[test]
fn stop_and_cont_emit_events() {
    let vm = launch_qemu_none("source");
    vm.stop().unwrap();
    vm.wait_event("STOP", WAIT).unwrap();
    assert_eq!(vm.query_status().unwrap().status, RunState::Paused);
    vm.cont().unwrap();
    // The event may already be queued: events before the wait count.
    std::thread::sleep(Duration::from_millis(50));
    let ev = vm.wait_event("RESUME", WAIT).unwrap();
    assert!(ev.timestamp.seconds > 0);
    let seen: Vec<String> = vm
        .qmp()
        .events_seen()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(seen, ["STOP", "RESUME"]);
    // Consumed: waiting again times out, naming the event and the VM.
    let err = vm.qmp().wait_event("RESUME", |_| true, SHORT).unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }));
    assert_eq!(
        err.to_string(),
        "timed out after 300ms waiting for event RESUME from source"
    );
}

#[test]
fn error_replies_keep_the_connection_usable() {
    let vm = launch_qemu_none("source");
    let err = vm
        .qmp()
        .execute("no-such-command", Value::Null)
        .unwrap_err();
    let body = err.body().expect("a QMP error");
    assert_eq!(body.class, "CommandNotFound");
    assert!(body.desc.contains("no-such-command"), "{}", body.desc);
    let err = vm
        .qmp()
        .execute("query-status", json!({"bogus": 1}))
        .unwrap_err();
    assert_eq!(err.body().unwrap().class, "GenericError");
    // Not an object: refused by the client.
    assert!(matches!(
        vm.qmp().execute("stop", json!([1])),
        Err(QmpError::Protocol(_))
    ));
    assert!(vm.query_status().unwrap().running);
    // Errors through the Vm layer name the VM and command.
    let msg = format!(
        "{:#}",
        vm.execute("no-such-command", Value::Null).unwrap_err()
    );
    assert!(
        msg.starts_with(&format!(
            "source VMM (pid {}): QMP 'no-such-command': QMP error CommandNotFound",
            vm.pid()
        )),
        "{msg}"
    );
}

#[test]
fn raw_input_and_foreign_ids() {
    let vm = launch_qemu_none("source");
    let q = vm.qmp();
    q.send_raw(b"{\"execute\": \"query-status\", \"id\": \"abc\"}\n")
        .unwrap();
    let r = q.read_reply_raw(WAIT).unwrap();
    assert_eq!(r["id"], "abc");
    assert_eq!(r["return"]["status"], "running");
    // A numeric id we never issued is not ours either.
    q.send_raw(b"{\"execute\": \"query-name\", \"id\": 999}\n")
        .unwrap();
    // Our own command interleaves fine.
    assert!(vm.query_status().unwrap().running);
    let r = q.read_reply_raw(WAIT).unwrap();
    assert_eq!(r["id"], 999);
    // Malformed JSON: an error without id.
    q.send_raw(b"{\"execute\": }\n").unwrap();
    let r = q.read_reply_raw(WAIT).unwrap();
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    assert!(r.get("id").is_none(), "{r}");
    assert!(matches!(
        q.read_reply_raw(SHORT),
        Err(QmpError::Timeout { .. })
    ));
    assert!(vm.query_status().unwrap().running);
}

#[test]
fn quit_then_disconnected() {
    let vm = launch_qemu_none("source");
    let pid = vm.pid();
    let st = vm.quit().unwrap();
    assert!(st.success(), "{st}");
    let err = vm.qmp().execute("query-status", Value::Null).unwrap_err();
    assert!(matches!(err, QmpError::Disconnected { .. }), "{err}");
    assert!(err.to_string().contains("reply to 'query-status'"), "{err}");
    assert!(wait_pid_gone(pid, Duration::from_secs(1)));
}

#[test]
fn drop_quits_over_qmp_and_removes_logs() {
    let vm = launch_qemu_none("source");
    let pid = vm.pid();
    let dir = vm.process().log_dir().to_path_buf();
    assert!(dir.join("qmp.sock").exists());
    let start = std::time::Instant::now();
    drop(vm);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "quit over QMP should not need the 3 s grace: {:?}",
        start.elapsed()
    );
    assert!(common::pid_gone(pid));
    assert!(!dir.exists());
}

#[test]
fn launch_failure_reports_exit_and_stderr() {
    let spec = LaunchSpec::new("source", 0, "none").args(["-no-such-option"]);
    let err = Vm::launch(&common::qemu_none(), &spec).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("source exited before QMP accepted"), "{msg}");
    assert!(msg.contains("-no-such-option"), "{msg}");
    let missing = Backend::Qemu {
        binary: "/nonexistent/qemu".into(),
        machine: "none".into(),
        boot_sector: None,
    };
    let msg = format!(
        "{:#}",
        Vm::launch(&missing, &LaunchSpec::new("x", 0, "none")).unwrap_err()
    );
    assert!(msg.contains("/nonexistent/qemu"), "{msg}");
}

#[test]
fn incoming_uri_and_status_waits() {
    let dst = Vm::launch_as(
        "destination",
        &common::qemu_none(),
        &LaunchSpec::new("target", 0, "none").incoming("tcp:127.0.0.1:0"),
    )
    .unwrap();
    let uri = dst.incoming_uri().unwrap();
    assert!(
        uri.starts_with("tcp:127.0.0.1:") && !uri.ends_with(":0"),
        "{uri}"
    );
    let src = launch_qemu_none("source");
    assert_eq!(src.query_migrate().unwrap().status, None);
    src.wait_for_status(MigrationStatus::None, SHORT).unwrap();
    let msg = format!(
        "{:#}",
        src.wait_for_status(MigrationStatus::Completed, Duration::from_millis(50))
            .unwrap_err()
    );
    assert!(
        msg.contains(
            "timed out after 50ms waiting for migration status 'completed' (last status 'none'"
        ),
        "{msg}"
    );
    let unix = Vm::launch_as(
        "destination",
        &common::qemu_none(),
        &LaunchSpec::new("target", 0, "none").incoming("unix:"),
    )
    .unwrap();
    let uri = unix.incoming_uri().unwrap();
    assert_eq!(
        uri,
        format!("unix:{}/mig.sock", unix.process().log_dir().display())
    );
}

#[test]
fn serial_waits_skip_a_and_b_and_reject_others() {
    use std::io::Write;
    let vm = launch_qemu_none("source");
    let path = vm.serial_path();
    let append = |b: &[u8]| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b).unwrap();
    };
    let msg = format!(
        "{:#}",
        vm.wait_serial(b'B', Duration::from_millis(50)).unwrap_err()
    );
    assert!(
        msg.contains("timed out after 50ms waiting for 'B' on serial"),
        "{msg}"
    );
    append(b"AAB");
    vm.wait_serial(b'B', WAIT).unwrap();
    assert_eq!(vm.serial_offset(), 3);
    append(b"Bx");
    vm.wait_serial(b'B', WAIT).unwrap();
    let msg = format!("{:#}", vm.wait_serial(b'B', WAIT).unwrap_err());
    assert!(
        msg.contains("unexpected byte 0x78 ('x') on serial at offset 4 while waiting for 'B'"),
        "{msg}"
    );
}

#[test]
fn pmemsave_reads_guest_memory() {
    // A real machine, held with -S so no guest code runs.
    let vm = Vm::launch_as(
        "source",
        &Backend::qemu("pc"),
        &LaunchSpec::new("source", 32 << 20, "none").paused(true),
    )
    .unwrap();
    assert_eq!(vm.query_status().unwrap().status, RunState::Prelaunch);
    let bios_top = vm.pmemsave(0xf_0000, 0x1_0000).unwrap();
    assert_eq!(bios_top.len(), 0x1_0000);
    assert!(
        bios_top.iter().any(|&b| b != 0),
        "BIOS shadow should be non-zero"
    );
    let d1 = vm.memory_digest(0, 0x10_0000).unwrap();
    let d2 = vm.memory_digest(0, 0x10_0000).unwrap();
    assert_eq!(d1, d2);
    assert_eq!(vm.pmemsave(0, 0).unwrap(), Vec::<u8>::new());
    assert!(std::fs::read_dir(vm.process().log_dir())
        .unwrap()
        .all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("pmem-")));
}
