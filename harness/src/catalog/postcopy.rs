//! The postcopy scenarios: `migrate-start-postcopy` while `switchover-hold`
//! holds precopy (the hold is for precopy only), and plain postcopy with a
//! destination that runs the guest during postcopy.

use super::*;
use crate::size::Size;
use migtest_qmp::schema::MigrationInfo;

/// Enables `postcopy-ram` on both sides. On QEMU that needs userfaultfd:
/// QEMU refuses the capability on the destination when the host has none
/// ("Postcopy is not supported"); that text is returned as the skip reason.
fn enable_postcopy(pair: &Pair) -> Result<Option<String>> {
    if let Err(e) = pair.dst()?.set_capabilities(&[("postcopy-ram", true)]) {
        if pair.spec.dst_backend.is_qemu() {
            return Ok(Some(format!(
                "QEMU refuses postcopy-ram on the destination (userfaultfd not available?): {e:#}"
            )));
        }
        return Err(e);
    }
    pair.src.set_capabilities(&[("postcopy-ram", true)])?;
    Ok(None)
}

/// A pair with `postcopy-ram` on both sides, after the first pass; `None`
/// (the scenario skipped with QEMU's reason) when the backend refuses it.
pub(super) fn launch_postcopy(ctx: &mut Ctx, spec: PairLaunch) -> Result<Option<Pair>> {
    let pair = ctx.launch(spec)?;
    ctx.step("postcopy-ram on both sides");
    if let Some(reason) = enable_postcopy(&pair)? {
        ctx.skip(reason)?;
        return Ok(None);
    }
    wait_first_pass(ctx, &pair)?;
    Ok(Some(pair))
}

/// Holds switchover, then `migrate` (to `uri`, or to the destination):
/// precopy cannot complete before `migrate-start-postcopy`, as QEMU's
/// postcopy qtests ensure with `migrate_ensure_non_converge`. Without it a
/// small guest on QEMU completes in precopy within milliseconds, before
/// the harness's `migrate-start-postcopy` arrives.
pub(super) fn migrate_held(
    ctx: &mut Ctx,
    pair: &mut Pair,
    uri: Option<&str>,
) -> Result<HoldMethod> {
    ctx.step("hold switchover");
    let hold = pair.hold_switchover()?;
    ctx.outcome.hold = Some(hold);
    ctx.step("migrate");
    match uri {
        Some(u) => pair.src.migrate(u)?,
        None => pair.migrate()?,
    }
    Ok(hold)
}

/// `migrate-start-postcopy`, then the `postcopy-active` event on both sides.
pub(super) fn start_postcopy(ctx: &mut Ctx, pair: &mut Pair) -> Result<()> {
    ctx.step("migrate-start-postcopy");
    pair.src.execute("migrate-start-postcopy", json!({}))?;
    ctx.step("MIGRATION postcopy-active on both sides");
    pair.src
        .wait_migration_event("postcopy-active", STATUS_TIMEOUT)?;
    pair.dst()?
        .wait_migration_event("postcopy-active", STATUS_TIMEOUT)?;
    Ok(())
}

/// `migrate-start-postcopy`, then both sides `completed`; the source went
/// through `postcopy-active`.
fn start_postcopy_and_complete(ctx: &mut Ctx, pair: &mut Pair) -> Result<MigrationInfo> {
    start_postcopy(ctx, pair)?;
    ctx.step("wait for completion");
    let info = pair.wait_src_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
    pair.wait_dst_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
    Ok(info)
}

/// `mission/postcopy`: a 256 MiB sweep guest held for N passes, then
/// `migrate-start-postcopy` with the hold still set: completes, memory
/// equal, the destination runs on.
fn mission_postcopy(cfg: &CatalogConfig, ctx: &mut Ctx) -> Result<()> {
    let mut spec = cfg.spec();
    spec.pair.memory = spec.pair.memory.max(Size(256 << 20));
    let Some(mut pair) = launch_postcopy(ctx, spec)? else {
        return Ok(());
    };
    let hold = migrate_held(ctx, &mut pair, None)?;
    ctx.step(&format!("wait for {} passes while held", cfg.passes));
    wait_passes(ctx, &mut pair, cfg.passes)?;
    let info = pair.src.query_migrate()?;
    ensure!(
        info.status == Some(MigrationStatus::Active),
        "source status {:?} while held; expected active",
        info.status
    );
    let info = start_postcopy_and_complete(ctx, &mut pair)?;
    if hold == HoldMethod::SwitchoverHold {
        ctx.step("the hold is still set");
        ensure!(
            pair.src.query_parameters_typed()?.switchover_hold == Some(true),
            "switchover-hold was cleared by the postcopy switchover"
        );
    } else {
        ctx.note(format!(
            "held with the {hold} (no switchover-hold on this backend)"
        ));
    }
    let figures = pair.final_figures(info)?;
    ctx.record(&pair, figures);
    ctx.memory_equal(&pair)?;
    ctx.step("destination runs on");
    pair.assert_destination_runs()
}

/// Plain postcopy (switchover held so precopy cannot finish first) with a
/// destination that runs the guest as soon as postcopy starts: the destination shows guest progress, the A-B
/// invariant holds on it afterwards.
fn postcopy_running_destination(cfg: &CatalogConfig, ctx: &mut Ctx) -> Result<()> {
    let mut spec = cfg.spec();
    spec.pair.dst_paused = false;
    let Some(mut pair) = launch_postcopy(ctx, spec)? else {
        return Ok(());
    };
    migrate_held(ctx, &mut pair, None)?;
    start_postcopy_and_complete(ctx, &mut pair)?;
    ctx.step("destination runs and shows progress");
    pair.assert_destination_runs()
}

pub(super) fn add(v: &mut Vec<Scenario>) {
    v.push(Scenario::new(
        "mission/postcopy",
        "256 MiB sweep guest held for N passes, then migrate-start-postcopy while held: \
         completes, memory equal, destination runs",
        mission_postcopy,
    ));
    v.push(Scenario::new(
        "postcopy/running-destination",
        "plain postcopy after one pass; the destination runs the guest during postcopy",
        postcopy_running_destination,
    ));
}
