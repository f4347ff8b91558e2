//! The scenario catalog against the builtin migtest-vmm: one nextest case
//! per scenario, running the same code as `migtest run`.

use migtest::backend::Backend;
use migtest::catalog::{self, CatalogConfig};
use rstest::rstest;

fn run(name: &str) {
    let cfg = CatalogConfig::new(Backend::Builtin);
    if let Err(e) = catalog::run_named(name, &cfg) {
        panic!("{e:?}");
    }
}

/// Every catalog entry, by name. `every_catalog_scenario_has_a_case` keeps
/// this list complete.
const NAMES: &[&str] = &[
    "mission",
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
];

#[rstest]
#[case::mission(0)]
#[case::mission_tcp_smp1(1)]
#[case::mission_unix_smp2(2)]
#[case::mission_tcp_smp2(3)]
#[case::mission_workload_hotset(4)]
#[case::mission_workload_rate(5)]
#[case::mission_workload_random(6)]
#[case::mission_workload_idle(7)]
#[case::non_live(8)]
#[case::preheat_cancel(9)]
#[case::hold_toggle(10)]
#[case::bad_destination(11)]
#[case::destination_killed(12)]
#[case::hold_on_destination(13)]
#[case::bandwidth_limited(14)]
#[case::pause_before_switchover(15)]
#[case::pause_before_switchover_held(16)]
#[case::cancel_after_none(17)]
#[case::cancel_after_setup(18)]
#[case::cancel_after_active(19)]
#[case::cancel_after_pre_switchover(20)]
#[case::cancel_after_completed(21)]
#[case::cancel_after_cancelled(22)]
#[case::cancel_after_failed(23)]
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
