//! Live migration between two real in-process VMs (`Vm` + `Guest` with
//! vCPU threads running the `sweep` A-B workload), over a unix socket.

use migtest_qmp::schema::{MigrationStatus, RunState};
use migtest_vmm::guest::check_ab_invariant;
use migtest_vmm::migration::Migration;
use migtest_vmm::vm::Vm;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

mod common;

use common::inproc::{
    args, device_states_match_then_destination_runs, status, sweep_vm, wait_until,
};

fn vm(initial: RunState, autostart: bool) -> (Arc<Vm>, Arc<Migration>) {
    sweep_vm(16 * MIB, initial, autostart)
}

fn wait(what: &str, f: impl FnMut() -> bool) {
    wait_until(what, 30, f)
}

#[test]
fn sweep_guest_migrates_with_hold_and_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let (src, sm) = vm(RunState::Paused, true);
    src.vm_start();
    // Destination with -S: it ends paused so its memory can be compared.
    let (dst, dm) = vm(RunState::Inmigrate, false);
    let uri = format!("unix:{}", dir.path().join("mig.sock").display());
    dm.start_incoming_from_cmdline(&uri).unwrap();

    sm.set_parameters(args(json!({"switchover-hold": true, "max-bandwidth": 0})))
        .unwrap();
    sm.migrate(args(json!({"uri": uri}))).unwrap();
    wait("several passes", || {
        sm.info().ram.map(|r| r.dirty_sync_count).unwrap_or(0) >= 4
    });
    // Held: still active, the guest still runs on the source.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(status(&sm), Some(MigrationStatus::Active));
    assert_eq!(src.runstate(), RunState::Running);
    sm.set_parameters(args(json!({"switchover-hold": false})))
        .unwrap();
    wait("source completed", || {
        status(&sm) == Some(MigrationStatus::Completed)
    });
    wait("destination completed", || {
        status(&dm) == Some(MigrationStatus::Completed)
    });

    assert_eq!(src.runstate(), RunState::Postmigrate);
    assert_eq!(dst.runstate(), RunState::Paused);
    let (s, d) = (src.guest().ram(), dst.guest().ram());
    assert_eq!(s.digest(), d.digest(), "guest RAM differs after migration");
    let (start, end) = dst.guest().config().image.test_range(16 * MIB);
    let ab = check_ab_invariant(d.page_first_bytes(start, end)).expect("A-B invariant");
    assert!(ab.pages > 0);
    device_states_match_then_destination_runs(&src, &dst);
}
