//! Postcopy in a world (QEMU's rules): `migrate-start-postcopy`, the statuses
//! `postcopy-active`/`postcopy-paused` on both sides, and what a death during postcopy does.
//!
//! - `migrate-start-postcopy` is refused with QEMU's texts when `postcopy-ram` is off on the
//!   source, or before any migration; otherwise it succeeds and a precopy migration that has
//!   not decided to switch over (held or converging) goes postcopy-active at once, whatever
//!   `switchover-hold` says. After switchover, in a terminal status or already in postcopy it
//!   is a no-op.
//! - During postcopy the source guest is stopped (`finish-migrate`), the destination runs the
//!   guest if autostart (no `-S`, or `cont`) and the migration completes by itself.
//! - Destination killed: the source goes postcopy-paused and its guest stays stopped (the
//!   newest state died with the destination). Source killed: the destination goes
//!   postcopy-paused and stays alive. Either may race with the switch itself (the other side
//!   had not yet taken postcopy): then precopy rules apply (failed).

use crate::scenario::MigrationStatus;

use super::super::expect::{ExpectedReply, Snapshot};
use super::super::status::{ERR_POSTCOPY_NOT_ENABLED, ERR_POSTCOPY_NOT_STARTED};
use super::super::types::RunState;
use super::{step, DstPhase, GuestRun, SrcPhase, Step, World};

use MigrationStatus as S;

/// Why the model declines to predict an op (the executor refuses it).
pub(crate) const NO_PBS_POSTCOPY: &str =
    "the model does not predict postcopy with pause-before-switchover";
/// `migrate_cancel` during postcopy.
pub(crate) const NO_POSTCOPY_CANCEL: &str =
    "the model does not predict migrate_cancel during postcopy (split guest state)";

impl World {
    /// The destination guest's run state in postcopy: autostart decides (QEMU's
    /// `loadvm_postcopy_handle_run_bh`).
    fn postcopy_run(&self) -> GuestRun {
        if self.dst.autostart {
            GuestRun::Running
        } else {
            GuestRun::Paused
        }
    }

    /// Whether the destination runs the guest while postcopy is active or paused.
    pub(super) fn dst_runs_in_postcopy(&self) -> bool {
        let in_postcopy = (self.dst.phase == DstPhase::Incoming
            && self.src.phase == SrcPhase::Postcopy)
            || self.dst.phase == DstPhase::PostcopyPaused;
        in_postcopy && self.dst.autostart
    }

    /// In postcopy, with a `max-postcopy-bandwidth` that may keep the background sender
    /// busy for longer than a wait ([`Parameters::postcopy_is_quick`](super::super::types::Parameters::postcopy_is_quick)).
    pub(super) fn postcopy_is_slow(&self) -> bool {
        self.src.phase == SrcPhase::Postcopy && !self.src.params.postcopy_is_quick(self.memory)
    }

    /// The postcopy migration completes on both sides.
    pub(super) fn complete_postcopy(&mut self) {
        self.src.phase = SrcPhase::Idle(S::Completed);
        self.src.run = GuestRun::PostMigrate;
        self.src.resumed = false;
        if self.dst.phase == DstPhase::Incoming {
            let run = self.postcopy_run();
            self.dst.phase = DstPhase::Completed(run);
            self.dst.ran |= run == GuestRun::Running;
            self.dst.settling = true;
        }
    }

    pub(super) fn src_postcopy_snapshots(&self) -> Vec<Snapshot> {
        let r = self.src.run.run_state();
        let fm = RunState::FinishMigrate;
        let snap = |status, run_state| Snapshot { status, run_state };
        match self.src.phase {
            // The migration thread may not have seen the request yet.
            SrcPhase::Postcopy => vec![
                snap(S::Setup, r),
                snap(S::Active, r),
                snap(S::Active, fm),
                snap(S::PostcopyActive, fm),
                snap(S::Completed, RunState::Postmigrate),
            ],
            // Until it notices the broken channel.
            _ => vec![snap(S::PostcopyActive, fm), snap(S::PostcopyPaused, fm)],
        }
    }

    pub(super) fn dst_postcopy_snapshots(&self) -> Vec<Snapshot> {
        let run = self.postcopy_run().run_state();
        let snap = |status, run_state| Snapshot { status, run_state };
        if self.dst.phase == DstPhase::PostcopyPaused {
            return vec![snap(S::PostcopyActive, run), snap(S::PostcopyPaused, run)];
        }
        // The run state is set just before the status turns postcopy-active.
        vec![
            snap(S::Active, run),
            snap(S::PostcopyActive, run),
            snap(S::Completed, run),
        ]
    }

    /// `migrate-start-postcopy` on the source.
    pub(super) fn start_postcopy(&self) -> Vec<Step> {
        let mut w = self.clone();
        if !self.src.alive {
            return step(ExpectedReply::Dead, w);
        }
        if !self.src.caps.postcopy_ram {
            return step(ExpectedReply::error(ERR_POSTCOPY_NOT_ENABLED), w);
        }
        match self.src.phase {
            SrcPhase::Idle(S::None) => step(ExpectedReply::error(ERR_POSTCOPY_NOT_STARTED), w),
            SrcPhase::Held | SrcPhase::Converging if self.pbs() => {
                step(ExpectedReply::refused(NO_PBS_POSTCOPY), w)
            }
            SrcPhase::Held | SrcPhase::Converging if self.dst.phase == DstPhase::Incoming => {
                w.src.phase = SrcPhase::Postcopy;
                w.dst.ran |= w.dst.autostart;
                step(ExpectedReply::Ok, w)
            }
            // Anything else: the flag is set and nothing changes.
            _ => step(ExpectedReply::Ok, w),
        }
    }

    /// The worlds after the destination dies or is replaced (its phase is then set by the
    /// caller): in postcopy, postcopy-paused, or failed if the source had not switched yet.
    pub(super) fn lose_destination(&self) -> Vec<World> {
        let mut w = self.clone();
        if self.dst.phase == DstPhase::Dead {
            return vec![w];
        }
        let early = (self.src.phase == SrcPhase::Postcopy).then(|| {
            let mut e = self.clone();
            e.src.phase = SrcPhase::Failing { from_device: false };
            e
        });
        w.destination_lost();
        let mut v = vec![w];
        v.extend(early);
        v
    }

    /// The worlds after the source is killed: in postcopy the destination goes
    /// postcopy-paused, or fails if it had not taken postcopy yet.
    pub(super) fn lose_source(&self) -> Vec<World> {
        let mut w = self.clone();
        let mut v = Vec::new();
        if self.src.alive && self.src_running_migration() {
            if self.src.phase == SrcPhase::Postcopy && self.dst.phase == DstPhase::Incoming {
                let mut early = w.clone();
                early.dst.phase = DstPhase::Dying;
                early.src.alive = false;
                early.src.phase = SrcPhase::Idle(S::None);
                v.push(early);
            }
            w.source_lost();
        }
        w.src.alive = false;
        w.src.phase = SrcPhase::Idle(S::None);
        v.insert(0, w);
        v
    }
}
