//! The QMP client and VM handle against real `qemu-system-x86_64`
//! (`-machine none`, no guest: QMP only).

mod common;

use std::time::Duration;

use common::launch_qemu_none;
use common::suite::{self, SHORT, WAIT};
use migtest::backend::{Backend, LaunchSpec};
use migtest::vm::Vm;
use migtest_qmp::schema::{MigrationStatus, RunState};

#[test]
fn greeting_capabilities_and_query_status() {
    suite::greeting_capabilities_and_query_status(&launch_qemu_none("source"));
}

#[test]
fn stop_and_cont_emit_events() {
    let vm = launch_qemu_none("source");
    suite::stop_and_cont_emit_events(&vm);
    // The transcript in snapshot form.
    let v = vm.qmp().transcript().values();
    assert_eq!(v[0]["dir"], "<");
    assert!(v[0]["msg"]["QMP"].is_object());
    let stop = v
        .iter()
        .position(|m| m["msg"]["execute"] == "stop")
        .unwrap();
    assert_eq!(v[stop]["dir"], ">");
    assert!(v[stop + 1..]
        .iter()
        .any(|m| m["dir"] == "<" && m["msg"]["event"] == "STOP"));
}

#[test]
fn error_replies_keep_the_connection_usable() {
    suite::error_replies_keep_the_connection_usable(&launch_qemu_none("source"));
}

#[test]
fn raw_input_and_foreign_ids() {
    suite::raw_input_and_foreign_ids(&launch_qemu_none("source"));
}

#[test]
fn quit_then_disconnected() {
    suite::quit_then_disconnected(&launch_qemu_none("source"));
}

#[test]
fn drop_quits_over_qmp_and_removes_logs() {
    suite::drop_quits_over_qmp_and_removes_logs(launch_qemu_none("source"));
}

#[test]
fn launch_failure_reports_exit_and_stderr() {
    let spec = LaunchSpec::new("source", 0, "none").args(["-no-such-option"]);
    let err = Vm::launch(&common::qemu_none(), &spec).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("source exited before QMP accepted"), "{msg}");
    assert!(msg.contains("-no-such-option"), "{msg}");
    let missing = Backend::qemu_at("/nonexistent/qemu", "none");
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

#[test]
fn commands_to_a_killed_vmm_say_it_died() {
    let vm = launch_qemu_none("source");
    // SAFETY: kill our own child; the guard reaps it.
    unsafe { libc::kill(vm.pid() as libc::pid_t, libc::SIGKILL) };
    let msg = format!("{:#}", vm.query_status().unwrap_err());
    assert!(
        msg.starts_with(&format!(
            "source VMM (pid {}): QMP 'query-status' (process signal: 9 (SIGKILL)",
            vm.pid()
        )),
        "{msg}"
    );
    assert!(msg.contains("QMP connection lost"), "{msg}");
}
