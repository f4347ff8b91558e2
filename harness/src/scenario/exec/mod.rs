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

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::backend::{Backend, LaunchSpec};
use crate::checks;
use crate::model::{
    wait_gives_up, Event, Expectation, Model, Observation, Reply, RunState, SideObservation,
};
use crate::vm::Vm;

use super::{MigrationStatus, Op, PairSpec, Scenario, Side, Transport};

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
            Op::Hold | Op::Release => add(Side::Source, "switchover-hold"),
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

/// One side's VMM and what the executor knows of it.
struct SideVm {
    vm: Vm,
    /// Events of `vm` already reported.
    event_cursor: usize,
}

/// A live pair driven op by op, with its model.
pub struct Executor {
    pair: PairSpec,
    opts: ExecOptions,
    model: Model,
    src: SideVm,
    dst: SideVm,
    /// `migrate-incoming` was sent to the current destination.
    dst_used: bool,
    /// The address the last destination listened on.
    last_uri: Option<String>,
    generation: u32,
    index: usize,
    history: Vec<String>,
    /// Keeps the unused-address directory alive.
    scratch: tempfile::TempDir,
}

fn launch_err(e: anyhow::Error) -> ExecError {
    ExecError::CannotTest(format!("{e:#}"))
}

impl Executor {
    /// Launches the pair of `pair`: the source runs its workload, the destination waits with
    /// `-incoming defer`; `events` on both sides as the spec says. Parameters are left at
    /// their defaults (the model's starting point).
    pub fn launch(pair: &PairSpec, opts: &ExecOptions) -> Result<Executor, ExecError> {
        let src = Vm::launch_as(
            "source",
            &opts.src_backend,
            &LaunchSpec {
                name: "source".into(),
                memory_bytes: pair.memory.0,
                vcpus: pair.vcpus,
                image: pair.image.clone(),
                incoming: None,
                paused: false,
                extra_args: opts.src_extra.clone(),
            },
        )
        .map_err(launch_err)?;
        if pair.events {
            src.set_capabilities(&[("events", true)])
                .map_err(launch_err)?;
        }
        // The guest is up once it has finished its first pass over memory (`B` on the
        // serial), as in QEMU's migration tests: before that it only zeroes memory, and a
        // lost page would go unnoticed.
        if pair.image != "idle" {
            src.wait_serial(b'B', Duration::from_secs(30))
                .map_err(launch_err)?;
        }
        let dst = launch_destination(pair, opts, 1).map_err(launch_err)?;
        let mut ex = Executor {
            pair: pair.clone(),
            opts: opts.clone(),
            model: Model::new(pair.clone()),
            src: SideVm {
                vm: src,
                event_cursor: 0,
            },
            dst: SideVm {
                vm: dst,
                event_cursor: 0,
            },
            dst_used: false,
            last_uri: None,
            generation: 1,
            index: 0,
            history: Vec::new(),
            scratch: tempfile::tempdir().map_err(|e| launch_err(e.into()))?,
        };
        // Events of the launch itself are not part of any op.
        ex.src.event_cursor = ex.src.vm.qmp().events_seen().len();
        ex.dst.event_cursor = ex.dst.vm.qmp().events_seen().len();
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
                    .side(*side)
                    .vm
                    .query_parameters()
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
        let vm = &self.src.vm;
        let snapshot = || -> Option<(MigrationStatus, u64)> {
            let info = vm.query_migrate().ok()?;
            let status = info
                .status
                .and_then(|s| MigrationStatus::from_name(s.as_str()))
                .unwrap_or(MigrationStatus::None);
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
        for (name, side) in [("source", &self.src), ("destination", &self.dst)] {
            transcripts.push_str(&format!(
                "--- {name} (pid {}, {}) QMP transcript tail:\n{}\n",
                side.vm.pid(),
                if side.vm.is_alive() { "alive" } else { "dead" },
                side.vm.qmp().transcript().tail_truncated(12, 200)
            ));
            let err = side.vm.process().stderr_tail(3);
            if !err.is_empty() {
                transcripts.push_str(&format!("--- {name} stderr tail:\n{err}\n"));
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

    fn side(&self, side: Side) -> &SideVm {
        match side {
            Side::Source => &self.src,
            Side::Destination => &self.dst,
        }
    }

    /// A QMP command on `side`: `Ok`, the error reply, or `Dead` (nothing sent, or the
    /// process died while the command was pending).
    fn qmp(&self, side: Side, name: &str, args: Value) -> anyhow::Result<Reply> {
        let vm = &self.side(side).vm;
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

    fn perform(&mut self, op: &Op) -> anyhow::Result<Reply> {
        match op {
            Op::SetParameters {
                side,
                downtime_limit,
                max_bandwidth,
                avail_switchover_bandwidth,
                switchover_hold,
            } => {
                let mut m = serde_json::Map::new();
                if let Some(d) = downtime_limit {
                    m.insert("downtime-limit".into(), json!(d));
                }
                if let Some(b) = max_bandwidth {
                    m.insert("max-bandwidth".into(), json!(b.0));
                }
                if let Some(b) = avail_switchover_bandwidth {
                    m.insert("avail-switchover-bandwidth".into(), json!(b.0));
                }
                if let Some(h) = switchover_hold {
                    m.insert("switchover-hold".into(), json!(h));
                }
                self.qmp(*side, "migrate-set-parameters", Value::Object(m))
            }
            Op::Hold => self.perform(&Op::set_hold(Side::Source, true)),
            Op::Release => self.perform(&Op::set_hold(Side::Source, false)),
            Op::SetCapabilities {
                side,
                events,
                pause_before_switchover,
            } => {
                let mut caps = Vec::new();
                if let Some(e) = events {
                    caps.push(json!({"capability": "events", "state": e}));
                }
                if let Some(p) = pause_before_switchover {
                    caps.push(json!({"capability": "pause-before-switchover", "state": p}));
                }
                self.qmp(
                    *side,
                    "migrate-set-capabilities",
                    json!({ "capabilities": caps }),
                )
            }
            Op::Migrate { transport } => self.migrate(transport.unwrap_or(self.pair.transport)),
            Op::WaitPasses { n } => self.wait(op, Side::Source, |s, count| {
                if count >= *n {
                    Some(Reply::Ok)
                } else if wait_gives_up(op, s) {
                    Some(Reply::Unreachable { status: s })
                } else {
                    None
                }
            }),
            Op::Cancel => self.qmp(Side::Source, "migrate_cancel", Value::Null),
            Op::Continue { state } => self.qmp(
                Side::Source,
                "migrate-continue",
                json!({ "state": state.name() }),
            ),
            Op::Stop { side } => self.qmp(*side, "stop", Value::Null),
            Op::Cont { side } => self.qmp(*side, "cont", Value::Null),
            Op::WaitStatus { side, status } => self.wait(op, *side, |s, _| {
                if s == *status {
                    Some(Reply::Ok)
                } else if wait_gives_up(op, s) {
                    Some(Reply::Unreachable { status: s })
                } else {
                    None
                }
            }),
            Op::WaitCompleted => {
                let r = self.wait(op, Side::Source, |s, _| {
                    if s == MigrationStatus::Completed {
                        Some(Reply::Ok)
                    } else if wait_gives_up(op, s) {
                        Some(Reply::Unreachable { status: s })
                    } else {
                        None
                    }
                })?;
                if r != Reply::Ok || !self.dst.vm.is_alive() || !self.dst_used {
                    return Ok(r);
                }
                // Then the destination that took the stream (not a fresh one started after
                // the migration): completed (or failed / gone).
                let d = self.wait(op, Side::Destination, |s, _| {
                    matches!(s, MigrationStatus::Completed | MigrationStatus::Failed)
                        .then_some(Reply::Ok)
                })?;
                Ok(match d {
                    Reply::Dead => Reply::Ok,
                    other => other,
                })
            }
            Op::Kill { side } => {
                let vm = &self.side(*side).vm;
                if vm.is_alive() {
                    vm.kill();
                }
                Ok(Reply::Ok)
            }
            Op::RestartDestination => {
                if self.dst.vm.is_alive() {
                    self.dst.vm.kill();
                }
                self.generation += 1;
                let vm = launch_destination(&self.pair, &self.opts, self.generation)
                    .context("launching a fresh destination")?;
                let cursor = vm.qmp().events_seen().len();
                self.dst = SideVm {
                    vm,
                    event_cursor: cursor,
                };
                self.dst_used = false;
                Ok(Reply::Ok)
            }
            Op::CheckMemory => Ok(match self.check_memory() {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::CheckFailed {
                    reason: format!("{e:#}"),
                },
            }),
            Op::CheckDestinationRuns => Ok(match self.check_destination_runs() {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::CheckFailed {
                    reason: format!("{e:#}"),
                },
            }),
        }
    }

    /// `migrate-incoming` on a fresh destination (unless the source is busy or postmigrate,
    /// in which case `migrate` is refused anyway), then `migrate` on the source. A destination that is not
    /// waiting for incoming leaves the source pointed at the last address, where nothing
    /// listens.
    fn migrate(&mut self, transport: Transport) -> anyhow::Result<Reply> {
        if !self.src.vm.is_alive() {
            return Ok(Reply::Dead);
        }
        let busy = self
            .src
            .vm
            .query_migrate()
            .ok()
            .and_then(|i| i.status)
            .and_then(|s| MigrationStatus::from_name(s.as_str()))
            .is_some_and(|s| s.is_running())
            // QEMU refuses `migrate` from a source still postmigrate.
            || self
                .src
                .vm
                .query_status()
                .is_ok_and(|st| st.status.as_str() == "postmigrate");
        if !busy && !self.dst_used && self.dst.vm.is_alive() {
            self.dst_used = true;
            let listen = match transport {
                Transport::Unix => format!(
                    "unix:{}",
                    self.dst
                        .vm
                        .log_dir()
                        .join(format!("migsocket-{}", self.generation))
                        .display()
                ),
                Transport::Tcp => "tcp:127.0.0.1:0".to_string(),
            };
            if self.qmp(
                Side::Destination,
                "migrate-incoming",
                json!({ "uri": listen }),
            )? == Reply::Ok
            {
                self.last_uri = self.dst.vm.incoming_uri().ok();
            }
        }
        let uri = match &self.last_uri {
            Some(u) => u.clone(),
            None => match transport {
                Transport::Unix => format!(
                    "unix:{}",
                    self.scratch.path().join("nobody-listens").display()
                ),
                Transport::Tcp => "tcp:127.0.0.1:1".to_string(),
            },
        };
        self.qmp(Side::Source, "migrate", json!({ "uri": uri }))
    }

    /// Polls `side`'s `query-migrate` every 5 ms until `done` says how the wait ends, the
    /// side dies (`Dead`) or the deadline passes (`Timeout`).
    fn wait(
        &self,
        op: &Op,
        side: Side,
        done: impl Fn(MigrationStatus, u64) -> Option<Reply>,
    ) -> anyhow::Result<Reply> {
        let vm = &self.side(side).vm;
        let deadline = Instant::now() + self.opts.wait_timeout;
        loop {
            if !vm.is_alive() {
                return Ok(Reply::Dead);
            }
            let info = match vm.query_migrate() {
                Ok(i) => i,
                Err(_) if vm.wait_exit(Duration::from_millis(500)).is_some() => {
                    return Ok(Reply::Dead)
                }
                Err(e) => return Err(e.context(format!("{side}: waiting ({op})"))),
            };
            let status = info
                .status
                .and_then(|s| MigrationStatus::from_name(s.as_str()))
                .unwrap_or(MigrationStatus::None);
            let count = info.ram.as_ref().map_or(0, |r| r.dirty_sync_count);
            if let Some(r) = done(status, count) {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                return Ok(Reply::Timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Byte-compares all guest RAM of the source and the destination.
    fn check_memory(&self) -> anyhow::Result<()> {
        self.settle_destination()?;
        // On QEMU's PC machines the first MiB holds BIOS/option-ROM shadows (PAM) that
        // pmemsave reads differently on the two sides: compare from 1 MiB there.
        let start = if self.opts.dst_backend.is_qemu() {
            1 << 20
        } else {
            0
        };
        let size = self.pair.memory.0 - start;
        let a = self
            .src
            .vm
            .pmemsave(start, size)
            .context("source pmemsave")?;
        let b = self
            .dst
            .vm
            .pmemsave(start, size)
            .context("destination pmemsave")?;
        checks::compare_memory(&a, &b, start).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Waits (bounded) until the destination's incoming migration has ended: the source
    /// may report `completed` while the destination still loads.
    fn settle_destination(&self) -> anyhow::Result<()> {
        let r = self.wait(&Op::WaitCompleted, Side::Destination, |s, _| {
            s.is_terminal().then_some(Reply::Ok)
        })?;
        anyhow::ensure!(
            r == Reply::Ok,
            "destination did not finish loading the migration: {r}"
        );
        Ok(())
    }

    /// As `Pair::assert_destination_runs`, leaving the destination running.
    fn check_destination_runs(&self) -> anyhow::Result<()> {
        self.settle_destination()?;
        let dst = &self.dst.vm;
        if !dst.query_status()?.running {
            dst.cont().context("cont on the destination")?;
        }
        let status = dst.query_status()?;
        anyhow::ensure!(
            status.running,
            "destination did not start running: {:?}",
            status.status
        );
        let (start, end) = self
            .opts
            .dst_backend
            .test_range(&self.pair.image, self.pair.memory.0)?;
        if self.pair.image != "idle" {
            dst.wait_serial(b'B', Duration::from_secs(20))
                .context("destination serial output after migration")?;
            let first = dst.memory_digest(start, end)?;
            let deadline = Instant::now() + Duration::from_secs(20);
            while dst.memory_digest(start, end)? == first {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "destination memory did not change within 20 s after cont"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        dst.stop().context("stop on the destination")?;
        if self.pair.image == "sweep" || self.opts.dst_backend.is_qemu() {
            let bytes = dst.pmemsave(start, end - start)?;
            checks::check_guests_ram(&bytes, start, end).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        dst.cont().context("cont on the destination")?;
        Ok(())
    }

    /// Observes the destination, then the source.
    fn observe(&mut self, reply: Reply) -> anyhow::Result<Observation> {
        let destination = observe_side(&mut self.dst)?;
        let source = observe_side(&mut self.src)?;
        Ok(Observation {
            reply,
            source,
            destination,
        })
    }
}

fn launch_destination(pair: &PairSpec, opts: &ExecOptions, generation: u32) -> anyhow::Result<Vm> {
    let dst = Vm::launch_as(
        "destination",
        &opts.dst_backend,
        &LaunchSpec {
            name: format!("destination-{generation}"),
            memory_bytes: pair.memory.0,
            vcpus: pair.vcpus,
            image: pair.image.clone(),
            incoming: Some("defer".into()),
            paused: pair.dst_paused,
            extra_args: opts.dst_extra.clone(),
        },
    )?;
    if pair.events {
        dst.set_capabilities(&[("events", true)])?;
    }
    Ok(dst)
}

fn run_state(name: &str) -> Option<RunState> {
    Some(match name {
        "prelaunch" => RunState::Prelaunch,
        "running" => RunState::Running,
        "paused" => RunState::Paused,
        "inmigrate" => RunState::Inmigrate,
        "postmigrate" => RunState::Postmigrate,
        "finish-migrate" => RunState::FinishMigrate,
        "shutdown" => RunState::Shutdown,
        _ => return None,
    })
}

fn event(e: &migtest_qmp::message::Event) -> Option<Event> {
    let data = e.data.as_ref();
    match e.event.as_str() {
        "MIGRATION" => data
            .and_then(|d| d.get("status"))
            .and_then(Value::as_str)
            .and_then(MigrationStatus::from_name)
            .map(|status| Event::Migration { status }),
        "MIGRATION_PASS" => data
            .and_then(|d| d.get("pass"))
            .and_then(Value::as_u64)
            .map(|pass| Event::MigrationPass { pass }),
        "STOP" => Some(Event::Stop),
        "RESUME" => Some(Event::Resume),
        _ => None,
    }
}

/// `query-status`, then `query-migrate`, then the events that arrived up to that reply.
fn observe_side(s: &mut SideVm) -> anyhow::Result<SideObservation> {
    let vm = &s.vm;
    let dead = |s: &mut SideVm| {
        s.event_cursor = s.vm.qmp().events_seen().len();
        Ok(SideObservation::dead())
    };
    if !vm.is_alive() {
        return dead(s);
    }
    let st = match vm.query_status() {
        Ok(st) => st,
        Err(_) if vm.wait_exit(Duration::from_millis(500)).is_some() => return dead(s),
        Err(e) => return Err(e),
    };
    let info = match vm.query_migrate() {
        Ok(i) => i,
        Err(_) if vm.wait_exit(Duration::from_millis(500)).is_some() => return dead(s),
        Err(e) => return Err(e),
    };
    // Only the events written before the query-migrate reply (later ones belong to the
    // next observation).
    let upto = vm.qmp().events_seen_before_last_reply();
    let seen = vm.qmp().events_seen();
    vm.qmp().drain_events();
    let upto = upto.min(seen.len());
    let from = s.event_cursor.min(upto);
    let events = seen[from..upto].iter().filter_map(event).collect();
    s.event_cursor = upto;
    Ok(SideObservation {
        alive: true,
        status: Some(
            info.status
                .and_then(|m| MigrationStatus::from_name(m.as_str()))
                .unwrap_or(MigrationStatus::None),
        ),
        run_state: run_state(&st.status.as_str()),
        dirty_sync_count: info.ram.as_ref().map(|r| r.dirty_sync_count),
        events,
    })
}

/// One line: the replies and, per side, the statuses and run states the model allowed.
pub fn describe_expectation(exp: &Expectation) -> String {
    let replies: Vec<String> = exp.replies().iter().map(|r| r.to_string()).collect();
    let mut s = format!("reply {}", replies.join(" | "));
    for side in Side::ALL {
        let st: Vec<&str> = exp.statuses(side).iter().map(|m| m.name()).collect();
        let rs: Vec<&str> = exp.run_states(side).iter().map(|r| r.name()).collect();
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
