//! Kill at every point: for each point of a migration (the statuses the
//! builtin VMM passes through, the hold, the release and the first pass
//! boundaries) a real source/destination pair of `migtest-vmm` processes is
//! migrated to that point, then one side is SIGKILLed, and the survivor is
//! checked:
//!
//! - source killed: the destination reports `failed` (its `MIGRATION`
//!   event), exits non-zero by itself and says why on stderr; once the
//!   switchover has begun the stream may already be whole, and then the
//!   destination must instead complete and run the guest on;
//! - destination killed: the source reports `failed` (or `completed` once
//!   the switchover is done, `cancelled` once it was cancelled), its guest
//!   runs on (after `cont` from `postmigrate`), and it migrates again to a
//!   fresh destination, which then runs the guest with the A-B invariant
//!   intact.
//!
//! Each case then drops every VM and checks that nothing is left: every
//! process it started is gone, and every log directory (with the QMP and
//! migration socket files in it) is removed.
//!
//! A point is reached by waiting for what the harness can observe (an
//! event, a status, a pass count); the kill follows at once, so a point
//! named after a short status (`setup`, `device`) is "killed as soon as
//! the harness saw it" and the VMM may be a little further on.

mod common;

use anyhow::{bail, ensure, Context as _, Result};
use migtest::backend::Backend;
use migtest::diagnostics::Context;
use migtest::pair::{Pair, PairLaunch, STATUS_TIMEOUT};
use migtest::size::Size;
use migtest::vm::Vm;
use migtest_qmp::schema::MigrationStatus;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// Small enough to re-migrate quickly, large enough that a throttled pass
/// lasts seconds.
const MEM: u64 = 32 << 20;
/// Throttle that keeps the first pass `active` for about 4 s.
const SLOW_BANDWIDTH: u64 = 8 << 20;
/// How long a survivor may take to notice and react.
const REACT: Duration = Duration::from_secs(30);

/// Where the migration is when a side is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// The source's `MIGRATION {status: setup}` event arrived and the
    /// destination accepted the connection (its `active` event). Killed
    /// before it connected, a source leaves the destination waiting for
    /// one, as QEMU does: nothing has failed there.
    Setup,
    /// The source reports `active` with bytes sent, first pass throttled.
    Active,
    /// Under `switchover-hold`, the source's `dirty-sync-count` reached n.
    PassBoundary(u64),
    /// `switchover-hold` was just set on an active (throttled) migration.
    Hold,
    /// `switchover-hold` was just cleared after 2 held passes.
    Release,
    /// `pause-before-switchover`: the source waits in `pre-switchover`.
    PreSwitchover,
    /// `migrate-continue` from `pre-switchover` just returned: device state.
    Device,
    /// The source reports `completed`.
    Completed,
    /// `migrate_cancel` on an active (throttled) migration, and the
    /// source's `MIGRATION {status: cancelling}` event arrived.
    Cancelling,
    /// `migrate_cancel` on an active migration, source `cancelled`.
    Cancelled,
}

impl Point {
    /// Whether the stream can be complete when the kill lands: then the
    /// destination may complete, and the source may report `completed`.
    fn may_be_complete(self) -> bool {
        matches!(self, Point::Release | Point::Device | Point::Completed)
    }

    /// Whether the source's migration was cancelled before the kill.
    fn cancelled(self) -> bool {
        matches!(self, Point::Cancelling | Point::Cancelled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Source,
    Destination,
}

/// The pids and log directories of every VM a case started.
#[derive(Default)]
struct Started {
    vms: Vec<(String, u32, PathBuf)>,
}

impl Started {
    fn add(&mut self, diag: &Context, vm: &Vm) {
        diag.add_vm(vm);
        self.vms
            .push((vm.role().to_string(), vm.pid(), vm.log_dir().to_path_buf()));
    }

    /// After every VM was dropped: no process, no log directory left.
    fn assert_nothing_left(&self) {
        for (role, pid, dir) in &self.vms {
            assert!(
                common::wait_pid_gone(*pid, Duration::from_secs(10)),
                "{role} VMM (pid {pid}) still runs after the case"
            );
            if !migtest::process::keep_logs_from_env() {
                assert!(
                    !dir.exists(),
                    "{role} VMM's directory {} (sockets, logs) is left: {:?}",
                    dir.display(),
                    std::fs::read_dir(dir)
                        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
                        .unwrap_or_else(|_| Vec::new())
                );
            }
        }
    }
}

fn run_case(point: Point, victim: Victim) {
    common::ensure_vmm_built();
    let name = format!("kill {victim:?} at {point:?}");
    let diag = Context::new(&name);
    let mut started = Started::default();
    let result = case(point, victim, &diag, &mut started);
    if let Err(e) = result {
        panic!("{:#}", diag.fail(e));
    }
    started.assert_nothing_left();
}

fn case(point: Point, victim: Victim, diag: &Context, started: &mut Started) -> Result<()> {
    diag.set_step("launch the pair");
    let mut spec = PairLaunch::new(Backend::Builtin);
    spec.pair.memory = Size(MEM);
    let mut pair = Pair::launch(spec)?;
    started.add(diag, &pair.src);
    started.add(diag, pair.dst()?);
    // The guest is up once it has finished its first pass over memory (`B`):
    // before that its RAM is still untouched, known zero and sent at no
    // cost, so a migration completes at once whatever the bandwidth limit
    // and the cancel points are never reached.
    diag.set_step("wait for the guest's first pass");
    pair.src.wait_serial(b'B', REACT)?;

    diag.set_step(&format!("migrate to {point:?}"));
    reach(&mut pair, point)?;

    diag.set_step(&format!("SIGKILL the {victim:?} at {point:?}"));
    match victim {
        Victim::Source => {
            pair.src.kill();
            diag.set_step("check the destination after the source died");
            destination_survives(&pair, point)?;
        }
        Victim::Destination => {
            pair.kill_destination()?;
            diag.set_step("check the source after the destination died");
            source_survives(&mut pair, point)?;
            diag.set_step("migrate again to a fresh destination");
            pair.restart_destination()?;
            started.add(diag, pair.dst()?);
            pair.migrate()?;
            pair.wait_completed()?;
            pair.assert_destination_runs()?;
        }
    }
    diag.set_step("drop the pair");
    drop(pair);
    Ok(())
}

/// Drives the migration to `point`.
fn reach(pair: &mut Pair, point: Point) -> Result<()> {
    let src = &pair.src;
    match point {
        Point::Setup | Point::Active | Point::Hold | Point::Cancelling | Point::Cancelled => {
            src.set_parameters(json!({"max-bandwidth": SLOW_BANDWIDTH}))?;
        }
        Point::PassBoundary(_) | Point::Release => {
            pair.hold_switchover()?;
        }
        Point::PreSwitchover | Point::Device => {
            src.set_capabilities(&[("pause-before-switchover", true)])?;
        }
        Point::Completed => {}
    }
    pair.migrate()?;
    match point {
        Point::Setup => {
            pair.src.wait_migration_event("setup", REACT)?;
            pair.dst()?.wait_migration_event("active", REACT)?;
        }
        Point::Active => {
            wait_active_with_bytes(&pair.src)?;
        }
        Point::PassBoundary(n) => {
            pair.wait_for_passes(n, REACT)?;
        }
        Point::Hold => {
            wait_active_with_bytes(&pair.src)?;
            pair.hold_switchover()?;
        }
        Point::Release => {
            pair.wait_for_passes(2, REACT)?;
            pair.release_switchover()?;
        }
        Point::PreSwitchover => {
            pair.wait_src_status(MigrationStatus::PreSwitchover, REACT)?;
        }
        Point::Device => {
            pair.wait_src_status(MigrationStatus::PreSwitchover, REACT)?;
            pair.src.migrate_continue("pre-switchover")?;
        }
        Point::Completed => {
            pair.wait_src_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
        }
        Point::Cancelling => {
            wait_active_with_bytes(&pair.src)?;
            pair.cancel()?;
            pair.src.wait_migration_event("cancelling", REACT)?;
        }
        Point::Cancelled => {
            wait_active_with_bytes(&pair.src)?;
            pair.cancel()?;
            pair.wait_src_status(MigrationStatus::Cancelled, REACT)?;
        }
    }
    Ok(())
}

fn wait_active_with_bytes(src: &Vm) -> Result<()> {
    let deadline = std::time::Instant::now() + REACT;
    loop {
        let info = src.query_migrate()?;
        let sent = info.ram.as_ref().map_or(0, |r| r.transferred);
        if info.status == Some(MigrationStatus::Active) && sent > 0 {
            return Ok(());
        }
        if info.status.is_some_and(|s| s.is_terminal()) {
            bail!(
                "source migration ended as {:?} before it was active",
                info.status
            );
        }
        if std::time::Instant::now() >= deadline {
            bail!("timed out after {REACT:?} waiting for an active migration with bytes sent: {info:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The source was killed: the destination fails and exits non-zero, or
/// (stream already whole) completes and runs the guest on.
fn destination_survives(pair: &Pair, point: Point) -> Result<()> {
    let dst = pair.dst()?;
    let outcome = dst
        .qmp()
        .wait_event("MIGRATION", |e| ended(e).is_some(), REACT)
        .context("destination must report the migration failed (MIGRATION event)")?;
    if ended(&outcome) == Some("completed") {
        ensure!(
            point.may_be_complete(),
            "destination completed a migration whose source died before switchover"
        );
        return pair
            .assert_destination_runs()
            .context("destination completed before the source died; it must run the guest");
    }
    ensure!(
        point != Point::Completed,
        "the source reported completed but the destination did not"
    );
    let status = dst
        .wait_exit(REACT)
        .with_context(|| format!("destination still runs {REACT:?} after it failed"))?;
    ensure!(
        status.code().is_some_and(|c| c != 0),
        "destination exited with {status}; expected a non-zero exit code"
    );
    let stderr = dst.process().stderr_tail(5);
    ensure!(
        !stderr.trim().is_empty(),
        "destination failed without saying why on stderr"
    );
    eprintln!("destination failed, exit {status}: {}", stderr.trim());
    Ok(())
}

/// `failed` or `completed` from a `MIGRATION` event, else `None`.
fn ended(e: &migtest_qmp::Event) -> Option<&str> {
    let status = e.data.as_ref()?.get("status")?.as_str()?;
    matches!(status, "failed" | "completed").then_some(status)
}

/// The destination was killed: the source fails (or had completed) and
/// its guest runs on, ready for another migration.
fn source_survives(pair: &mut Pair, point: Point) -> Result<()> {
    if point == Point::PreSwitchover {
        // The source waits for `migrate-continue` and sends nothing until
        // then (as QEMU): continuing is what finds the destination gone.
        pair.src.migrate_continue("pre-switchover")?;
    }
    let info = wait_src_terminal(&pair.src)?;
    match info.status {
        Some(MigrationStatus::Failed) => {
            ensure!(
                info.error_desc.is_some(),
                "failed source migration without error-desc"
            );
        }
        Some(MigrationStatus::Cancelled) if point.cancelled() => {}
        Some(MigrationStatus::Completed) if point.may_be_complete() => {
            pair.src
                .cont()
                .context("cont on the source in postmigrate")?;
        }
        other => bail!("source migration ended as {other:?} after its destination died"),
    }
    pair.assert_source_runs()?;
    eprintln!(
        "source {:?} ({}), guest runs on",
        info.status,
        info.error_desc.as_deref().unwrap_or("-")
    );
    // Leave nothing of this migration's setup for the next one.
    pair.src.set_parameters(
        json!({"switchover-hold": false, "max-bandwidth": 0, "downtime-limit": 300}),
    )?;
    pair.src
        .set_capabilities(&[("pause-before-switchover", false)])?;
    Ok(())
}

fn wait_src_terminal(src: &Vm) -> Result<migtest_qmp::schema::MigrationInfo> {
    let deadline = std::time::Instant::now() + REACT;
    loop {
        let info = src.query_migrate()?;
        if info.status.is_some_and(|s| s.is_terminal()) {
            return Ok(info);
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "source migration still {:?} {REACT:?} after its destination died",
                info.status
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

macro_rules! kill_cases {
    ($($name:ident: $point:expr, $victim:ident;)*) => {
        $(
            #[test]
            fn $name() {
                run_case($point, Victim::$victim);
            }
        )*
    };
}

kill_cases! {
    kill_source_at_setup: Point::Setup, Source;
    kill_destination_at_setup: Point::Setup, Destination;
    kill_source_while_active: Point::Active, Source;
    kill_destination_while_active: Point::Active, Destination;
    kill_source_at_pass_1: Point::PassBoundary(1), Source;
    kill_destination_at_pass_1: Point::PassBoundary(1), Destination;
    kill_source_at_pass_2: Point::PassBoundary(2), Source;
    kill_destination_at_pass_2: Point::PassBoundary(2), Destination;
    kill_source_at_pass_3: Point::PassBoundary(3), Source;
    kill_destination_at_pass_3: Point::PassBoundary(3), Destination;
    kill_source_at_hold: Point::Hold, Source;
    kill_destination_at_hold: Point::Hold, Destination;
    kill_source_at_release: Point::Release, Source;
    kill_destination_at_release: Point::Release, Destination;
    kill_source_in_pre_switchover: Point::PreSwitchover, Source;
    kill_destination_in_pre_switchover: Point::PreSwitchover, Destination;
    kill_source_in_device: Point::Device, Source;
    kill_destination_in_device: Point::Device, Destination;
    kill_source_at_completed: Point::Completed, Source;
    kill_destination_at_completed: Point::Completed, Destination;
    kill_source_while_cancelling: Point::Cancelling, Source;
    kill_destination_while_cancelling: Point::Cancelling, Destination;
    kill_source_at_cancelled: Point::Cancelled, Source;
    kill_destination_at_cancelled: Point::Cancelled, Destination;
}
