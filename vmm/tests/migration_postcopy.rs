//! Postcopy between two real in-process VMs (`Vm` + `Guest` running the
//! `sweep` A-B workload) over a unix socket: `migrate-start-postcopy`
//! while `switchover-hold` is set, page requests over the return path,
//! byte-equal memory, and the QMP errors.

use migtest_qmp::schema::{MigrationStatus, RunState};
use migtest_vmm::guest::check_ab_invariant;
use migtest_vmm::migration::Migration;
use migtest_vmm::vm::Vm;
use serde_json::json;
use std::sync::Arc;

const MIB: u64 = 1 << 20;
const RAM: u64 = 16 * MIB;

mod common;

use common::inproc::{
    args, device_states_match_then_destination_runs, status, sweep_vm, wait_until, VmPair,
};

fn vm(initial: RunState, autostart: bool) -> (Arc<Vm>, Arc<Migration>) {
    sweep_vm(RAM, initial, autostart)
}

fn wait(what: &str, f: impl FnMut() -> bool) {
    wait_until(what, 60, f)
}

fn postcopy_caps() -> serde_json::Value {
    json!([
        {"capability": "postcopy-ram", "state": true},
        {"capability": "postcopy-blocktime", "state": true}
    ])
}

fn postcopy_on(m: &Migration) {
    m.set_capabilities(args(json!({ "capabilities": postcopy_caps() })))
        .unwrap();
}

/// Source running the sweep guest, held for 3 passes, then
/// `migrate-start-postcopy` with the hold still set.
fn held_then_postcopy(dst_autostart: bool) -> (Arc<Vm>, Arc<Migration>, Arc<Vm>, Arc<Migration>) {
    let p = VmPair::listening(RAM, dst_autostart, postcopy_caps());
    let (src, sm, dm, uri) = (&p.src, &p.sm, &p.dm, &p.uri);
    sm.set_parameters(args(
        json!({"switchover-hold": true, "max-bandwidth": 64 * MIB}),
    ))
    .unwrap();
    sm.migrate(args(json!({"uri": uri}))).unwrap();
    wait("3 passes", || {
        sm.info().ram.map(|r| r.dirty_sync_count).unwrap_or(0) >= 3
    });
    assert_eq!(status(sm), Some(MigrationStatus::Active));
    assert_eq!(src.runstate(), RunState::Running);
    sm.migrate_start_postcopy().unwrap();
    wait("postcopy-active or completed on the source", || {
        matches!(
            status(sm),
            Some(MigrationStatus::PostcopyActive | MigrationStatus::Completed)
        )
    });
    assert!(sm.parameters().switchover_hold, "the hold is still set");
    wait("source completed", || {
        status(sm) == Some(MigrationStatus::Completed)
    });
    wait("destination completed", || {
        status(dm) == Some(MigrationStatus::Completed)
    });
    (src.clone(), sm.clone(), p.dst.clone(), dm.clone())
}

#[test]
fn postcopy_under_hold_with_a_paused_destination_is_byte_equal() {
    let (src, sm, dst, _dm) = held_then_postcopy(false);
    assert_eq!(src.runstate(), RunState::Postmigrate);
    assert_eq!(dst.runstate(), RunState::Paused);
    let (s, d) = (src.guest().ram(), dst.guest().ram());
    assert_eq!(s.digest(), d.digest(), "guest RAM differs after postcopy");
    let ram = sm.info().ram.expect("ram stats");
    assert!(
        ram.postcopy_bytes > 0,
        "pages were sent in postcopy: {ram:?}"
    );
    device_states_match_then_destination_runs(&src, &dst);
}

#[test]
fn postcopy_with_a_running_destination_requests_pages_and_keeps_the_invariant() {
    let (src, sm, dst, dm) = held_then_postcopy(true);
    assert_eq!(dst.runstate(), RunState::Running);
    let ram = sm.info().ram.expect("ram stats");
    // How many pages the guest asked for depends on timing; that they
    // block and are asked for is `guest::postcopy_gate`'s unit test.
    assert!(
        ram.postcopy_bytes > 0,
        "pages were sent in postcopy: {ram:?}"
    );
    assert!(dm.info().postcopy_blocktime.is_some());
    // The guest runs on: its state moves.
    let before = dst.guest().ram().digest();
    wait("destination guest progress", || {
        dst.guest().ram().digest() != before
    });
    dst.guest().pause();
    let d = dst.guest().ram();
    let (start, end) = dst.guest().config().image.test_range(RAM);
    check_ab_invariant(d.page_first_bytes(start, end)).expect("A-B invariant after postcopy");
    src.guest().pause();
}

#[test]
fn start_postcopy_errors_are_qemus() {
    let (_src, sm) = vm(RunState::Running, true);
    let e = sm.migrate_start_postcopy().unwrap_err();
    assert_eq!(
        e.desc,
        "Enable postcopy with migrate_set_capability before the start of migration"
    );
    postcopy_on(&sm);
    let e = sm.migrate_start_postcopy().unwrap_err();
    assert_eq!(
        e.desc,
        "Postcopy must be started after migration has been started"
    );
}

#[test]
fn destination_without_postcopy_ram_fails_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let (src, sm) = vm(RunState::Paused, true);
    src.vm_start();
    let (_dst, dm) = vm(RunState::Inmigrate, false);
    dm.migrate_incoming(args(json!({"uri": "defer"}))).ok();
    postcopy_on(&sm);
    let uri = format!("unix:{}", dir.path().join("mig.sock").display());
    // exit-on-error false keeps this test process alive.
    let (_d2, dm2) = vm(RunState::Inmigrate, false);
    dm2.start_incoming_from_cmdline("defer").unwrap();
    dm2.migrate_incoming(args(json!({"uri": uri, "exit-on-error": false})))
        .unwrap();
    sm.set_parameters(args(json!({"switchover-hold": true})))
        .unwrap();
    sm.migrate(args(json!({"uri": uri}))).unwrap();
    sm.migrate_start_postcopy().unwrap();
    wait("destination failed", || {
        status(&dm2) == Some(MigrationStatus::Failed)
    });
    let desc = dm2.info().error_desc.unwrap_or_default();
    assert!(
        desc.starts_with("stream: postcopy: the source started postcopy but the postcopy-ram capability is off on the destination at offset "),
        "{desc}"
    );
    drop(dm);
    src.guest().pause();
}
