//! `migtest bench xbzrle`: bytes on the wire for the same held
//! migration with and without the `xbzrle` capability, on migtest-vmm
//! (hotset guest, and the A-B sweep guest) beside QEMU (its A-B guest; QEMU
//! boots only that one). Each run: hold, migrate, wait for `PASSES` passes,
//! release, completed; one run per row.

use super::*;
use crate::backend::qemu_pair_for_test;
use crate::pair::MigrationFigures;
use crate::size::Size;

/// Held passes per run (encoded pages appear from the third).
const PASSES: u64 = 6;
/// Guest RAM (QEMU's legacy hold moves 3 MB/s, so keep passes short).
const MEMORY: u64 = 32 << 20;

struct Run {
    figures: MigrationFigures,
    xbzrle: Option<migtest_qmp::schema::XbzrleCacheStats>,
}

fn one(backend: &Backend, image: &str, xbzrle: bool) -> Result<Run> {
    let mut spec = PairLaunch::new(backend.clone());
    spec.pair.memory = Size(MEMORY);
    spec.pair.image = image.into();
    let mut pair = Pair::launch(spec)?;
    if image != "idle" {
        pair.src.wait_serial(b'B', Duration::from_secs(60))?;
    }
    if xbzrle {
        pair.src.set_capabilities(&[("xbzrle", true)])?;
    }
    pair.hold_switchover()?;
    pair.migrate()?;
    let deadline = Instant::now() + pair.pass_timeout(PASSES);
    loop {
        let info = pair.src.query_migrate()?;
        let passes = info.ram.as_ref().map_or(0, |r| r.dirty_sync_count);
        if passes >= PASSES {
            break;
        }
        if Instant::now() > deadline {
            bail!("{image}: timed out waiting for {PASSES} passes (at {passes})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pair.release_switchover()?;
    let figures = pair.wait_completed()?;
    let xbzrle = pair.src.query_migrate()?.xbzrle_cache;
    Ok(Run { figures, xbzrle })
}

fn row(vmm: &str, image: &str, off: &Run, on: &Run) {
    let x = on.xbzrle.clone().unwrap_or_default();
    println!(
        "{vmm:<12} {image:<7} {:>5} {:>12} {:>5} {:>12} {:>7.1}% {:>8} {:>10} {:>6} {:>8}",
        off.figures.passes,
        off.figures.transferred,
        on.figures.passes,
        on.figures.transferred,
        100.0 * on.figures.transferred as f64 / off.figures.transferred.max(1) as f64,
        x.pages,
        x.bytes,
        x.overflow,
        x.cache_miss,
    );
}

/// Runs the comparison and prints one row per VMM and guest.
pub fn run() -> Result<()> {
    println!(
        "bytes on the wire, held {PASSES} passes then released, {} MiB guest, one run each",
        MEMORY >> 20
    );
    println!(
        "{:<12} {:<7} {:>5} {:>12} {:>5} {:>12} {:>8} {:>8} {:>10} {:>6} {:>8}",
        "vmm",
        "guest",
        "passes",
        "bytes",
        "passes",
        "xbzrle-bytes",
        "ratio",
        "enc-pages",
        "enc-bytes",
        "ovfl",
        "misses"
    );
    for image in ["hotset", "sweep"] {
        let off = one(&Backend::Builtin, image, false)?;
        let on = one(&Backend::Builtin, image, true)?;
        row("migtest-vmm", image, &off, &on);
    }
    match qemu_pair_for_test("bench_xbzrle")? {
        Some((qemu, _)) => {
            let off = one(&qemu, "sweep", false)?;
            let on = one(&qemu, "sweep", true)?;
            row("qemu", "A-B", &off, &on);
        }
        None => println!("qemu: not run (no QEMU found)"),
    }
    Ok(())
}
