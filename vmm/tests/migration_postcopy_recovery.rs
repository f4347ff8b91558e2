//! Postcopy failure and recovery between two in-process VMs running the
//! `sweep` guest: `migrate-pause` on either side (both go
//! `postcopy-paused`), `migrate-recover` on the destination, `migrate`
//! with `resume` on the source, completion with byte-equal memory; and
//! QEMU 7.2's error texts of the three commands.

use migtest_qmp::schema::{MigrationStatus, RunState};
use migtest_vmm::guest::check_ab_invariant;
use migtest_vmm::migration::Migration;
use serde_json::json;
use std::time::{Duration, Instant};

mod common;

use common::inproc::{args, status, sweep_vm, VmPair};

const MIB: u64 = 1 << 20;
const RAM: u64 = 16 * MIB;

fn wait_status(who: &str, m: &Migration, s: MigrationStatus) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(m) != Some(s) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {who} to be {s}; it is {:?}",
            status(m)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A postcopy migration started at once (little sent in precopy) and slowed
/// down by `max-postcopy-bandwidth` (4096 bytes/s, as QEMU's qtest does), cut by `migrate-pause` on the source or the destination:
/// both sides end `postcopy-paused`.
fn paused_postcopy(dst_autostart: bool, pause_on_source: bool) -> VmPair {
    let p = VmPair::listening(
        RAM,
        dst_autostart,
        json!([{"capability": "postcopy-ram", "state": true}]),
    );
    let (src, sm, dm, uri) = (&p.src, &p.sm, &p.dm, &p.uri);
    sm.set_parameters(args(
        json!({"max-bandwidth": 4096, "max-postcopy-bandwidth": 4096}),
    ))
    .unwrap();
    sm.migrate(args(json!({"uri": uri}))).unwrap();
    sm.migrate_start_postcopy().unwrap();
    wait_status("the source", sm, MigrationStatus::PostcopyActive);
    wait_status("the destination", dm, MigrationStatus::PostcopyActive);
    if pause_on_source {
        sm.migrate_pause().unwrap();
    } else {
        dm.migrate_pause().unwrap();
    }
    wait_status("the source", sm, MigrationStatus::PostcopyPaused);
    wait_status("the destination", dm, MigrationStatus::PostcopyPaused);
    assert_eq!(
        src.runstate(),
        RunState::FinishMigrate,
        "the paused source keeps its guest stopped"
    );
    p
}

/// `migrate-recover` on a new socket, `migrate {resume: true}`, then the
/// bandwidth cap lifted: both sides complete.
fn recover(p: &VmPair, name: &str) {
    let uri = format!("unix:{}", p.dir.path().join(name).display());
    p.dm.migrate_recover(args(json!({"uri": uri}))).unwrap();
    assert_eq!(
        p.dm.migrate_recover(args(json!({"uri": uri})))
            .unwrap_err()
            .desc,
        "Migrate recovery is triggered already"
    );
    p.sm.migrate(args(json!({"uri": uri, "resume": true})))
        .unwrap();
    wait_status("the destination", &p.dm, MigrationStatus::PostcopyActive);
    p.sm.set_parameters(args(json!({"max-postcopy-bandwidth": 0})))
        .unwrap();
    wait_status("the source", &p.sm, MigrationStatus::Completed);
    wait_status("the destination", &p.dm, MigrationStatus::Completed);
}

#[test]
fn cuts_from_either_side_recover_twice_with_equal_memory() {
    let p = paused_postcopy(false, true);
    // First recovery, then a cut from the destination's side while the
    // (bandwidth-capped) postcopy goes on, then a second recovery.
    let uri = format!("unix:{}", p.dir.path().join("r1.sock").display());
    p.dm.migrate_recover(args(json!({"uri": uri}))).unwrap();
    p.sm.migrate(args(json!({"uri": uri, "resume": true})))
        .unwrap();
    wait_status("the source", &p.sm, MigrationStatus::PostcopyActive);
    wait_status("the destination", &p.dm, MigrationStatus::PostcopyActive);
    p.dm.migrate_pause().unwrap();
    wait_status("the source", &p.sm, MigrationStatus::PostcopyPaused);
    wait_status("the destination", &p.dm, MigrationStatus::PostcopyPaused);
    recover(&p, "r2.sock");
    assert_eq!(p.src.runstate(), RunState::Postmigrate);
    assert_eq!(
        p.src.guest().ram().digest(),
        p.dst.guest().ram().digest(),
        "guest RAM differs after the recovered postcopy"
    );
    let ram = p.sm.info().ram.expect("ram stats");
    assert!(ram.postcopy_bytes > 0, "{ram:?}");
    p.src.guest().pause();
}

#[test]
fn a_cut_from_the_running_destination_recovers_and_the_guest_runs_on() {
    let p = paused_postcopy(true, false);
    assert_eq!(
        p.dst.runstate(),
        RunState::Running,
        "the destination runs on"
    );
    recover(&p, "recover.sock");
    let before = p.dst.guest().ram().digest();
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.dst.guest().ram().digest() == before {
        assert!(Instant::now() < deadline, "no destination guest progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    p.dst.guest().pause();
    let (start, end) = p.dst.guest().config().image.test_range(RAM);
    check_ab_invariant(p.dst.guest().ram().page_first_bytes(start, end))
        .expect("A-B invariant after the recovered postcopy");
    p.src.guest().pause();
}

#[test]
fn pause_recover_and_resume_errors_are_qemus() {
    let (_src, sm) = sweep_vm(RAM, RunState::Running, true);
    let pause = sm.migrate_pause().unwrap_err().desc;
    let recover = sm
        .migrate_recover(args(json!({"uri": "unix:/nonexistent/x"})))
        .unwrap_err()
        .desc;
    let resume = sm
        .migrate(args(json!({"uri": "unix:/nonexistent/x", "resume": true})))
        .unwrap_err()
        .desc;
    insta::assert_snapshot!(
        "postcopy_recovery_errors",
        format!("migrate-pause: {pause}\nmigrate-recover: {recover}\nmigrate resume: {resume}\n")
    );
}
