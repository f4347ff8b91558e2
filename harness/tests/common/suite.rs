//! QMP and process checks every backend must pass; each test file calls
//! them with VMs of its backend.

use std::time::{Duration, Instant};

use migtest::qmp_client::QmpError;
use migtest::vm::Vm;
use migtest_qmp::schema::RunState;
use serde_json::{json, Value};

use super::pid_gone;

pub const SHORT: Duration = Duration::from_millis(300);
pub const WAIT: Duration = Duration::from_secs(10);

/// Greeting, negotiated capabilities, a running guest, the transcript.
pub fn greeting_capabilities_and_query_status(vm: &Vm) {
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

/// `stop` and `cont` emit STOP and RESUME; consumed events are gone.
pub fn stop_and_cont_emit_events(vm: &Vm) {
    vm.stop().unwrap();
    vm.wait_event("STOP", WAIT).unwrap();
    assert_eq!(vm.query_status().unwrap().status, RunState::Paused);
    let resumes = vm.events_seen("RESUME");
    vm.cont().unwrap();
    // An event already queued before the wait counts: wait (bounded) until RESUME has
    // arrived, then ask for it.
    let deadline = std::time::Instant::now() + WAIT;
    while vm.events_seen("RESUME") == resumes {
        assert!(
            std::time::Instant::now() < deadline,
            "no RESUME within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let ev = vm.wait_event("RESUME", WAIT).unwrap();
    assert!(ev.timestamp.seconds > 0);
    let seen: Vec<String> = vm
        .qmp()
        .events_seen()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(seen, ["STOP", "RESUME"]);
    assert_eq!(vm.events_seen("STOP"), 1);
    // Consumed: waiting again times out, naming the event and the VM.
    let err = vm.qmp().wait_event("RESUME", |_| true, SHORT).unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "timed out after 300ms waiting for event RESUME from {}",
            vm.role()
        )
    );
}

/// Error replies carry class and desc; the connection stays usable.
pub fn error_replies_keep_the_connection_usable(vm: &Vm) {
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
            "{} VMM (pid {}): QMP 'no-such-command': QMP error CommandNotFound",
            vm.role(),
            vm.pid()
        )),
        "{msg}"
    );
}

/// Raw input: foreign ids come back verbatim, parse errors without id.
pub fn raw_input_and_foreign_ids(vm: &Vm) {
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

/// `quit` ends the process with success; later commands see a disconnect.
pub fn quit_then_disconnected(vm: &Vm) {
    let pid = vm.pid();
    let st = vm.quit().unwrap();
    assert!(st.success(), "{st}");
    let err = vm.qmp().execute("query-status", Value::Null).unwrap_err();
    assert!(matches!(err, QmpError::Disconnected { .. }), "{err}");
    assert!(err.to_string().contains("reply to 'query-status'"), "{err}");
    assert!(super::wait_pid_gone(pid, Duration::from_secs(1)));
}

/// Dropping the VM quits it over QMP (no 3 s grace) and removes its logs.
pub fn drop_quits_over_qmp_and_removes_logs(vm: Vm) {
    let pid = vm.pid();
    let dir = vm.log_dir().to_path_buf();
    assert!(dir.join("qmp.sock").exists());
    let start = Instant::now();
    drop(vm);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "quit over QMP should not need the 3 s grace: {:?}",
        start.elapsed()
    );
    assert!(pid_gone(pid));
    assert!(!dir.exists());
}
