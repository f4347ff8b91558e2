//! One concrete, deterministic state of the pair ("world") and the QEMU rules that move it.
//!
//! The model keeps a set of worlds: races (a migration completing just before a `cancel`) split
//! one world into several; observations narrow the set again. This module holds the state,
//! settling, narrowing and what each world expects to see; [`apply`] holds what each op does.

use crate::scenario::{MigrationStatus, PairSpec, Side};

use super::expect::{Alive, ExpectedReply, GuestOwner, Outcome, SideExpect, Snapshot};
use super::types::{Capabilities, Observation, Parameters, RunState};

use MigrationStatus as S;

mod apply;
mod auto_converge;
mod postcopy;
pub(crate) mod xbzrle;

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
    /// After `migrate-start-postcopy`: postcopy-active (guest stopped here, running on the
    /// destination), then completed by itself.
    Postcopy,
    /// The destination died during postcopy: postcopy-paused for good (no recovery op yet);
    /// the guest stays stopped here.
    PostcopyPaused,
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
    /// The source died during postcopy: postcopy-paused, the process stays, the guest keeps
    /// its run state (running if autostart).
    PostcopyPaused,
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
            ..Capabilities::default()
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
            SrcPhase::PostcopyPaused => Some(S::PostcopyPaused),
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
            SrcPhase::Finishing | SrcPhase::Postcopy if self.src.alive => {
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
        if self.src.phase == SrcPhase::Postcopy {
            return self.complete_postcopy();
        }
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
                (SrcPhase::Finishing | SrcPhase::Postcopy, Some(S::Completed)) => w.complete(),
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
            SrcPhase::Postcopy => self.src.phase = SrcPhase::PostcopyPaused,
            _ => {}
        }
    }

    /// The source is gone or gave up: an incoming destination fails and exits.
    fn source_lost(&mut self) {
        if self.dst.phase == DstPhase::Incoming && self.src.phase == SrcPhase::Postcopy {
            self.dst.phase = DstPhase::PostcopyPaused;
        } else if self.dst.phase == DstPhase::Incoming {
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
            SrcPhase::Postcopy | SrcPhase::PostcopyPaused => self.src_postcopy_snapshots(),
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
                if self.src.phase == SrcPhase::Postcopy {
                    v.extend(self.dst_postcopy_snapshots());
                }
                v
            }
            DstPhase::PostcopyPaused => self.dst_postcopy_snapshots(),
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
                SrcPhase::PreSwitchover { .. }
                    | SrcPhase::SwitchingOver
                    | SrcPhase::Finishing
                    | SrcPhase::Postcopy
                    | SrcPhase::PostcopyPaused
            );
        let dst =
            self.dst.phase == DstPhase::Completed(GuestRun::Running) || self.dst_runs_in_postcopy();
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
                ..Capabilities::default()
            },
        }
    }
}
