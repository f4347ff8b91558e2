//! The scenario catalog against real QEMU: one nextest case per catalog
//! scenario, running the same scenario code as the builtin suite
//! (`migtest::catalog::run_named`).
//!
//! QEMU comes from `MIGTEST_QEMU`, `QTEST_QEMU_BINARY` (or the `_SRC`/`_DST`
//! pair) or `qemu-system-x86_64` on `PATH`. With none, every case FAILS with
//! a message saying so, unless `MIGTEST_SKIP_QEMU=1` (then each prints that
//! it was not run). Guests get [`QEMU_TEST_MEMORY`] (32 MiB) because QEMU
//! has no `switchover-hold` and the legacy hold moves 3 MB/s.
//!
//! Scenarios that cannot run on QEMU are not silently passed: their cases
//! assert that the catalog reports them as skipped, with the reason.
//! A scenario that a known QEMU 7.2 defect ends early (`qemu_defect`: the
//! checks before it held; e.g. a multifd migration whose cleanup never ends)
//! passes, with the defect printed.

use migtest::backend::{qemu_pair_for_test, QEMU_TEST_MEMORY};
use migtest::catalog::{catalog, run_named, CatalogConfig, ScenarioOutcome};

/// Runs `scenario` on QEMU; `None` when QEMU is absent and skipping is allowed.
fn run(scenario: &str, test: &str) -> Option<ScenarioOutcome> {
    let (src, dst) = qemu_pair_for_test(test).unwrap_or_else(|e| panic!("{e:#}"))?;
    let mut cfg = CatalogConfig::new(src);
    cfg.dst_backend = dst;
    cfg.memory = QEMU_TEST_MEMORY;
    let outcome = run_named(scenario, &cfg).unwrap_or_else(|e| panic!("{e:#}"));
    for n in &outcome.notes {
        eprintln!("{scenario}: note: {n}");
    }
    if let Some(d) = &outcome.qemu_defect {
        println!("{scenario}: ended early on a known QEMU defect: {d}");
    }
    eprintln!(
        "{scenario}: {:.1} s, hold {:?}, figures {:?}",
        outcome.elapsed.as_secs_f64(),
        outcome.hold,
        outcome.figures
    );
    Some(outcome)
}

/// A scenario that must run (and pass) on QEMU.
fn runs(scenario: &str, test: &str) {
    if let Some(o) = run(scenario, test) {
        assert!(
            o.skipped.is_none(),
            "{scenario} was skipped on QEMU: {}",
            o.skipped.unwrap_or_default()
        );
    }
}

/// A scenario the catalog must report as not run on QEMU, with a reason.
fn skipped(scenario: &str, test: &str, reason_contains: &str) {
    if let Some(o) = run(scenario, test) {
        let reason = o
            .skipped
            .unwrap_or_else(|| panic!("{scenario} ran on QEMU; expected it to be skipped"));
        assert!(reason.contains(reason_contains), "{reason}");
        eprintln!("{scenario}: skipped on QEMU: {reason}");
    }
}

macro_rules! cases {
    ($( $f:ident => $name:literal $(, skipped $why:literal)? ;)*) => {
        $(
            #[test]
            fn $f() {
                cases!(@body $f, $name $(, $why)?);
            }
        )*

        const CASES: &[&str] = &[$($name),*];
    };
    (@body $f:ident, $name:literal) => { runs($name, stringify!($f)) };
    (@body $f:ident, $name:literal, $why:literal) => { skipped($name, stringify!($f), $why) };
}

cases! {
    qemu_mission => "mission";
    qemu_mission_256m => "mission/256m";
    qemu_mission_postcopy => "mission/postcopy";
    qemu_postcopy_running_destination => "postcopy/running-destination";
    qemu_postcopy_destination_killed => "postcopy/destination-killed";
    qemu_postcopy_network_cut_recover => "postcopy/network-cut-recover";
    qemu_postcopy_migrate_pause_recover => "postcopy/migrate-pause-recover";
    qemu_mission_tcp_smp1 => "mission/tcp/smp1";
    qemu_mission_unix_smp2 => "mission/unix/smp2";
    qemu_mission_tcp_smp2 => "mission/tcp/smp2";
    qemu_mission_workload_hotset => "mission/workload/hotset", skipped "A-B guest";
    qemu_mission_workload_rate => "mission/workload/rate", skipped "A-B guest";
    qemu_mission_workload_random => "mission/workload/random", skipped "A-B guest";
    qemu_mission_workload_idle => "mission/workload/idle", skipped "A-B guest";
    qemu_non_live => "non-live";
    qemu_preheat_cancel => "preheat-cancel";
    qemu_hold_toggle => "hold-toggle";
    qemu_bad_destination => "bad-destination";
    qemu_destination_killed => "destination-killed";
    qemu_hold_on_destination => "hold-on-destination", skipped "switchover-hold";
    qemu_bandwidth_limited => "bandwidth-limited";
    qemu_pause_before_switchover => "pause-before-switchover";
    qemu_pause_before_switchover_held => "pause-before-switchover/held";
    qemu_cancel_after_none => "cancel/src/after/none";
    qemu_cancel_after_setup => "cancel/src/after/setup";
    qemu_cancel_after_active => "cancel/src/after/active";
    qemu_cancel_after_pre_switchover => "cancel/src/after/pre-switchover";
    qemu_cancel_after_completed => "cancel/src/after/completed";
    qemu_cancel_after_cancelled => "cancel/src/after/cancelled";
    qemu_cancel_after_failed => "cancel/src/after/failed";
    qemu_mission_file => "mission/file", skipped "Parameter 'uri' expects a valid migration protocol";
    qemu_mission_fd => "mission/fd";
    qemu_mission_multifd_unix => "mission/multifd/unix";
    qemu_mission_multifd_tcp => "mission/multifd/tcp";
    qemu_multifd_cancel_during_pass => "multifd/cancel-during-pass";
    qemu_multifd_destination_killed => "multifd/destination-killed";
    qemu_mission_auto_converge => "mission/auto-converge";
    qemu_mission_xbzrle => "mission/xbzrle";
}

/// Every catalog scenario has a QEMU case here (a new scenario fails this
/// until it is added, as running or as skipped).
#[test]
fn qemu_cases_cover_the_catalog() {
    let names: Vec<String> = catalog().into_iter().map(|s| s.name).collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !CASES.contains(&n.as_str()))
        .collect();
    assert!(missing.is_empty(), "no QEMU case for {missing:?}");
    let stale: Vec<&&str> = CASES
        .iter()
        .filter(|c| !names.iter().any(|n| n == *c))
        .collect();
    assert!(
        stale.is_empty(),
        "QEMU cases for unknown scenarios {stale:?}"
    );
}
