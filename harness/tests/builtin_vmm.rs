//! The harness against the builtin `migtest-vmm`, found by the backend
//! lookup (built first by `common::ensure_vmm_built`).

mod common;

use std::time::Duration;

use common::suite;
use migtest::backend::{Backend, LaunchSpec};
use migtest::checks::{check_guests_ram, compare_memory};
use migtest::diagnostics::Context;
use migtest::vm::Vm;
use migtest_qmp::schema::{MigrationStatus, RunState};

const MEM: u64 = 32 << 20;
const WAIT: Duration = Duration::from_secs(30);

fn launch(role: &str, spec: LaunchSpec) -> Vm {
    common::ensure_vmm_built();
    Vm::launch_as(role, &Backend::Builtin, &spec).unwrap_or_else(|e| panic!("{e:#}"))
}

fn sweep(role: &str) -> Vm {
    launch(role, LaunchSpec::new(role, MEM, "sweep"))
}

#[test]
fn greeting_capabilities_and_query_status() {
    suite::greeting_capabilities_and_query_status(&sweep("source"));
}

#[test]
fn stop_and_cont_emit_events() {
    suite::stop_and_cont_emit_events(&sweep("source"));
}

#[test]
fn error_replies_keep_the_connection_usable() {
    suite::error_replies_keep_the_connection_usable(&sweep("source"));
}

#[test]
fn raw_input_and_foreign_ids() {
    suite::raw_input_and_foreign_ids(&sweep("source"));
}

#[test]
fn quit_then_disconnected() {
    suite::quit_then_disconnected(&sweep("source"));
}

#[test]
fn drop_quits_over_qmp_and_removes_logs() {
    suite::drop_quits_over_qmp_and_removes_logs(sweep("source"));
}

#[test]
fn launch_failure_reports_exit_and_stderr() {
    common::ensure_vmm_built();
    let spec = LaunchSpec::new("source", MEM, "sweep").args(["-no-such-option"]);
    let msg = format!("{:#}", Vm::launch(&Backend::Builtin, &spec).unwrap_err());
    assert!(msg.contains("source exited before QMP accepted"), "{msg}");
    assert!(msg.contains("-no-such-option"), "{msg}");
}

#[test]
fn sweep_prints_a_then_b_on_serial() {
    let vm = sweep("source");
    vm.wait_serial(b'B', WAIT).unwrap();
    vm.wait_serial(b'B', WAIT).unwrap();
    let serial = std::fs::read(vm.serial_path()).unwrap();
    assert_eq!(serial[0], b'A', "{:?}", String::from_utf8_lossy(&serial));
    assert!(vm.serial_offset() >= 3);
}

#[test]
fn pmemsave_sees_the_sweep() {
    let vm = sweep("source");
    vm.wait_serial(b'B', WAIT).unwrap();
    vm.stop().unwrap();
    let (start, end) = Backend::Builtin.test_range("sweep", MEM).unwrap();
    let bytes = vm.pmemsave(start, end - start).unwrap();
    check_guests_ram(&bytes, start, end).unwrap();
    assert_ne!(bytes[0], 0, "the sweep has run at least one pass");
    assert_eq!(
        vm.memory_digest(start, end).unwrap(),
        migtest::checks::digest(&bytes)
    );
}

/// The qtest precopy shape: a running sweep source, a destination held with
/// `-S`, byte-exact memory and the A-B invariant, then the destination runs on.
fn migrate_and_check(ctx: &Context, dst_incoming: &str, defer_uri: Option<&str>) {
    let src = sweep("source");
    ctx.add_vm(&src);
    let dst = launch(
        "destination",
        LaunchSpec::new("target", MEM, "sweep")
            .paused(true)
            .incoming(dst_incoming),
    );
    ctx.add_vm(&dst);
    {
        let _s = ctx.step("guest runs, events on");
        src.wait_serial(b'B', WAIT).unwrap();
        for vm in [&src, &dst] {
            vm.set_capabilities(&[("events", true)]).unwrap();
        }
        src.set_parameter("downtime-limit", serde_json::json!(300))
            .unwrap();
        assert_eq!(
            src.query_parameters_typed().unwrap().downtime_limit,
            Some(300)
        );
        if let Some(uri) = defer_uri {
            dst.migrate_incoming(uri).unwrap();
        }
    }
    {
        let _s = ctx.step("migrate");
        src.migrate(&dst.incoming_uri().unwrap()).unwrap();
        src.wait_for_status(MigrationStatus::Completed, WAIT)
            .unwrap();
        dst.wait_for_status(MigrationStatus::Completed, WAIT)
            .unwrap();
        src.wait_event("STOP", WAIT).unwrap();
        src.wait_migration_event("completed", WAIT).unwrap();
        assert_eq!(src.query_status().unwrap().status, RunState::Postmigrate);
        assert_eq!(dst.query_status().unwrap().status, RunState::Paused);
    }
    let (start, end) = Backend::Builtin.test_range("sweep", MEM).unwrap();
    {
        let _s = ctx.step("compare memory");
        let a = src.pmemsave(0, MEM).unwrap();
        let b = dst.pmemsave(0, MEM).unwrap();
        compare_memory(&a, &b, 0).unwrap();
        check_guests_ram(&b[start as usize..end as usize], start, end).unwrap();
    }
    {
        let _s = ctx.step("destination runs on");
        let before = dst.memory_digest(start, end).unwrap();
        let offset = std::fs::metadata(dst.serial_path()).map_or(0, |m| m.len());
        dst.cont().unwrap();
        dst.wait_event("RESUME", WAIT).unwrap();
        dst.wait_serial_from(offset, b'B', WAIT).unwrap();
        assert_ne!(dst.memory_digest(start, end).unwrap(), before);
    }
}

#[test]
fn precopy_unix_memory_equal_and_destination_runs() {
    let ctx = Context::new("precopy_unix_memory_equal_and_destination_runs");
    migrate_and_check(&ctx, "unix:", None);
}

#[test]
fn precopy_tcp_deferred_incoming() {
    let ctx = Context::new("precopy_tcp_deferred_incoming");
    migrate_and_check(&ctx, "defer", Some("tcp:127.0.0.1:0"));
}

const CHILD_ENV: &str = "MIGTEST_PDEATHSIG_CHILD_BUILTIN";

/// Run by `vmm_dies_when_the_test_process_aborts` in a child copy of this
/// binary (ignored, so a test run lists it as not run rather than passed).
#[test]
#[ignore = "child process of vmm_dies_when_the_test_process_aborts"]
fn pdeathsig_child_helper() {
    let out = std::env::var_os(CHILD_ENV).unwrap_or_else(|| {
        panic!("run by vmm_dies_when_the_test_process_aborts, which sets {CHILD_ENV}")
    });
    let vm = sweep("orphan");
    std::fs::write(&out, format!("{} {}", vm.pid(), vm.log_dir().display())).unwrap();
    std::process::abort();
}

#[test]
fn vmm_dies_when_the_test_process_aborts() {
    common::ensure_vmm_built();
    common::assert_vmm_dies_with_aborted_parent("pdeathsig_child_helper", CHILD_ENV);
}
