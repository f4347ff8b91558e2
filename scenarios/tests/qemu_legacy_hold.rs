//! The legacy hold on real QEMU (no `switchover-hold` there): with QEMU's
//! 3 MB/s + 1 ms throttle, precopy reaches the requested pass count (3)
//! without switching over, and completes after release with memory equal
//! and the destination guest running on.
//!
//! `MIGTEST_LEGACY_HOLD_RUNS=N` repeats it N times in one case (default 1;
//! each run takes ~25 s at 32 MiB). No QEMU: fails unless `MIGTEST_SKIP_QEMU=1`.

use migtest::backend::{qemu_pair_for_test, QEMU_TEST_MEMORY};
use migtest::pair::{HoldMethod, Pair, PairLaunch};
use migtest_qmp::schema::MigrationStatus;
use std::time::{Duration, Instant};

const PASSES: u64 = 3;

fn one_run(src: &migtest::backend::Backend, dst: &migtest::backend::Backend) -> anyhow::Result<()> {
    let mut spec = PairLaunch::new(src.clone());
    spec.dst_backend = dst.clone();
    spec.pair.memory = QEMU_TEST_MEMORY;
    let mut pair = Pair::launch(spec)?;
    pair.src.wait_serial(b'B', Duration::from_secs(30))?;
    let method = pair.hold_switchover()?;
    anyhow::ensure!(
        method == HoldMethod::LegacyThrottle,
        "expected the legacy hold on QEMU, got {method}"
    );
    let params = pair.src.query_parameters()?;
    anyhow::ensure!(
        params["max-bandwidth"] == 3_000_000 && params["downtime-limit"] == 1,
        "legacy hold parameters not in force: {params}"
    );
    let t0 = Instant::now();
    pair.migrate()?;
    let info = pair.wait_for_passes(PASSES, pair.pass_timeout(PASSES))?;
    let held = t0.elapsed();
    anyhow::ensure!(
        info.status == Some(MigrationStatus::Active),
        "status {:?} at {PASSES} held passes; expected active",
        info.status
    );
    anyhow::ensure!(
        pair.src.query_status()?.running,
        "source stopped while held"
    );
    anyhow::ensure!(
        pair.src.events_seen("STOP") == 0,
        "STOP while switchover was held"
    );
    pair.release_switchover()?;
    let t1 = Instant::now();
    let f = pair.wait_completed()?;
    anyhow::ensure!(
        f.passes >= PASSES,
        "completed after only {} passes",
        f.passes
    );
    eprintln!(
        "legacy hold: {PASSES} passes in {:.1} s, release -> completed {:.2} s, {} passes, downtime {:?} ms",
        held.as_secs_f64(),
        t1.elapsed().as_secs_f64(),
        f.passes,
        f.downtime_ms
    );
    pair.assert_memory_equal(None)?;
    pair.assert_destination_runs()
}

#[test]
fn qemu_legacy_hold_reaches_passes_and_completes() {
    let Some((src, dst)) = qemu_pair_for_test("qemu_legacy_hold_reaches_passes_and_completes")
        .unwrap_or_else(|e| panic!("{e:#}"))
    else {
        return;
    };
    let runs: u32 = std::env::var("MIGTEST_LEGACY_HOLD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for i in 1..=runs {
        if let Err(e) = one_run(&src, &dst) {
            panic!("run {i} of {runs} failed: {e:#}");
        }
        eprintln!("run {i} of {runs}: ok");
    }
}
