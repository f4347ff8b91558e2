//! Postcopy failures and recovery: the destination killed during postcopy
//! (the source pauses, the guest state is split), a network cut (a
//! [`CutProxy`] between the two), and `migrate-pause`; after a cut or a
//! pause, `migrate-recover` on the destination and `migrate` with
//! `resume` on the source complete the migration with equal memory.
//!
//! As QEMU's recovery qtest does, postcopy's background pages are capped
//! with `max-postcopy-bandwidth` (4096 bytes/s) so the migration is still
//! in postcopy when it is cut, and the cap is lifted after the recovery.

use super::postcopy::launch_postcopy;
use super::transports::expect_error;
use super::*;
use crate::proxy::CutProxy;
use migtest_qmp::schema::RunState;

/// `max-postcopy-bandwidth` while a cut is prepared (QEMU's qtest value).
const SLOW_POSTCOPY: u64 = 4096;

/// `migrate` (to `uri`, or to the destination) with switchover held,
/// `migrate-start-postcopy`, `postcopy-active` on both sides, with the
/// background pages capped.
fn start_slow_postcopy(ctx: &mut Ctx, pair: &mut Pair, uri: Option<&str>) -> Result<()> {
    ctx.step("max-postcopy-bandwidth 4096 on the source");
    pair.src
        .set_parameters(json!({ "max-postcopy-bandwidth": SLOW_POSTCOPY }))?;
    super::postcopy::migrate_held(ctx, pair, uri)?;
    super::postcopy::start_postcopy(ctx, pair)?;
    // QEMU's destination is postcopy-active from LISTEN on, before it has
    // loaded the device state; a cut before that fails it instead of
    // pausing it. Its run state leaves `inmigrate` once loaded.
    ctx.step("the destination has loaded the device state");
    let deadline = Instant::now() + STATUS_TIMEOUT;
    loop {
        let st = pair.dst()?.query_status()?;
        if st.status != RunState::Inmigrate {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the destination is still inmigrate after {STATUS_TIMEOUT:?} of postcopy"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The source is `postcopy-paused` (event and `query-migrate`) with its
/// guest stopped: its memory is no longer the newest.
fn source_paused(ctx: &mut Ctx, pair: &mut Pair) -> Result<()> {
    ctx.step("MIGRATION postcopy-paused on the source");
    pair.src
        .wait_migration_event("postcopy-paused", STATUS_TIMEOUT)?;
    pair.wait_src_status(MigrationStatus::PostcopyPaused, STATUS_TIMEOUT)?;
    let st = pair.src.query_status()?;
    ensure!(
        !st.running,
        "the paused source runs its guest again ({:?}); its memory is stale",
        st.status
    );
    Ok(())
}

/// Both sides `postcopy-paused`.
fn both_paused(ctx: &mut Ctx, pair: &mut Pair) -> Result<()> {
    source_paused(ctx, pair)?;
    ctx.step("MIGRATION postcopy-paused on the destination");
    pair.dst()?
        .wait_migration_event("postcopy-paused", STATUS_TIMEOUT)?;
    pair.wait_dst_status(MigrationStatus::PostcopyPaused, STATUS_TIMEOUT)?;
    Ok(())
}

/// `migrate-recover` on a new socket, `migrate {resume: true}`, both sides
/// through `postcopy-recover` back to `postcopy-active`, the cap lifted,
/// completion, equal memory, the destination runs on.
fn recover_and_complete(ctx: &mut Ctx, pair: &mut Pair) -> Result<()> {
    let dst = pair.dst()?;
    let uri = format!("unix:{}", dst.log_dir().join("migsocket-recover").display());
    ctx.step("migrate-recover on the destination");
    dst.execute("migrate-recover", json!({ "uri": uri }))?;
    ctx.step("migrate with resume on the source");
    pair.src
        .execute("migrate", json!({ "uri": uri, "resume": true }))?;
    for vm in [&pair.src, pair.dst()?] {
        ctx.step(&format!(
            "MIGRATION postcopy-recover, postcopy-active on the {}",
            vm.role()
        ));
        vm.wait_migration_event("postcopy-recover", STATUS_TIMEOUT)?;
        vm.wait_migration_event("postcopy-active", STATUS_TIMEOUT)?;
    }
    ctx.step("lift max-postcopy-bandwidth, wait for completion");
    pair.src
        .set_parameters(json!({ "max-postcopy-bandwidth": 0 }))?;
    let info = pair.wait_src_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
    pair.wait_dst_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
    let figures = pair.final_figures(info)?;
    ctx.record(pair, figures);
    ctx.memory_equal(pair)?;
    ctx.step("destination runs on");
    pair.assert_destination_runs()
}

/// `postcopy/destination-killed`: the destination dies during postcopy.
/// The source goes `postcopy-paused` and keeps its guest stopped, as QEMU
/// does: the destination guest ran and wrote, so neither side has the
/// whole guest any more (the state is split).
fn destination_killed(cfg: &CatalogConfig, ctx: &mut Ctx) -> Result<()> {
    let Some(mut pair) = launch_postcopy(ctx, cfg.spec())? else {
        return Ok(());
    };
    start_slow_postcopy(ctx, &mut pair, None)?;
    ctx.step("kill the destination");
    pair.kill_destination()?;
    source_paused(ctx, &mut pair)?;
    ctx.step("the source stays paused");
    let info = pair.src.query_migrate()?;
    ensure!(
        info.status == Some(MigrationStatus::PostcopyPaused),
        "source status {:?} after the destination died; expected postcopy-paused",
        info.status
    );
    Ok(())
}

/// `postcopy/network-cut-recover`: the channel goes through a proxy the
/// harness cuts during postcopy; both sides pause; recovery completes.
fn network_cut_recover(cfg: &CatalogConfig, ctx: &mut Ctx) -> Result<()> {
    let Some(mut pair) = launch_postcopy(ctx, cfg.spec())? else {
        return Ok(());
    };
    ctx.step("start a proxy to the destination");
    let proxy = CutProxy::start(&pair.src.log_dir().join("proxy.sock"), &pair.connect_uri()?)?;
    start_slow_postcopy(ctx, &mut pair, Some(&proxy.uri()))?;
    ctx.step("cut the connection");
    proxy.cut()?;
    both_paused(ctx, &mut pair)?;
    recover_and_complete(ctx, &mut pair)
}

/// `postcopy/migrate-pause-recover`: QEMU's texts outside postcopy, then
/// `migrate-pause` on the source during postcopy; both sides pause;
/// recovery completes.
fn migrate_pause_recover(cfg: &CatalogConfig, ctx: &mut Ctx) -> Result<()> {
    let Some(mut pair) = launch_postcopy(ctx, cfg.spec())? else {
        return Ok(());
    };
    ctx.step("migrate-pause and migrate-recover outside postcopy");
    expect_error(
        &pair.src,
        "migrate-pause",
        json!({}),
        "migrate-pause is currently only supported during postcopy-active state",
    )?;
    expect_error(
        pair.dst()?,
        "migrate-recover",
        json!({ "uri": "unix:/nonexistent/recover.sock" }),
        "Migrate recover can only be run when postcopy is paused.",
    )?;
    start_slow_postcopy(ctx, &mut pair, None)?;
    ctx.step("migrate-pause on the source");
    pair.src.execute("migrate-pause", json!({}))?;
    both_paused(ctx, &mut pair)?;
    recover_and_complete(ctx, &mut pair)
}

pub(super) fn add(v: &mut Vec<Scenario>) {
    v.push(Scenario::new(
        "postcopy/destination-killed",
        "the destination is killed during postcopy: the source goes postcopy-paused with its \
         guest stopped (the guest state is split, as on QEMU)",
        destination_killed,
    ));
    v.push(Scenario::new(
        "postcopy/network-cut-recover",
        "a proxy between source and destination is cut during postcopy: both go \
         postcopy-paused; migrate-recover + migrate resume complete with equal memory",
        network_cut_recover,
    ));
    v.push(Scenario::new(
        "postcopy/migrate-pause-recover",
        "migrate-pause on the source during postcopy: both go postcopy-paused; \
         migrate-recover + migrate resume complete with equal memory",
        migrate_pause_recover,
    ));
}
