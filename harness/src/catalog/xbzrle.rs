//! The xbzrle scenario: a held migration whose re-sent pages go
//! XBZRLE-encoded (capability `xbzrle` on the source; the destination
//! needs nothing), then release, memory equal, destination runs.
//!
//! The builtin VMM runs the `hotset` guest (16 pages whose counters change
//! by a few bytes every round); QEMU boots its A-B guest, whose sweep
//! changes one byte a page per pass: both re-send pages that differ a
//! little from the copy sent before, which is what XBZRLE is for. Encoded
//! pages need three passes (QEMU: no cache in the first round, misses fill
//! it in the second), so the scenario waits for at least four.

use super::*;
use migtest_qmp::schema::XbzrleCacheStats;

/// Passes the held migration makes at least.
const MIN_PASSES: u64 = 4;

/// `query-migrate`'s `xbzrle-cache` of the source, which must be there.
fn source_xbzrle(pair: &Pair) -> Result<XbzrleCacheStats> {
    pair.src
        .query_migrate()?
        .xbzrle_cache
        .context("query-migrate shows no xbzrle-cache although the capability is on")
}

fn mission_xbzrle(cfg: &CatalogConfig, ctx: &mut Ctx) -> Result<()> {
    let mut spec = cfg.spec();
    if !cfg.backend.is_qemu() {
        spec.pair.image = "hotset".into();
    }
    let mut pair = ctx.launch(spec)?;
    ctx.step("enable xbzrle on the source");
    pair.src.set_capabilities(&[("xbzrle", true)])?;
    wait_first_pass(ctx, &pair)?;
    ctx.step("hold switchover and migrate");
    ctx.outcome.hold = Some(pair.hold_switchover()?);
    pair.migrate()?;
    wait_passes(ctx, &mut pair, cfg.passes.max(MIN_PASSES))?;
    let held = source_xbzrle(&pair)?;
    ctx.step("release switchover; the migration completes");
    pair.release_switchover()?;
    let figures = pair.wait_completed()?;
    ctx.record(&pair, figures);
    let x = source_xbzrle(&pair)?;
    ensure!(
        x.pages > 0 && x.bytes > 0,
        "no XBZRLE-encoded pages after the migration: {x:?} (while held: {held:?})"
    );
    ensure!(
        x.cache_size == 64 << 20,
        "xbzrle-cache cache-size {} is not QEMU's default 64 MiB",
        x.cache_size
    );
    ctx.note(format!(
        "xbzrle-cache: {} pages encoded in {} bytes, {} cache misses, {} overflows",
        x.pages, x.bytes, x.cache_miss, x.overflow
    ));
    ctx.memory_equal(&pair)?;
    ctx.step("destination runs on");
    pair.assert_destination_runs()
}

pub(super) fn add(v: &mut Vec<Scenario>) {
    v.push(Scenario::new(
        "mission/xbzrle",
        "held migration with xbzrle on the source (hotset guest): encoded pages > 0, \
         memory equal, destination runs",
        mission_xbzrle,
    ));
}
