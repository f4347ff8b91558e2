//! The executor: runs a [`Scenario`] op by op against a real source/destination pair of VMMs,
//! records an [`Observation`] after every op and has the reference [`Model`] judge it.
//!
//! It follows the protocol in `docs/scenarios.md`: `Model::apply`, perform the op (or refuse
//! it when the model says it cannot be performed), observe the destination then the source
//! (`query-status` before `query-migrate`, events up to the `query-migrate` reply), then
//! `Model::step`. The first violation stops the run with a [`Failure`]: the op index, the op,
//! what the model allowed, what was seen and the QMP transcript tails of both VMMs.
//!
//! Every wait has a deadline ([`ExecOptions::wait_timeout`]); a QMP command that gets no
//! answer fails after the QMP client's own timeout.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::Backend;
use crate::model::{Expectation, Model, Observation, Reply};
use crate::pair::{Pair, PairLaunch};
use crate::vm::Vm;

use super::{MigrationStatus, Op, PairSpec, Scenario, Side};

mod auto_converge;
mod observe;
mod perform;
pub mod report;

/// How the executor runs scenarios.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Backend of the source.
    pub src_backend: Backend,
    /// Backend of the destination.
    pub dst_backend: Backend,
    /// Extra options for the source VMM (e.g. `-x-fault NAME`).
    pub src_extra: Vec<String>,
    /// Extra options for every destination VMM.
    pub dst_extra: Vec<String>,
    /// Deadline of every wait op.
    pub wait_timeout: Duration,
    /// Before each op, give a running migration up to this long to move on (two more
    /// passes, or a status past active); zero: no pause. The fuzzer reruns a failing case so, to tell
    /// failures that hold whatever the timing from races with the migration that went one
    /// way (an op that came before the migration converged).
    pub op_delay: Duration,
}

impl ExecOptions {
    /// The builtin VMM on both sides, 30 s waits.
    pub fn builtin() -> ExecOptions {
        ExecOptions::new(Backend::Builtin, Backend::Builtin)
    }

    /// `src` and `dst` backends, 30 s waits.
    pub fn new(src: Backend, dst: Backend) -> ExecOptions {
        ExecOptions {
            src_backend: src,
            dst_backend: dst,
            src_extra: Vec::new(),
            dst_extra: Vec::new(),
            wait_timeout: Duration::from_secs(30),
            op_delay: Duration::ZERO,
        }
    }
}

/// Why a scenario did not pass.
#[derive(Debug)]
pub enum ExecError {
    /// The pair misbehaved: the model rejected an observation, or the harness lost a VMM in
    /// a way no op explains. A test failure (`migtest replay` exit 1).
    Failed(Box<Failure>),
    /// The scenario cannot run here: VMM missing or not launchable, a capability or
    /// parameter the scenario needs is absent (`migtest replay` exit 125).
    CannotTest(String),
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::Failed(r) => write!(f, "{r}"),
            ExecError::CannotTest(m) => write!(f, "cannot test: {m}"),
        }
    }
}

impl std::error::Error for ExecError {}

/// A failed run: where, what was allowed, what was seen.
#[derive(Debug, Clone)]
pub struct Failure {
    /// 1-based op index (0: during launch).
    pub index: usize,
    /// The op (one line).
    pub op: String,
    /// One line: the violation or the harness error.
    pub message: String,
    /// What the model allowed (replies, statuses and run states per side).
    pub allowed: String,
    /// What the executor saw (JSON), if it got that far.
    pub seen: String,
    /// The ops before, one line each with their replies.
    pub history: Vec<String>,
    /// QMP transcript tails and stderr of both VMMs.
    pub transcripts: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "op {} `{}`: {}", self.index, self.op, self.message)?;
        if !self.history.is_empty() {
            writeln!(f, "ops so far:")?;
            for h in &self.history {
                writeln!(f, "  {h}")?;
            }
        }
        if !self.allowed.is_empty() {
            writeln!(f, "model allowed: {}", self.allowed)?;
        }
        if !self.seen.is_empty() {
            writeln!(f, "seen: {}", self.seen)?;
        }
        write!(f, "{}", self.transcripts)
    }
}

/// A run that passed.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Ops performed.
    pub ops: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Each op with its reply.
    pub history: Vec<String>,
}

/// The migration parameters `s` sets, per side, that not every VMM has (`switchover-hold`:
/// only migtest-vmm; `avail-switchover-bandwidth`: QEMU 8.2 and later).
pub fn optional_parameters(s: &Scenario) -> Vec<(Side, &'static str)> {
    let mut v = Vec::new();
    let mut add = |side: Side, name: &'static str| {
        if !v.contains(&(side, name)) {
            v.push((side, name));
        }
    };
    for op in &s.ops {
        match op {
            Op::Hold {} | Op::Release {} => add(Side::Source, "switchover-hold"),
            Op::SetParameters {
                side,
                switchover_hold,
                avail_switchover_bandwidth,
                ..
            } => {
                if switchover_hold.is_some() {
                    add(*side, "switchover-hold");
                }
                if avail_switchover_bandwidth.is_some() {
                    add(*side, "avail-switchover-bandwidth");
                }
            }
            _ => {}
        }
    }
    v
}

/// Runs `scenario` on a fresh pair; `Ok` when every observation was allowed.
pub fn run_scenario(scenario: &Scenario, opts: &ExecOptions) -> Result<RunSummary, ExecError> {
    let start = Instant::now();
    let mut ex = Executor::launch(&scenario.pair, opts)?;
    ex.check_parameters(scenario)?;
    for op in &scenario.ops {
        ex.step(op)?;
    }
    ex.finish()?;
    Ok(RunSummary {
        ops: scenario.ops.len(),
        elapsed: start.elapsed(),
        history: ex.history.clone(),
    })
}

/// A live pair driven op by op, with its model.
pub struct Executor {
    /// The source and the current destination, launched by the pair driver.
    pair: Pair,
    opts: ExecOptions,
    model: Model,
    /// Events of the source already reported.
    src_events: usize,
    /// Events of the current destination already reported.
    dst_events: usize,
    /// `migrate-incoming` was sent to the current destination.
    dst_used: bool,
    /// The address the last destination listened on.
    last_uri: Option<String>,
    index: usize,
    history: Vec<String>,
    /// Keeps the unused-address directory alive.
    scratch: tempfile::TempDir,
}

fn launch_err(e: anyhow::Error) -> ExecError {
    ExecError::CannotTest(format!("{e:#}"))
}

impl Executor {
    /// Launches the pair of `pair` through the pair driver ([`Pair`]): the source runs its
    /// workload, the destination waits with `-incoming defer` (its `migrate-incoming` is the
    /// `migrate` op's); `events` on both sides as the spec says. Parameters are left at their
    /// defaults (the model's starting point).
    pub fn launch(pair: &PairSpec, opts: &ExecOptions) -> Result<Executor, ExecError> {
        let mut driver = Pair::launch_source(launch_spec(pair, opts)).map_err(launch_err)?;
        // The guest is up once it has finished its first pass over memory (`B` on the
        // serial), as in QEMU's migration tests: before that it only zeroes memory, and a
        // lost page would go unnoticed.
        if pair.image != "idle" {
            driver
                .src
                .wait_serial(b'B', Duration::from_secs(30))
                .map_err(launch_err)?;
        }
        driver.restart_destination_deferred().map_err(launch_err)?;
        let mut ex = Executor {
            pair: driver,
            opts: opts.clone(),
            model: Model::new(pair.clone()),
            src_events: 0,
            dst_events: 0,
            dst_used: false,
            last_uri: None,
            index: 0,
            history: Vec::new(),
            scratch: tempfile::tempdir().map_err(|e| launch_err(e.into()))?,
        };
        // Events of the launch itself are not part of any op.
        ex.src_events = ex.pair.src.qmp().events_seen().len();
        ex.dst_events = ex
            .vm(Side::Destination)
            .map_or(0, |d| d.qmp().events_seen().len());
        Ok(ex)
    }

    /// The model as the run left it.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Ops performed, one line each with the reply.
    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// The parameters `scenario` sets ([`optional_parameters`]) that a VMM of the pair lacks.
    pub fn missing_parameters(&self, scenario: &Scenario) -> Vec<(Side, &'static str)> {
        optional_parameters(scenario)
            .into_iter()
            .filter(|(side, name)| {
                !self
                    .vm(*side)
                    .and_then(Vm::query_parameters)
                    .is_ok_and(|p| p.get(*name).is_some())
            })
            .collect()
    }

    /// `CannotTest` when a VMM of the pair lacks a parameter `scenario` sets.
    pub fn check_parameters(&self, scenario: &Scenario) -> Result<(), ExecError> {
        let Some((side, name)) = self.missing_parameters(scenario).first().copied() else {
            return Ok(());
        };
        let backend = match side {
            Side::Source => &self.opts.src_backend,
            Side::Destination => &self.opts.dst_backend,
        };
        Err(ExecError::CannotTest(format!(
            "the scenario sets {name}, which the {side} VMM ({}) does not have",
            backend.describe()
        )))
    }

    /// Ends a scenario: a migration still cancelling or failing is waited for (a
    /// `wait-status` judged by the model), so what it leaves behind, such as the source's run
    /// state after `cancelled`, is checked too.
    pub fn finish(&mut self) -> Result<(), ExecError> {
        if let Some(op) = self.model.settling_op() {
            self.step(&op)?;
        }
        Ok(())
    }

    /// Waits up to `limit` while the source's migration runs (setup/active) for two more
    /// passes (`dirty-sync-count`) or its status to leave setup/active, then 50 ms more. Errors end the pause; the op
    /// will meet them.
    fn let_migration_move_on(&self, limit: Duration) {
        let vm = &self.pair.src;
        let snapshot = || -> Option<(MigrationStatus, u64)> {
            let info = vm.query_migrate().ok()?;
            let status = info.status.unwrap_or(MigrationStatus::None);
            Some((status, info.ram.as_ref().map_or(0, |r| r.dirty_sync_count)))
        };
        let Some(first) = snapshot() else { return };
        if !matches!(first.0, MigrationStatus::Setup | MigrationStatus::Active) {
            return;
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && vm.is_alive() {
            std::thread::sleep(Duration::from_millis(10));
            // setup -> active is not moving on: the first pass belongs to setup.
            let moved = |now: (MigrationStatus, u64)| {
                now.1 >= first.1 + 2
                    || !matches!(now.0, MigrationStatus::Setup | MigrationStatus::Active)
            };
            if snapshot().is_none_or(moved) {
                // What a new pass decides (switchover) takes a moment more.
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
        }
    }

    /// Performs `op`, observes the pair and has the model judge it.
    pub fn step(&mut self, op: &Op) -> Result<Observation, ExecError> {
        self.index += 1;
        let exp = self.model.apply(op);
        let reply = if let Some(reason) = exp.refused() {
            Reply::Refused {
                reason: reason.to_string(),
            }
        } else {
            if !self.opts.op_delay.is_zero() {
                self.let_migration_move_on(self.opts.op_delay);
            }
            match self.perform(op) {
                Ok(r) => r,
                Err(e) => return Err(self.failure(op, &exp, None, format!("{e:#}"))),
            }
        };
        let obs = match self.observe(reply) {
            Ok(o) => o,
            Err(e) => return Err(self.failure(op, &exp, None, format!("observing: {e:#}"))),
        };
        self.history
            .push(format!("{:>2}. {op} -> {}", self.index, obs.reply));
        if let Err(v) = self.model.step(op, &obs) {
            return Err(self.failure(op, &exp, Some(&obs), v.to_string()));
        }
        Ok(obs)
    }

    fn failure(
        &self,
        op: &Op,
        exp: &Expectation,
        obs: Option<&Observation>,
        message: String,
    ) -> ExecError {
        let mut transcripts = String::new();
        for side in Side::ALL {
            let Ok(vm) = self.vm(side) else {
                transcripts.push_str(&format!("--- {side}: none running\n"));
                continue;
            };
            transcripts.push_str(&format!(
                "--- {side} (pid {}, {}) QMP transcript tail:\n{}\n",
                vm.pid(),
                if vm.is_alive() { "alive" } else { "dead" },
                vm.qmp().transcript().tail_truncated(12, 200)
            ));
            let err = vm.process().stderr_tail(3);
            if !err.is_empty() {
                transcripts.push_str(&format!("--- {side} stderr tail:\n{err}\n"));
            }
        }
        ExecError::Failed(Box::new(Failure {
            index: self.index,
            op: op.to_string(),
            message,
            allowed: describe_expectation(exp),
            seen: obs
                .map(|o| serde_json::to_string(o).unwrap_or_default())
                .unwrap_or_default(),
            history: self.history.clone(),
            transcripts,
        }))
    }

    /// `side`'s VM: the source, or the current destination (none only after a failed
    /// `restart-destination`, which ends the run).
    fn vm(&self, side: Side) -> anyhow::Result<&Vm> {
        match side {
            Side::Source => Ok(&self.pair.src),
            Side::Destination => self.pair.dst(),
        }
    }

    /// A QMP command on `side`: `Ok`, the error reply, or `Dead` (nothing sent, or the
    /// process died while the command was pending).
    fn qmp(&self, side: Side, name: &str, args: Value) -> anyhow::Result<Reply> {
        let vm = self.vm(side)?;
        if !vm.is_alive() {
            return Ok(Reply::Dead);
        }
        match vm.qmp().execute(name, args) {
            Ok(_) => Ok(Reply::Ok),
            Err(e) => {
                if let Some(b) = e.body() {
                    return Ok(Reply::Error {
                        class: b.class.as_str().to_string(),
                        desc: b.desc.clone(),
                    });
                }
                if vm.wait_exit(Duration::from_millis(500)).is_some() {
                    return Ok(Reply::Dead);
                }
                Err(anyhow::Error::new(e).context(format!("{} QMP '{name}'", side)))
            }
        }
    }
}

/// How `pair` is launched on the backends and with the extra options of `opts`.
fn launch_spec(pair: &PairSpec, opts: &ExecOptions) -> PairLaunch {
    let mut spec = PairLaunch::on(
        pair.clone(),
        opts.src_backend.clone(),
        opts.dst_backend.clone(),
    );
    spec.src_extra = opts.src_extra.clone();
    spec.dst_extra = opts.dst_extra.clone();
    spec
}

/// One line: the replies and, per side, the statuses and run states the model allowed.
pub fn describe_expectation(exp: &Expectation) -> String {
    let replies: Vec<String> = exp.replies().iter().map(|r| r.to_string()).collect();
    let mut s = format!("reply {}", replies.join(" | "));
    for side in Side::ALL {
        let st: Vec<&str> = exp.statuses(side).iter().map(|m| m.as_str()).collect();
        let rs: Vec<&str> = exp.run_states(side).iter().map(|r| r.as_str()).collect();
        s.push_str(&format!(
            "; {side} status {{{}}} run-state {{{}}}",
            st.join(", "),
            rs.join(", ")
        ));
    }
    s
}

/// Where failing generated cases are written: `MIGTEST_FAILURES_DIR`, else
/// `target/migtest-failures/` of the workspace (or of the current directory).
pub fn failures_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MIGTEST_FAILURES_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(|p| p.join("target"))
                .unwrap_or_else(|| PathBuf::from("target"))
        });
    target.join("migtest-failures")
}
