//! The qtest-style scenario catalog. The nextest suites and `migtest run`
//! both execute these functions (one copy of the scenario code).

use crate::backend::Backend;
use crate::diagnostics::Context as Diagnostics;
use crate::pair::{
    no_progress, HoldMethod, MigrationFigures, Pair, PairLaunch, Progress, Transport,
    STATUS_TIMEOUT,
};
use crate::size::Size;
use crate::telemetry::Recorder;
use crate::vm::ReplyObserver;
use anyhow::{bail, ensure, Context, Result};
use migtest_qmp::schema::MigrationStatus;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod auto_converge;
mod multifd;
mod postcopy;
mod postcopy_recovery;
mod precopy;
mod transports;
mod xbzrle;

use precopy::mission;

/// Settings shared by every scenario of a run.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// Source backend.
    pub backend: Backend,
    /// Destination backend (same as the source unless cross-version).
    pub dst_backend: Backend,
    /// Passes to wait for while switchover is held (default 3).
    pub passes: u64,
    /// Guest RAM.
    pub memory: Size,
    /// Sees every QMP reply of the scenario's VMs (`migtest compare`).
    pub observer: Option<Arc<dyn ReplyObserver>>,
    /// Extra source options (e.g. a planted `-x-fault` in test builds).
    pub src_extra: Vec<String>,
}

impl CatalogConfig {
    /// Defaults: 3 passes, 128 MiB.
    pub fn new(backend: Backend) -> CatalogConfig {
        CatalogConfig {
            dst_backend: backend.clone(),
            backend,
            passes: 3,
            memory: Size::mib(128),
            observer: None,
            src_extra: Vec::new(),
        }
    }

    fn spec(&self) -> PairLaunch {
        let mut spec = PairLaunch::new(self.backend.clone());
        spec.dst_backend = self.dst_backend.clone();
        spec.pair.memory = self.memory;
        spec.observer = self.observer.clone();
        spec.src_extra = self.src_extra.clone();
        spec
    }
}

/// What one scenario run produced.
#[derive(Debug, Clone, Default)]
pub struct ScenarioOutcome {
    /// How switchover was held, if it was.
    pub hold: Option<HoldMethod>,
    /// Figures of the last completed migration, if any.
    pub figures: Option<MigrationFigures>,
    /// Wall time of the scenario.
    pub elapsed: Duration,
    /// Why the scenario was not run on this backend (then it checked nothing).
    pub skipped: Option<String>,
    /// A known defect of real QEMU ended the scenario early: the checks before
    /// it held, the rest could not run (the reason names the defect). Never set
    /// on migtest-vmm, where the same behaviour fails the scenario.
    pub qemu_defect: Option<String>,
    /// What the run adapted or tolerated, e.g. the legacy hold standing in
    /// for `switchover-hold`, or memory differences outside the test range.
    pub notes: Vec<String>,
    /// Log directories left in place for the user (`MIGTEST_KEEP_LOGS`);
    /// after a failure the error's report names them instead.
    pub kept_logs: Vec<std::path::PathBuf>,
}

type RunFn = fn(&CatalogConfig, &mut Ctx) -> Result<()>;
type BoxedRun = Box<dyn Fn(&CatalogConfig, &mut Ctx) -> Result<()> + Send + Sync>;

/// One catalog entry.
pub struct Scenario {
    /// Unique name, usable as a filter (`mission/unix/smp1`).
    pub name: String,
    /// One line: what it checks.
    pub purpose: String,
    run: BoxedRun,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .finish()
    }
}

/// Per-run state handed to a scenario: progress sink and the outcome being built.
pub struct Ctx {
    progress: Progress,
    outcome: ScenarioOutcome,
    diagnostics: Arc<Diagnostics>,
}

impl Ctx {
    /// Names the current step (shown in failure reports).
    pub fn step(&mut self, step: &str) {
        self.diagnostics.set_step(step);
    }

    fn launch(&mut self, spec: PairLaunch) -> Result<Pair> {
        self.step("launch source and destination");
        let mut pair = Pair::launch(spec)?;
        pair.set_progress(self.progress.clone());
        pair.attach_diagnostics(self.diagnostics.clone());
        Ok(pair)
    }

    fn record(&mut self, pair: &Pair, figures: MigrationFigures) {
        self.outcome.figures = Some(figures);
        if self.outcome.hold.is_none() {
            self.outcome.hold = pair.hold_method();
        }
    }

    /// Adds a note to the outcome.
    pub fn note(&mut self, note: impl Into<String>) {
        self.outcome.notes.push(note.into());
    }

    /// Ends the scenario early on a known defect of real QEMU, after the checks
    /// so far held; also a note, so every report shows it. On migtest-vmm the
    /// same behaviour is an error with `reason`.
    fn qemu_defect(&mut self, pair: &Pair, reason: impl Into<String>) -> Result<()> {
        self.defect_of(pair.src.backend().is_qemu(), reason.into())
    }

    /// [`Ctx::qemu_defect`] with the source's kind given.
    fn defect_of(&mut self, source_is_qemu: bool, reason: String) -> Result<()> {
        ensure!(source_is_qemu, "{reason}");
        self.note(format!("known QEMU defect, scenario ended early: {reason}"));
        self.outcome.qemu_defect = Some(reason);
        Ok(())
    }

    /// Marks the scenario as not run on this backend, for `reason`.
    pub fn skip(&mut self, reason: impl Into<String>) -> Result<()> {
        self.outcome.skipped = Some(reason.into());
        Ok(())
    }

    /// [`Pair::assert_memory_equal`] over all RAM with the backend's rules;
    /// tolerated differences become notes.
    fn memory_equal(&mut self, pair: &Pair) -> Result<()> {
        self.step("compare source and destination memory");
        let report = pair.assert_memory_equal(None)?;
        for n in report.notes() {
            self.note(n);
        }
        Ok(())
    }

    fn poll(&mut self, pair: &Pair, what: &str) {
        if let Ok(info) = pair.src.query_migrate() {
            (self.progress)(what, &info);
        }
    }
}

impl Scenario {
    fn new(
        name: impl Into<String>,
        purpose: impl Into<String>,
        run: impl Fn(&CatalogConfig, &mut Ctx) -> Result<()> + Send + Sync + 'static,
    ) -> Scenario {
        Scenario {
            name: name.into(),
            purpose: purpose.into(),
            run: Box::new(run),
        }
    }

    /// Runs the scenario. A failure comes back with a one-screen report:
    /// the scenario, the step, each VMM's QMP transcript, stderr and serial
    /// tails, and the log directories, which are then kept, with the
    /// scenario's telemetry written into the source's (its path in the report).
    pub fn run(&self, cfg: &CatalogConfig, progress: Progress) -> Result<ScenarioOutcome> {
        self.run_recorded(cfg, progress, &Recorder::new(&self.name))
    }

    /// [`Scenario::run`] recording into `telemetry` (which the caller can
    /// then write into a report).
    pub fn run_recorded(
        &self,
        cfg: &CatalogConfig,
        progress: Progress,
        telemetry: &Recorder,
    ) -> Result<ScenarioOutcome> {
        let start = Instant::now();
        let diagnostics = Arc::new(Diagnostics::new(&self.name));
        let mut ctx = Ctx {
            progress,
            outcome: ScenarioOutcome::default(),
            diagnostics: diagnostics.clone(),
        };
        diagnostics.set_step("start");
        let recording = telemetry.start();
        let result = (self.run)(cfg, &mut ctx);
        drop(recording);
        let mut outcome = ctx.outcome;
        outcome.elapsed = start.elapsed();
        if outcome.hold == Some(HoldMethod::LegacyThrottle)
            && !outcome.notes.iter().any(|n| n.contains("legacy throttle"))
        {
            outcome.notes.insert(
                0,
                "no switchover-hold on this VMM: switchover was held with the legacy \
                 throttle (3 MB/s, 1 ms)"
                    .to_string(),
            );
        }
        match &result {
            Ok(()) => telemetry.finish(Ok(outcome.skipped.is_none())),
            Err(e) => {
                telemetry.finish(Err(&format!("{e:#}")));
                diagnostics.add_note(&match telemetry.write_into_log_dir() {
                    Ok(path) => {
                        let qmp = path.with_file_name(crate::telemetry::TRANSCRIPT_FILE);
                        let _ = std::fs::write(&qmp, diagnostics.transcripts());
                        format!("telemetry: {}", path.display())
                    }
                    Err(e) => format!("telemetry: not written: {e}"),
                });
            }
        }
        diagnostics.finish(result)?;
        outcome.kept_logs = diagnostics.kept_log_dirs();
        Ok(outcome)
    }
}

/// Runs the named scenario with no progress output (the nextest entry point).
pub fn run_named(name: &str, cfg: &CatalogConfig) -> Result<ScenarioOutcome> {
    let all = catalog();
    let s = all
        .iter()
        .find(|s| s.name == name)
        .with_context(|| format!("no scenario named '{name}'"))?;
    s.run(cfg, no_progress())
}

/// Waits for the source guest's first 'B' (QEMU's qtests do the same before
/// they migrate): a guest that has not been round its range yet is mostly
/// zero pages, which migrate in milliseconds whatever the throttle, so
/// QEMU's legacy hold (3 MB/s, 1 ms) would not hold it. A TCG guest on a
/// loaded machine can take a while to get there.
pub(super) fn wait_first_pass(ctx: &mut Ctx, pair: &Pair) -> Result<()> {
    ctx.step("wait for the guest's first 'B'");
    if pair.spec.pair.image != "idle" {
        pair.src.wait_serial(b'B', Duration::from_secs(60))?;
    }
    Ok(())
}

pub(super) fn wait_passes(ctx: &mut Ctx, pair: &mut Pair, n: u64) -> Result<()> {
    let timeout = pair.pass_timeout(n);
    let deadline = Instant::now() + timeout;
    loop {
        let info = pair.src.query_migrate()?;
        (ctx.progress)(&format!("waiting for {n} passes"), &info);
        let passes = info.ram.as_ref().map_or(0, |r| r.dirty_sync_count);
        if passes >= n {
            return Ok(());
        }
        if let Some(s) = info.status.filter(|s| s.is_terminal()) {
            bail!("migration ended as '{s}' after {passes} of {n} passes");
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for {n} passes (at {passes}; hold: {})",
                pair.hold_method()
                    .map_or("none".to_string(), |h| h.to_string())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Cancels the held migration (step `cancel_step`): the source ends `cancelled` with its guest
/// running; then (step `dst_step`) the destination ends `failed`, or has already exited.
pub(super) fn cancel_then_destination_fails(
    ctx: &mut Ctx,
    pair: &mut Pair,
    cancel_step: &str,
    dst_step: &str,
) -> Result<()> {
    ctx.step(cancel_step);
    pair.cancel()?;
    pair.wait_src_status(MigrationStatus::Cancelled, STATUS_TIMEOUT)?;
    pair.assert_source_runs()?;
    ctx.step(dst_step);
    let dst_failed = pair.wait_dst_status(MigrationStatus::Failed, STATUS_TIMEOUT);
    if dst_failed.is_err() && pair.dst()?.is_alive() {
        dst_failed?;
    }
    Ok(())
}

/// Migrates again, to a fresh destination: two held passes, release,
/// completion, memory equal, the destination runs on.
pub(super) fn remigrate_to_fresh_destination(ctx: &mut Ctx, pair: &mut Pair) -> Result<()> {
    pair.restart_destination()?;
    pair.migrate()?;
    wait_passes(ctx, pair, 2)?;
    pair.release_switchover()?;
    let figures = pair.wait_completed()?;
    ctx.record(pair, figures);
    ctx.memory_equal(pair)?;
    pair.assert_destination_runs()
}

/// Every scenario of the catalog, in a stable order. Each group of scenarios
/// lives in its own module and adds itself here.
pub fn catalog() -> Vec<Scenario> {
    let mut v = Vec::new();
    precopy::add(&mut v);
    transports::add(&mut v);
    multifd::add(&mut v);
    postcopy::add(&mut v);
    auto_converge::add(&mut v);
    postcopy_recovery::add(&mut v);
    xbzrle::add(&mut v);
    v
}

/// Runs the mission flow on a pair of the caller's choosing (e.g. with extra source options
/// such as a planted fault).
pub fn mission_with_spec(cfg: &CatalogConfig, spec: PairLaunch) -> Result<ScenarioOutcome> {
    Scenario::new(
        "mission/custom",
        "mission flow on a custom pair",
        move |cfg, ctx| mission(cfg, ctx, spec.clone()),
    )
    .run(cfg, no_progress())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            progress: no_progress(),
            outcome: ScenarioOutcome::default(),
            diagnostics: Arc::new(Diagnostics::new("test")),
        }
    }

    #[test]
    fn a_qemu_defect_is_an_outcome_on_qemu_and_an_error_on_migtest_vmm() {
        let mut on_qemu = ctx();
        on_qemu
            .defect_of(true, "yank instance left".into())
            .unwrap();
        assert_eq!(
            on_qemu.outcome.qemu_defect.as_deref(),
            Some("yank instance left")
        );
        assert!(on_qemu.outcome.notes[0].contains("known QEMU defect"));

        let mut on_builtin = ctx();
        let err = on_builtin
            .defect_of(false, "yank instance left".into())
            .unwrap_err();
        assert_eq!(err.to_string(), "yank instance left");
        assert!(on_builtin.outcome.qemu_defect.is_none());
        assert!(on_builtin.outcome.notes.is_empty());
    }
}
