//! One concrete, deterministic state of the pair ("world") and the QEMU rules that move it.
//!
//! The model keeps a set of worlds: races (a migration completing just before a `cancel`) split
//! one world into several; observations narrow the set again.

use crate::scenario::{MigrationStatus, Op, PairSpec, Side};

use super::expect::{
    Alive, ExpectedReply, GuestOwner, Outcome, SideExpect, Snapshot, ERR_DOWNTIME_LIMIT,
    ERR_IN_PROGRESS, ERR_NOT_EXPECTED_STATE,
};
use super::types::{Capabilities, Observation, Parameters, RunState, MAX_DOWNTIME_LIMIT_MS};

use MigrationStatus as S;

/// Where the source guest stands when no migration stops it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GuestRun {
    Running,
    Paused,
    /// After a completed migration (QEMU `postmigrate`).
    PostMigrate,
}

impl GuestRun {
    fn run_state(self) -> RunState {
        match self {
            GuestRun::Running => RunState::Running,
            GuestRun::Paused => RunState::Paused,
            GuestRun::PostMigrate => RunState::Postmigrate,
        }
    }
}

/// The source's outgoing migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SrcPhase {
    /// No migration runs; the status is this one (none, completed, cancelled, failed).
    Idle(MigrationStatus),
    /// Precopy not held: setup/active, then completed (or pre-switchover with
    /// pause-before-switchover) by itself.
    Converging,
    /// switchover-hold set: setup/active for ever, passes keep increasing.
    Held,
    /// Paused in pre-switchover; `broken`: the destination died meanwhile.
    PreSwitchover { broken: bool },
    /// Switchover decided (hold released, threshold reached): the guest is being stopped or
    /// stopped (`finish-migrate`), status still active; then completed, or pre-switchover with
    /// pause-before-switchover. switchover-hold no longer matters.
    SwitchingOver,
    /// After `migrate-continue`: pre-switchover/device, then completed.
    Finishing,
    /// After `migrate_cancel`: cancelling, then cancelled.
    Cancelling,
    /// Transport error on its way: then failed. `from_device`: failing after `continue`.
    Failing { from_device: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Src {
    pub alive: bool,
    pub phase: SrcPhase,
    pub run: GuestRun,
    /// `cont` after a completed migration: the source guest runs again (memory diverges).
    pub resumed: bool,
    pub params: Parameters,
    pub caps: Capabilities,
}

/// The destination process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum DstPhase {
    Dead,
    /// Fresh, waiting for incoming (status none, run state inmigrate).
    Listening,
    /// Receiving; its status follows the source's migration.
    Incoming,
    /// Incoming migration completed; the guest is here with this run state.
    Completed(GuestRun),
    /// The incoming migration broke: status failed, then the process exits (maybe alive still).
    Dying,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Dst {
    pub phase: DstPhase,
    /// QEMU `autostart`: start the guest after the incoming migration (no `-S`, or `cont`).
    pub autostart: bool,
    /// The destination guest ran after completion (its memory diverged from the source).
    pub ran: bool,
    /// The source completed but the destination may still be loading the end of the stream
    /// (until a wait or an observation shows it completed).
    pub settling: bool,
    pub params: Parameters,
    pub caps: Capabilities,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct World {
    pub src: Src,
    pub dst: Dst,
    pub migrations: u32,
    /// Lower bound of the source dirty-sync-count in the current migration.
    pub passes_min: u64,
    /// The test `cont`ed the source during switchover: memory no longer comparable.
    pub tainted: bool,
    pub memory: crate::scenario::Size,
}

/// The result of one op in one world.
pub(crate) struct Step {
    pub reply: ExpectedReply,
    pub world: World,
}

fn step(reply: ExpectedReply, world: World) -> Vec<Step> {
    vec![Step { reply, world }]
}

impl World {
    pub fn initial(pair: &PairSpec) -> World {
        let caps = Capabilities {
            events: pair.events,
            pause_before_switchover: false,
        };
        World {
            src: Src {
                alive: true,
                phase: SrcPhase::Idle(S::None),
                run: GuestRun::Running,
                resumed: false,
                params: Parameters::default(),
                caps,
            },
            dst: Dst::fresh(pair),
            migrations: 0,
            passes_min: 0,
            tainted: false,
            memory: pair.memory,
        }
    }

    fn pbs(&self) -> bool {
        self.src.caps.pause_before_switchover
    }

    /// The destination receives the current migration.
    pub fn dst_incoming(&self) -> bool {
        self.dst.phase == DstPhase::Incoming
    }

    pub fn src_is_held(&self) -> bool {
        self.src.alive && self.src.phase == SrcPhase::Held
    }

    /// A migration occupies the source (QEMU `migration_is_running()`), as far as this world
    /// knows at the moment a command arrives.
    fn src_running_migration(&self) -> bool {
        !matches!(self.src.phase, SrcPhase::Idle(_))
    }

    /// The source status when it cannot change by itself.
    fn src_settled_status(&self) -> Option<MigrationStatus> {
        match self.src.phase {
            SrcPhase::Idle(s) => Some(s),
            SrcPhase::PreSwitchover { .. } => Some(S::PreSwitchover),
            SrcPhase::Held if self.passes_min >= 2 => Some(S::Active),
            _ => None,
        }
    }

    /// The worlds this one may have turned into by itself before the next command arrives
    /// (itself first).
    pub fn settlements(&self) -> Vec<World> {
        let mut srcs = vec![self.clone()];
        match self.src.phase {
            SrcPhase::Converging if self.src.alive => {
                let mut s = self.clone();
                s.src.phase = SrcPhase::SwitchingOver;
                srcs.push(s);
                let mut w = self.clone();
                w.switch_over();
                srcs.push(w);
            }
            SrcPhase::SwitchingOver if self.src.alive => {
                let mut w = self.clone();
                w.switch_over();
                srcs.push(w);
            }
            SrcPhase::Finishing if self.src.alive => {
                let mut w = self.clone();
                w.complete();
                srcs.push(w);
            }
            SrcPhase::Cancelling => {
                let mut w = self.clone();
                w.src.phase = SrcPhase::Idle(S::Cancelled);
                srcs.push(w);
            }
            SrcPhase::Failing { .. } => {
                let mut w = self.clone();
                w.src.phase = SrcPhase::Idle(S::Failed);
                srcs.push(w);
            }
            _ => {}
        }
        let mut out = Vec::new();
        for w in srcs {
            if w.dst.phase == DstPhase::Dying {
                let mut d = w.clone();
                d.dst.phase = DstPhase::Dead;
                out.push(w);
                out.push(d);
            } else {
                out.push(w);
            }
        }
        out
    }

    /// The switchover runs to its end: completed, or paused in pre-switchover.
    fn switch_over(&mut self) {
        if self.pbs() {
            self.src.phase = SrcPhase::PreSwitchover { broken: false };
        } else {
            self.complete();
        }
    }

    /// The migration completes on both sides.
    fn complete(&mut self) {
        let at_switchover = self.src.run;
        self.src.phase = SrcPhase::Idle(S::Completed);
        self.src.run = GuestRun::PostMigrate;
        self.src.resumed = false;
        if self.dst.phase == DstPhase::Incoming {
            // process_incoming_migration_bh: a live source state starts the guest if autostart,
            // else it is paused; a stopped source state is kept.
            let run = match at_switchover {
                GuestRun::Running if self.dst.autostart => GuestRun::Running,
                GuestRun::Running | GuestRun::Paused => GuestRun::Paused,
                GuestRun::PostMigrate => GuestRun::PostMigrate,
            };
            self.dst.phase = DstPhase::Completed(run);
            self.dst.ran = run == GuestRun::Running;
            self.dst.settling = true;
        }
    }

    /// Both sides completed and the destination finished loading (after a wait).
    fn complete_both(&mut self) {
        self.complete();
        self.dst.settling = false;
    }

    /// This world with the races that `obs` shows resolved.
    pub fn narrowed(&self, obs: &Observation) -> World {
        let mut w = self.clone();
        if obs.source.alive && w.src.alive {
            match (w.src.phase, obs.source.status) {
                (SrcPhase::Converging | SrcPhase::SwitchingOver, Some(S::Completed))
                    if !w.pbs() =>
                {
                    w.complete()
                }
                (SrcPhase::Finishing, Some(S::Completed)) => w.complete(),
                (SrcPhase::Converging | SrcPhase::SwitchingOver, Some(S::PreSwitchover))
                    if w.pbs() =>
                {
                    w.src.phase = SrcPhase::PreSwitchover { broken: false }
                }
                (SrcPhase::Cancelling, Some(S::Cancelled)) => {
                    w.src.phase = SrcPhase::Idle(S::Cancelled)
                }
                (SrcPhase::Failing { .. }, Some(S::Failed)) => {
                    w.src.phase = SrcPhase::Idle(S::Failed)
                }
                _ => {}
            }
            if let Some(c) = obs.source.dirty_sync_count {
                if matches!(w.src.phase, SrcPhase::Held | SrcPhase::Converging) {
                    w.passes_min = w.passes_min.max(c);
                }
            }
        }
        if w.dst.phase == DstPhase::Incoming
            && obs.destination.alive
            && obs.destination.status == Some(S::Completed)
        {
            // The destination completed: the migration did (the source says so at once).
            w.complete_both();
        }
        if w.dst.phase == DstPhase::Dying && !obs.destination.alive {
            w.dst.phase = DstPhase::Dead;
        }
        if obs.destination.alive
            && obs.destination.status == Some(S::Completed)
            && matches!(w.dst.phase, DstPhase::Completed(_))
        {
            w.dst.settling = false;
        }
        w
    }

    /// The stream to the destination breaks (destination killed or replaced).
    fn destination_lost(&mut self) {
        match self.src.phase {
            SrcPhase::Converging | SrcPhase::Held => {
                self.src.phase = SrcPhase::Failing { from_device: false }
            }
            SrcPhase::Finishing => self.src.phase = SrcPhase::Failing { from_device: true },
            // With pause-before-switchover nothing is written before the pause.
            SrcPhase::SwitchingOver if self.pbs() => {
                self.src.phase = SrcPhase::PreSwitchover { broken: true }
            }
            SrcPhase::SwitchingOver => self.src.phase = SrcPhase::Failing { from_device: false },
            SrcPhase::PreSwitchover { .. } => {
                self.src.phase = SrcPhase::PreSwitchover { broken: true }
            }
            _ => {}
        }
    }

    /// The source is gone or gave up: an incoming destination fails and exits.
    fn source_lost(&mut self) {
        if self.dst.phase == DstPhase::Incoming {
            self.dst.phase = DstPhase::Dying;
        }
    }

    pub fn memory_must_match(&self) -> Result<(), &'static str> {
        if !self.src.alive {
            return Err("the source is dead");
        }
        if self.src.phase != SrcPhase::Idle(S::Completed) {
            return Err("no completed migration on the source");
        }
        if self.src.resumed || self.src.run != GuestRun::PostMigrate {
            return Err("the source guest ran again after the migration");
        }
        if self.tainted {
            return Err("the source guest ran during switchover");
        }
        match self.dst.phase {
            DstPhase::Completed(_) if self.dst.settling => {
                Err("the destination may still be loading (wait for completed first)")
            }
            DstPhase::Completed(run) if !self.dst.ran && run != GuestRun::Running => Ok(()),
            DstPhase::Completed(_) => Err("the destination guest has run"),
            _ => Err("the destination did not complete the incoming migration"),
        }
    }

    fn src_snapshots(&self) -> Vec<Snapshot> {
        let r = self.src.run.run_state();
        let fm = RunState::FinishMigrate;
        let pm = RunState::Postmigrate;
        let snap = |status, run_state| Snapshot { status, run_state };
        let mut v = match self.src.phase {
            SrcPhase::Idle(s) => vec![snap(s, r)],
            SrcPhase::Converging if self.pbs() => vec![
                snap(S::Setup, r),
                snap(S::Active, r),
                snap(S::Active, fm),
                snap(S::PreSwitchover, fm),
            ],
            SrcPhase::Converging => vec![
                snap(S::Setup, r),
                snap(S::Active, r),
                snap(S::Active, fm),
                snap(S::Completed, pm),
            ],
            SrcPhase::Held if self.passes_min >= 2 => vec![snap(S::Active, r)],
            SrcPhase::Held => vec![snap(S::Setup, r), snap(S::Active, r)],
            SrcPhase::PreSwitchover { .. } => vec![snap(S::PreSwitchover, fm)],
            SrcPhase::SwitchingOver if self.pbs() => {
                vec![snap(S::Active, fm), snap(S::PreSwitchover, fm)]
            }
            SrcPhase::SwitchingOver => vec![snap(S::Active, fm), snap(S::Completed, pm)],
            SrcPhase::Finishing => vec![
                snap(S::PreSwitchover, fm),
                snap(S::Device, fm),
                snap(S::Completed, pm),
            ],
            SrcPhase::Cancelling => vec![
                snap(S::Cancelling, r),
                snap(S::Cancelling, fm),
                snap(S::Cancelling, r),
                snap(S::Cancelled, r),
            ],
            SrcPhase::Failing { from_device: true } => {
                vec![snap(S::Device, fm), snap(S::Failed, r)]
            }
            SrcPhase::Failing { from_device: false } => vec![
                snap(S::Setup, r),
                snap(S::Active, r),
                snap(S::Active, fm),
                snap(S::Failed, r),
            ],
        };
        if self.tainted {
            // The test `cont`ed the source in the middle of switchover: it may run at any point.
            v = v
                .iter()
                .flat_map(|s| [*s, snap(s.status, RunState::Running)])
                .collect();
        }
        v
    }

    fn dst_final_run(&self) -> RunState {
        match self.src.run {
            GuestRun::Running if self.dst.autostart => RunState::Running,
            GuestRun::Running | GuestRun::Paused => RunState::Paused,
            GuestRun::PostMigrate => RunState::Postmigrate,
        }
    }

    fn dst_snapshots(&self) -> Vec<Snapshot> {
        let inm = RunState::Inmigrate;
        let snap = |status, run_state| Snapshot { status, run_state };
        match self.dst.phase {
            DstPhase::Dead => vec![],
            DstPhase::Listening => vec![snap(S::None, inm)],
            DstPhase::Incoming => {
                // `none`: QEMU 7.2 shows no status until it accepts the stream.
                let mut v = vec![
                    snap(S::Setup, inm),
                    snap(S::None, inm),
                    snap(S::Active, inm),
                ];
                let completes = matches!(self.src.phase, SrcPhase::Finishing)
                    || (matches!(
                        self.src.phase,
                        SrcPhase::Converging | SrcPhase::SwitchingOver
                    ) && !self.pbs());
                if completes {
                    // The run state is set just before the status turns completed.
                    let fin = self.dst_final_run();
                    v.push(snap(S::Active, fin));
                    v.push(snap(S::Completed, fin));
                }
                v
            }
            DstPhase::Completed(run) if self.dst.settling => vec![
                // The source may finish before the destination has even taken the stream.
                snap(S::Setup, inm),
                snap(S::None, inm),
                snap(S::Active, inm),
                snap(S::Active, run.run_state()),
                snap(S::Completed, run.run_state()),
            ],
            DstPhase::Completed(run) => vec![snap(S::Completed, run.run_state())],
            DstPhase::Dying => vec![
                snap(S::Setup, inm),
                snap(S::None, inm),
                snap(S::Active, inm),
                snap(S::Failed, inm),
            ],
        }
    }

    fn guest_owner(&self) -> GuestOwner {
        let src = self.src.alive
            && self.src.run == GuestRun::Running
            && !matches!(
                self.src.phase,
                SrcPhase::PreSwitchover { .. } | SrcPhase::SwitchingOver | SrcPhase::Finishing
            );
        let dst = self.dst.phase == DstPhase::Completed(GuestRun::Running);
        match (src, dst) {
            (true, true) => GuestOwner::Both,
            (true, false) => GuestOwner::Source,
            (false, true) => GuestOwner::Destination,
            (false, false) => GuestOwner::Nobody,
        }
    }

    pub fn outcome(&self, reply: ExpectedReply) -> Outcome {
        let source = SideExpect {
            alive: if self.src.alive {
                Alive::Yes
            } else {
                Alive::No
            },
            snapshots: if self.src.alive {
                self.src_snapshots()
            } else {
                vec![]
            },
            min_passes: if matches!(self.src.phase, SrcPhase::Idle(_)) {
                0
            } else {
                self.passes_min
            },
            events: self.src.caps.events,
        };
        let destination = SideExpect {
            alive: match self.dst.phase {
                DstPhase::Dead => Alive::No,
                DstPhase::Dying => Alive::Maybe,
                _ => Alive::Yes,
            },
            snapshots: self.dst_snapshots(),
            min_passes: 0,
            events: self.dst.caps.events,
        };
        Outcome {
            reply,
            source,
            destination,
            guest_owner: self.guest_owner(),
            memory_must_match: self.memory_must_match().is_ok(),
            migrations: self.migrations,
            hold: self.src.params.switchover_hold,
            world: self.clone(),
        }
    }

    fn side_alive(&self, side: Side) -> bool {
        match side {
            Side::Source => self.src.alive,
            Side::Destination => self.dst.phase != DstPhase::Dead,
        }
    }

    /// Applies `op` to this (settled) world.
    pub fn apply(&self, op: &Op, pair: &PairSpec) -> Vec<Step> {
        let mut w = self.clone();
        let ok = ExpectedReply::Ok;
        match op {
            Op::SetParameters {
                side,
                downtime_limit,
                max_bandwidth,
                avail_switchover_bandwidth,
                switchover_hold,
            } => {
                if !self.side_alive(*side) {
                    return step(ExpectedReply::Dead, w);
                }
                if downtime_limit.is_some_and(|d| d > MAX_DOWNTIME_LIMIT_MS) {
                    return step(ExpectedReply::error(ERR_DOWNTIME_LIMIT), w);
                }
                let p = match side {
                    Side::Source => &mut w.src.params,
                    Side::Destination => &mut w.dst.params,
                };
                if let Some(d) = downtime_limit {
                    p.downtime_limit = *d;
                }
                if let Some(b) = max_bandwidth {
                    p.max_bandwidth = *b;
                }
                if let Some(b) = avail_switchover_bandwidth {
                    p.avail_switchover_bandwidth = *b;
                }
                if let Some(h) = switchover_hold {
                    p.switchover_hold = *h;
                    if *side == Side::Source {
                        match (w.src.phase, h) {
                            (SrcPhase::Converging, true) => w.src.phase = SrcPhase::Held,
                            (SrcPhase::Held, false) => w.src.phase = SrcPhase::Converging,
                            _ => {}
                        }
                    }
                }
                step(ok, w)
            }
            Op::Hold => self.apply(&Op::set_hold(Side::Source, true), pair),
            Op::Release => self.apply(&Op::set_hold(Side::Source, false), pair),
            Op::SetCapabilities {
                side,
                events,
                pause_before_switchover,
            } => {
                if !self.side_alive(*side) {
                    return step(ExpectedReply::Dead, w);
                }
                if *side == Side::Source && self.src_running_migration() {
                    return step(ExpectedReply::error(ERR_IN_PROGRESS), w);
                }
                let c = match side {
                    Side::Source => &mut w.src.caps,
                    Side::Destination => &mut w.dst.caps,
                };
                if let Some(e) = events {
                    c.events = *e;
                }
                if let Some(p) = pause_before_switchover {
                    c.pause_before_switchover = *p;
                }
                step(ok, w)
            }
            Op::Migrate { .. } => {
                if !self.src.alive {
                    return step(ExpectedReply::Dead, w);
                }
                if self.src_running_migration() {
                    return step(ExpectedReply::error(ERR_IN_PROGRESS), w);
                }
                // QEMU's migrate_prepare refuses a source still postmigrate.
                if self.src.run == GuestRun::PostMigrate {
                    return step(
                        ExpectedReply::error(
                            "Can't migrate the vm that was paused due to previous migration",
                        ),
                        w,
                    );
                }
                w.migrations += 1;
                w.passes_min = 0;
                w.tainted = false;
                w.src.resumed = false;
                if self.dst.phase == DstPhase::Listening {
                    w.dst.phase = DstPhase::Incoming;
                    w.src.phase = if w.src.params.switchover_hold {
                        SrcPhase::Held
                    } else {
                        SrcPhase::Converging
                    };
                } else {
                    // Nothing listens at the destination's address: ok, then failed.
                    w.src.phase = SrcPhase::Failing { from_device: false };
                }
                step(ok, w)
            }
            Op::WaitPasses { n } => {
                if !self.src.alive {
                    return step(ExpectedReply::Dead, w);
                }
                match self.src.phase {
                    SrcPhase::Held | SrcPhase::Converging => {
                        let slow = !self.src.params.passes_are_quick(self.memory);
                        let stuck = w.clone();
                        w.passes_min = w.passes_min.max(*n);
                        let mut v = step(ok, w);
                        if slow && *n > self.passes_min {
                            // A pass over guest RAM may outlast the executor's timeout.
                            v.extend(step(ExpectedReply::Timeout, stuck));
                        }
                        v
                    }
                    SrcPhase::Idle(s) => step(ExpectedReply::unreachable(s), w),
                    SrcPhase::PreSwitchover { .. } => {
                        step(ExpectedReply::unreachable(S::PreSwitchover), w)
                    }
                    SrcPhase::Finishing => step(
                        ExpectedReply::Unreachable(
                            [S::PreSwitchover, S::Device, S::Completed].into(),
                        ),
                        w,
                    ),
                    SrcPhase::SwitchingOver => {
                        // The final pass may still reach `n`.
                        let target = if self.pbs() {
                            S::PreSwitchover
                        } else {
                            S::Completed
                        };
                        let mut v = step(ExpectedReply::unreachable(target), w.clone());
                        v.extend(step(ok, w));
                        v
                    }
                    SrcPhase::Cancelling => step(
                        ExpectedReply::Unreachable([S::Cancelling, S::Cancelled].into()),
                        w,
                    ),
                    SrcPhase::Failing { from_device: true } => {
                        step(ExpectedReply::Unreachable([S::Device, S::Failed].into()), w)
                    }
                    SrcPhase::Failing { from_device: false } => {
                        // The broken stream may be noticed only after a few more passes.
                        let mut v = step(ExpectedReply::unreachable(S::Failed), w.clone());
                        v.extend(step(ok, w));
                        v
                    }
                }
            }
            Op::Cancel => {
                if !self.src.alive {
                    return step(ExpectedReply::Dead, w);
                }
                match self.src.phase {
                    SrcPhase::Idle(_) | SrcPhase::Cancelling => step(ok, w),
                    SrcPhase::Converging
                    | SrcPhase::Held
                    | SrcPhase::SwitchingOver
                    | SrcPhase::PreSwitchover { .. }
                    | SrcPhase::Finishing => {
                        w.src.phase = SrcPhase::Cancelling;
                        w.source_lost();
                        step(ok, w)
                    }
                    SrcPhase::Failing { .. } => {
                        let mut c = w.clone();
                        c.src.phase = SrcPhase::Cancelling;
                        let mut v = step(ok.clone(), w);
                        v.extend(step(ok, c));
                        v
                    }
                }
            }
            Op::Continue { state } => {
                if !self.src.alive {
                    return step(ExpectedReply::Dead, w);
                }
                if let SrcPhase::PreSwitchover { broken } = self.src.phase {
                    if *state == S::PreSwitchover {
                        w.src.phase = if broken {
                            SrcPhase::Failing { from_device: true }
                        } else {
                            SrcPhase::Finishing
                        };
                        return step(ok, w);
                    }
                }
                if let Some(cur) = self.src_settled_status() {
                    return if cur == *state {
                        step(ok, w)
                    } else {
                        step(
                            ExpectedReply::error(format!("{ERR_NOT_EXPECTED_STATE}: {cur}")),
                            w,
                        )
                    };
                }
                let mut v = step(ExpectedReply::error(ERR_NOT_EXPECTED_STATE), w.clone());
                let transient = self.src_snapshots().iter().any(|s| {
                    s.status == *state && !s.status.is_terminal() && s.status != S::PreSwitchover
                });
                if transient {
                    v.extend(step(ok, w));
                }
                v
            }
            Op::Stop { side } => {
                if !self.side_alive(*side) {
                    return step(ExpectedReply::Dead, w);
                }
                match side {
                    Side::Source => match self.src.phase {
                        SrcPhase::PreSwitchover { .. }
                        | SrcPhase::SwitchingOver
                        | SrcPhase::Finishing => step(ok, w),
                        SrcPhase::Cancelling | SrcPhase::Failing { .. }
                            if self.src.run == GuestRun::Running =>
                        {
                            // Races with the guest being restarted after a stop for switchover.
                            let kept = w.clone();
                            w.src.run = GuestRun::Paused;
                            let mut v = step(ok.clone(), w);
                            v.extend(step(ok, kept));
                            v
                        }
                        _ => {
                            if w.src.run == GuestRun::Running {
                                w.src.run = GuestRun::Paused;
                            }
                            step(ok, w)
                        }
                    },
                    Side::Destination => {
                        match w.dst.phase {
                            DstPhase::Listening | DstPhase::Incoming | DstPhase::Dying => {
                                w.dst.autostart = false
                            }
                            DstPhase::Completed(GuestRun::Running) => {
                                w.dst.phase = DstPhase::Completed(GuestRun::Paused)
                            }
                            _ => {}
                        }
                        step(ok, w)
                    }
                }
            }
            Op::Cont { side } => {
                if !self.side_alive(*side) {
                    return step(ExpectedReply::Dead, w);
                }
                match side {
                    Side::Source => {
                        match self.src.phase {
                            SrcPhase::PreSwitchover { .. }
                            | SrcPhase::SwitchingOver
                            | SrcPhase::Finishing => {
                                w.tainted = true;
                            }
                            SrcPhase::Idle(S::Completed) if w.src.run != GuestRun::Running => {
                                w.src.resumed = true;
                            }
                            _ => {}
                        }
                        w.src.run = GuestRun::Running;
                        step(ok, w)
                    }
                    Side::Destination => {
                        match w.dst.phase {
                            DstPhase::Listening | DstPhase::Incoming | DstPhase::Dying => {
                                w.dst.autostart = true
                            }
                            DstPhase::Completed(_) => {
                                w.dst.phase = DstPhase::Completed(GuestRun::Running);
                                w.dst.ran = true;
                            }
                            DstPhase::Dead => {}
                        }
                        step(ok, w)
                    }
                }
            }
            Op::WaitStatus { side, status } => self.wait_status(*side, *status),
            Op::WaitCompleted => {
                if !self.src.alive {
                    return step(ExpectedReply::Dead, w);
                }
                match self.src.phase {
                    SrcPhase::Idle(S::Completed) => {
                        w.dst.settling = false;
                        step(ok, w)
                    }
                    SrcPhase::Idle(s) => step(ExpectedReply::unreachable(s), w),
                    SrcPhase::Converging if !self.pbs() => {
                        let stuck = w.clone();
                        w.complete_both();
                        let mut v = step(ok, w);
                        if !self.src.params.converges(self.memory) {
                            v.extend(step(ExpectedReply::Timeout, stuck));
                        }
                        v
                    }
                    SrcPhase::Finishing => {
                        w.complete_both();
                        step(ok, w)
                    }
                    SrcPhase::SwitchingOver if !self.pbs() => {
                        w.complete_both();
                        step(ok, w)
                    }
                    SrcPhase::Converging
                    | SrcPhase::SwitchingOver
                    | SrcPhase::Held
                    | SrcPhase::PreSwitchover { .. } => step(ExpectedReply::Timeout, w),
                    SrcPhase::Cancelling => {
                        w.src.phase = SrcPhase::Idle(S::Cancelled);
                        step(ExpectedReply::unreachable(S::Cancelled), w)
                    }
                    SrcPhase::Failing { .. } => {
                        w.src.phase = SrcPhase::Idle(S::Failed);
                        step(ExpectedReply::unreachable(S::Failed), w)
                    }
                }
            }
            Op::Kill { side } => {
                match side {
                    Side::Source => {
                        if self.src.alive && self.src_running_migration() {
                            w.source_lost();
                        }
                        w.src.alive = false;
                        w.src.phase = SrcPhase::Idle(S::None);
                    }
                    Side::Destination => {
                        if self.dst.phase != DstPhase::Dead {
                            w.destination_lost();
                        }
                        w.dst.phase = DstPhase::Dead;
                    }
                }
                step(ok, w)
            }
            Op::RestartDestination => {
                if self.dst.phase != DstPhase::Dead {
                    w.destination_lost();
                }
                w.dst = Dst::fresh(pair);
                step(ok, w)
            }
            Op::CheckMemory => match self.memory_must_match() {
                Ok(()) => step(ok, w),
                Err(reason) => step(ExpectedReply::refused(reason), w),
            },
            Op::CheckDestinationRuns => match self.dst.phase {
                DstPhase::Completed(_) => {
                    w.dst.phase = DstPhase::Completed(GuestRun::Running);
                    w.dst.ran = true;
                    w.dst.settling = false;
                    step(ok, w)
                }
                _ => step(
                    ExpectedReply::refused("the destination holds no completed migration"),
                    w,
                ),
            },
        }
    }

    fn wait_status(&self, side: Side, goal: MigrationStatus) -> Vec<Step> {
        let mut w = self.clone();
        let ok = ExpectedReply::Ok;
        if !self.side_alive(side) {
            return step(ExpectedReply::Dead, w);
        }
        if side == Side::Destination {
            return match self.dst.phase {
                DstPhase::Dead => step(ExpectedReply::Dead, w),
                // The source completed; the destination may still be loading (active).
                DstPhase::Completed(_) if self.dst.settling && goal == S::Active => {
                    let mut v = step(ok, w.clone());
                    w.dst.settling = false;
                    v.extend(step(ExpectedReply::unreachable(S::Completed), w));
                    v
                }
                DstPhase::Listening | DstPhase::Completed(_) => {
                    w.dst.settling = false;
                    let cur = if self.dst.phase == DstPhase::Listening {
                        S::None
                    } else {
                        S::Completed
                    };
                    if cur == goal {
                        step(ok, w)
                    } else {
                        step(ExpectedReply::unreachable(cur), w)
                    }
                }
                DstPhase::Dying => {
                    let mut v = step(ExpectedReply::Dead, w.clone());
                    // Failed, or still showing setup/active until it notices.
                    if matches!(goal, S::Failed | S::Setup | S::Active) {
                        v.extend(step(ok, w.clone()));
                    }
                    if goal != S::Failed {
                        v.extend(step(ExpectedReply::unreachable(S::Failed), w));
                    }
                    v
                }
                DstPhase::Incoming => {
                    let completes = self
                        .dst_snapshots()
                        .iter()
                        .any(|s| s.status == S::Completed);
                    let mut v = Vec::new();
                    if completes {
                        let mut done = w.clone();
                        done.complete_both();
                        if goal == S::Completed {
                            v.extend(step(ok.clone(), done));
                        } else {
                            v.extend(step(ExpectedReply::unreachable(S::Completed), done));
                        }
                        if !self.src.params.converges(self.memory)
                            && self.src.phase == SrcPhase::Converging
                        {
                            v.extend(step(ExpectedReply::Timeout, w.clone()));
                        }
                    } else if !matches!(goal, S::Setup | S::Active) {
                        v.extend(step(ExpectedReply::Timeout, w.clone()));
                    }
                    if matches!(goal, S::Setup | S::Active) {
                        v.extend(step(ok, w));
                    }
                    v
                }
            };
        }
        // Source.
        let conv_ok = self.src.params.converges(self.memory);
        match self.src.phase {
            _ if self.src_settled_status() == Some(goal) => step(ok, w),
            SrcPhase::Idle(s) => step(ExpectedReply::unreachable(s), w),
            SrcPhase::PreSwitchover { .. } => step(ExpectedReply::Timeout, w),
            SrcPhase::Held => {
                if matches!(goal, S::Setup | S::Active) {
                    let mut v = step(ok, w.clone());
                    if goal == S::Setup {
                        v.extend(step(ExpectedReply::Timeout, w));
                    }
                    v
                } else {
                    step(ExpectedReply::Timeout, w)
                }
            }
            SrcPhase::Converging | SrcPhase::SwitchingOver => {
                let target = if self.pbs() {
                    S::PreSwitchover
                } else {
                    S::Completed
                };
                let mut settled = w.clone();
                settled.switch_over();
                let transient = if self.src.phase == SrcPhase::Converging {
                    matches!(goal, S::Setup | S::Active)
                } else {
                    goal == S::Active
                };
                let mut v = Vec::new();
                if goal == target {
                    v.extend(step(ok.clone(), settled));
                } else if transient {
                    v.extend(step(ok.clone(), w.clone()));
                    if target == S::Completed {
                        v.extend(step(ExpectedReply::unreachable(target), settled));
                    } else {
                        v.extend(step(ExpectedReply::Timeout, settled));
                    }
                } else if target == S::Completed {
                    v.extend(step(ExpectedReply::unreachable(target), settled));
                } else {
                    v.extend(step(ExpectedReply::Timeout, settled));
                }
                if !conv_ok && self.src.phase == SrcPhase::Converging {
                    v.extend(step(ExpectedReply::Timeout, w));
                }
                v
            }
            SrcPhase::Finishing => {
                let mut done = w.clone();
                done.complete();
                match goal {
                    S::Completed => step(ok, done),
                    S::PreSwitchover | S::Device => {
                        let mut v = step(ok, w);
                        v.extend(step(ExpectedReply::unreachable(S::Completed), done));
                        v
                    }
                    _ => step(ExpectedReply::unreachable(S::Completed), done),
                }
            }
            SrcPhase::Cancelling => {
                let mut done = w.clone();
                done.src.phase = SrcPhase::Idle(S::Cancelled);
                match goal {
                    S::Cancelled => step(ok, done),
                    S::Cancelling => {
                        let mut v = step(ok, w);
                        v.extend(step(ExpectedReply::unreachable(S::Cancelled), done));
                        v
                    }
                    _ => step(ExpectedReply::unreachable(S::Cancelled), done),
                }
            }
            SrcPhase::Failing { from_device } => {
                let mut done = w.clone();
                done.src.phase = SrcPhase::Idle(S::Failed);
                let transient = if from_device {
                    matches!(goal, S::Device)
                } else {
                    matches!(goal, S::Setup | S::Active)
                };
                if goal == S::Failed {
                    step(ok, done)
                } else if transient {
                    let mut v = step(ok, w);
                    v.extend(step(ExpectedReply::unreachable(S::Failed), done));
                    v
                } else {
                    step(ExpectedReply::unreachable(S::Failed), done)
                }
            }
        }
    }
}

impl Dst {
    fn fresh(pair: &PairSpec) -> Dst {
        Dst {
            phase: DstPhase::Listening,
            autostart: !pair.dst_paused,
            ran: false,
            settling: false,
            params: Parameters::default(),
            caps: Capabilities {
                events: pair.events,
                pause_before_switchover: false,
            },
        }
    }
}
