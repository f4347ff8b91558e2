//! A small end-to-end migration between two real QEMUs (`pc`, 32 MiB, both
//! held with `-S` so no guest code runs), exercising the VM helpers,
//! memory comparison and the failure report.

mod common;

use std::time::Duration;

use migtest::backend::{Backend, LaunchSpec};
use migtest::checks::compare_memory;
use migtest::diagnostics::Context;
use migtest::vm::Vm;
use migtest_qmp::schema::{MigrationStatus, RunState};
use serde_json::json;

const MEM: u64 = 32 << 20;
const WAIT: Duration = Duration::from_secs(30);

fn pair(ctx: &Context, incoming: &str) -> (Vm, Vm) {
    let _s = ctx.step("launch");
    let backend = Backend::qemu("pc");
    let src = Vm::launch_as(
        "source",
        &backend,
        &LaunchSpec::new("source", MEM, "none").paused(true),
    )
    .unwrap();
    ctx.add_vm(&src);
    let dst = Vm::launch_as(
        "destination",
        &backend,
        &LaunchSpec::new("target", MEM, "none")
            .paused(true)
            .incoming(incoming),
    )
    .unwrap();
    ctx.add_vm(&dst);
    (src, dst)
}

#[test]
fn precopy_over_unix_socket_copies_memory() {
    let ctx = Context::new("precopy_over_unix_socket_copies_memory");
    let (src, dst) = pair(&ctx, "unix:");
    {
        let _s = ctx.step("configure");
        for vm in [&src, &dst] {
            vm.set_capabilities(&[("events", true)]).unwrap();
        }
        src.set_parameters(json!({"downtime-limit": 300})).unwrap();
        assert_eq!(
            src.query_parameters().unwrap()["downtime-limit"],
            json!(300)
        );
    }
    let _s = ctx.step("migrate");
    src.migrate(&dst.incoming_uri().unwrap()).unwrap();
    let info = src
        .wait_for_status(MigrationStatus::Completed, WAIT)
        .unwrap();
    assert!(info.ram.unwrap().total >= MEM);
    dst.wait_for_status(MigrationStatus::Completed, WAIT)
        .unwrap();
    src.wait_event_matching(
        "MIGRATION",
        |e| e.data.as_ref().is_some_and(|d| d["status"] == "completed"),
        WAIT,
    )
    .unwrap();
    assert_eq!(src.query_status().unwrap().status, RunState::Postmigrate);
    // From a never-started source QEMU keeps the destination in prelaunch.
    let st = dst.query_status().unwrap().status;
    assert!(
        matches!(st, RunState::Paused | RunState::Prelaunch),
        "{st:?}"
    );
    drop(_s);

    let _s = ctx.step("compare memory");
    let a = src.pmemsave(0, MEM).unwrap();
    let b = dst.pmemsave(0, MEM).unwrap();
    compare_memory(&a, &b, 0).unwrap();
    assert_eq!(
        src.memory_digest(0xf_0000, 0x10_0000).unwrap(),
        dst.memory_digest(0xf_0000, 0x10_0000).unwrap()
    );
}

#[test]
fn failed_migration_is_reported_with_error_desc() {
    let ctx = Context::new("failed_migration_is_reported_with_error_desc");
    let (src, _dst) = pair(&ctx, "defer");
    let _s = ctx.step("migrate to nowhere");
    // Nothing listens there: the migration fails.
    let uri = format!("unix:{}/nobody.sock", src.process().log_dir().display());
    let r = src.migrate(&uri).and_then(|_| {
        src.wait_for_status(MigrationStatus::Completed, WAIT)
            .map(drop)
    });
    let err = ctx.check(r).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("==== migtest failure in failed_migration_is_reported_with_error_desc, step: migrate to nowhere ===="), "{msg}");
    assert!(msg.contains("[source] qemu pid"), "{msg}");
    assert!(msg.contains("[destination] qemu pid"), "{msg}");
    assert!(
        msg.contains("> {\"execute\":\"migrate\",\"arguments\":{\"uri\":"),
        "{msg}"
    );
    assert!(msg.lines().count() < 60, "{msg}");
    // Whether QEMU rejects the command or fails the migration, the reason is there.
    assert!(msg.contains("nobody.sock"), "{msg}");
    // The report asked to keep the logs; clean up here.
    let dirs = [
        src.process().log_dir().to_path_buf(),
        _dst.process().log_dir().to_path_buf(),
    ];
    drop(_s);
    drop((src, _dst));
    for d in dirs {
        assert!(d.exists());
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// QEMU's own precopy test shape with the real A-B guest under TCG: the
/// source guest runs, the destination is held with `-S`; after convergence
/// the memory is byte-equal, the A-B invariant holds and the destination
/// guest runs on.
#[test]
fn qemu_ab_guest_migrates_and_runs_on() {
    const MEM: u64 = 64 << 20;
    let ctx = Context::new("qemu_ab_guest_migrates_and_runs_on");
    let backend = Backend::qemu("pc");
    let src = Vm::launch_as("source", &backend, &LaunchSpec::new("source", MEM, "sweep")).unwrap();
    ctx.add_vm(&src);
    let dst = Vm::launch_as(
        "destination",
        &backend,
        &LaunchSpec::new("target", MEM, "sweep")
            .paused(true)
            .incoming("unix:"),
    )
    .unwrap();
    ctx.add_vm(&dst);
    let (start, end) = backend.test_range("sweep", MEM).unwrap();
    {
        let _s = ctx.step("source guest runs");
        src.wait_serial(b'B', WAIT).unwrap();
    }
    {
        let _s = ctx.step("migrate (converging: 1 GB/s, 30 s downtime)");
        src.set_capabilities(&[("events", true)]).unwrap();
        src.set_parameters(json!({"max-bandwidth": 1_000_000_000u64, "downtime-limit": 30_000}))
            .unwrap();
        src.migrate(&dst.incoming_uri().unwrap()).unwrap();
        src.wait_for_status(MigrationStatus::Completed, WAIT)
            .unwrap();
        dst.wait_for_status(MigrationStatus::Completed, WAIT)
            .unwrap();
        src.wait_event("STOP", WAIT).unwrap();
    }
    {
        let _s = ctx.step("compare memory and check the A-B invariant");
        let a = src.pmemsave(start, end - start).unwrap();
        let b = dst.pmemsave(start, end - start).unwrap();
        compare_memory(&a, &b, start).unwrap();
        migtest::checks::check_guests_ram(&b, start, end).unwrap();
    }
    {
        let _s = ctx.step("destination runs on");
        let offset = std::fs::metadata(dst.serial_path()).map_or(0, |m| m.len());
        dst.cont().unwrap();
        dst.wait_serial_from(offset, b'B', WAIT).unwrap();
    }
}
