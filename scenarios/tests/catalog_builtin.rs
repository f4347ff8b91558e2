//! The scenario catalog against the builtin migtest-vmm: one nextest case
//! per scenario, running the same code as `migtest run`.

use migtest::backend::Backend;
use migtest::catalog::{self, CatalogConfig};
use rstest::rstest;

fn run(name: &str) {
    let cfg = CatalogConfig::new(Backend::Builtin);
    let start = now();
    let result = catalog::run_named(name, &cfg);
    record_span(name, start, now());
    if let Err(e) = result {
        panic!("{e:?}");
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Appends `name start end` to `target/migtest-catalog-times.txt`, from
/// which `ci/test` prints the catalog's wall time (first start to last end).
fn record_span(name: &str, start: f64, end: f64) {
    use std::io::Write;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/migtest-catalog-times.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{name} {start:.3} {end:.3}");
    }
}

/// Every catalog entry, by name. `every_catalog_scenario_has_a_case` keeps
/// this list complete.
const NAMES: &[&str] = &[
    "mission",
    "mission/256m",
    "mission/tcp/smp1",
    "mission/unix/smp2",
    "mission/tcp/smp2",
    "mission/workload/hotset",
    "mission/workload/rate",
    "mission/workload/random",
    "mission/workload/idle",
    "non-live",
    "preheat-cancel",
    "hold-toggle",
    "bad-destination",
    "destination-killed",
    "hold-on-destination",
    "bandwidth-limited",
    "pause-before-switchover",
    "pause-before-switchover/held",
    "cancel/src/after/none",
    "cancel/src/after/setup",
    "cancel/src/after/active",
    "cancel/src/after/pre-switchover",
    "cancel/src/after/completed",
    "cancel/src/after/cancelled",
    "cancel/src/after/failed",
    "mission/file",
    "mission/fd",
    "mission/multifd/unix",
    "mission/multifd/tcp",
    "multifd/cancel-during-pass",
    "multifd/destination-killed",
    "mission/postcopy",
    "postcopy/running-destination",
    "mission/auto-converge",
    "postcopy/destination-killed",
    "postcopy/network-cut-recover",
    "postcopy/migrate-pause-recover",
    "mission/xbzrle",
];

#[rstest]
#[case::mission(0)]
#[case::mission_256m(1)]
#[case::mission_tcp_smp1(2)]
#[case::mission_unix_smp2(3)]
#[case::mission_tcp_smp2(4)]
#[case::mission_workload_hotset(5)]
#[case::mission_workload_rate(6)]
#[case::mission_workload_random(7)]
#[case::mission_workload_idle(8)]
#[case::non_live(9)]
#[case::preheat_cancel(10)]
#[case::hold_toggle(11)]
#[case::bad_destination(12)]
#[case::destination_killed(13)]
#[case::hold_on_destination(14)]
#[case::bandwidth_limited(15)]
#[case::pause_before_switchover(16)]
#[case::pause_before_switchover_held(17)]
#[case::cancel_after_none(18)]
#[case::cancel_after_setup(19)]
#[case::cancel_after_active(20)]
#[case::cancel_after_pre_switchover(21)]
#[case::cancel_after_completed(22)]
#[case::cancel_after_cancelled(23)]
#[case::cancel_after_failed(24)]
#[case::mission_file(25)]
#[case::mission_fd(26)]
#[case::mission_multifd_unix(27)]
#[case::mission_multifd_tcp(28)]
#[case::multifd_cancel_during_pass(29)]
#[case::multifd_destination_killed(30)]
#[case::mission_postcopy(31)]
#[case::postcopy_running_destination(32)]
#[case::mission_auto_converge(33)]
#[case::postcopy_destination_killed(34)]
#[case::postcopy_network_cut_recover(35)]
#[case::postcopy_migrate_pause_recover(36)]
#[case::mission_xbzrle(37)]
fn catalog_builtin(#[case] index: usize) {
    run(NAMES[index]);
}

#[test]
fn every_catalog_scenario_has_a_case() {
    let names: Vec<String> = catalog::catalog().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names, NAMES,
        "the catalog and this suite's case list differ"
    );
}
