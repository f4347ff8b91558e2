//! `migtest bench auto-converge`: time to converge with and without the
//! `auto-converge` capability for the same guest under the same
//! `max-bandwidth` cap (the catalog's `mission/auto-converge` setup), on
//! migtest-vmm and on QEMU 7.2 in one run. Without the capability the guest
//! never converges: the figure is how long it was given (and its passes).

use crate::backend::Backend;
use crate::catalog::auto_converge::{wait_completed_throttled, Setup};
use crate::pair::{Pair, PairLaunch, STATUS_TIMEOUT};
use crate::size::Size;
use anyhow::{Context, Result};
use migtest_qmp::schema::MigrationStatus;
use std::time::{Duration, Instant};

/// How long a migration without auto-converge is given to converge.
const WITHOUT_LIMIT: Duration = Duration::from_secs(20);

/// One backend's figures.
struct Row {
    label: String,
    without: String,
    with: String,
}

/// Migrates without the capability for up to [`WITHOUT_LIMIT`], then cancels.
fn without(pair: &mut Pair) -> Result<String> {
    pair.migrate()?;
    let start = Instant::now();
    loop {
        let info = pair.src.query_migrate()?;
        let passes = info.ram.as_ref().map_or(0, |r| r.dirty_sync_count);
        if info.status == Some(MigrationStatus::Completed) {
            return Ok(format!(
                "converged in {:.1} s ({passes} passes)",
                start.elapsed().as_secs_f64()
            ));
        }
        if start.elapsed() >= WITHOUT_LIMIT {
            pair.cancel()?;
            pair.wait_src_status(MigrationStatus::Cancelled, STATUS_TIMEOUT)?;
            return Ok(format!(
                "not converged after {:.0} s ({passes} passes, {} MiB left)",
                WITHOUT_LIMIT.as_secs_f64(),
                info.ram.map_or(0, |r| r.remaining >> 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn measure(label: &str, backend: Backend, memory: Size) -> Result<Row> {
    let setup = Setup::for_backend(&backend);
    let mut spec = PairLaunch::new(backend);
    spec.pair.memory = memory;
    spec.pair.image = setup.image.into();
    let mut pair = Pair::launch(spec)?;
    pair.src.wait_serial(b'B', Duration::from_secs(60))?;
    setup.apply(&pair.src)?;
    let without = without(&mut pair).context("without auto-converge")?;
    pair.restart_destination()?;
    pair.src.set_capabilities(&[("auto-converge", true)])?;
    pair.migrate()?;
    let t =
        wait_completed_throttled(&mut pair, 0, STATUS_TIMEOUT * 3).context("with auto-converge")?;
    let with = format!(
        "converged in {:.1} s ({} passes, throttle up to {} %, downtime {} ms)",
        t.figures.total_ms as f64 / 1000.0,
        t.figures.passes,
        t.max_seen,
        t.figures.downtime_ms.unwrap_or(0)
    );
    Ok(Row {
        label: format!(
            "{label} ({} guest, max-bandwidth {} MiB/s, downtime-limit {} ms)",
            setup.image,
            setup.bandwidth >> 20,
            setup.downtime_ms
        ),
        without,
        with,
    })
}

/// Prints the figures for migtest-vmm and, when usable, QEMU.
pub fn run(memory: Size) -> Result<()> {
    let mut rows = vec![measure("migtest-vmm", Backend::Builtin, memory)?];
    match Backend::qemu_pair(&Default::default()) {
        Ok((q, _)) => rows.push(measure("QEMU 7.2", q, memory)?),
        Err(e) => println!("QEMU not usable ({e:#}): migtest-vmm figures only"),
    }
    println!(
        "auto-converge: time to converge, {} MiB guest (throttle: initial 60 %, +50 %, max 99 %)",
        memory.bytes() >> 20
    );
    for r in rows {
        println!("  {}", r.label);
        println!("    without auto-converge: {}", r.without);
        println!("    with auto-converge:    {}", r.with);
    }
    Ok(())
}
