//! What the auto-converge ops do to a world: `set-auto-converge` (a capability: refused
//! while a migration runs), `set-throttle` (QEMU's range checks) and `wait-throttled` (a held
//! migration of a running guest that dirties memory gets throttled: the source closes a
//! period of at least a second at its syncs and dirties more than half of what it sends
//! in each, so the throttle starts after two periods).

use crate::scenario::{MigrationStatus, Op, PairSpec, Side};

use super::super::expect::{ExpectedReply, ERR_IN_PROGRESS};
use super::{step, GuestRun, SrcPhase, Step, World};

use MigrationStatus as S;

impl World {
    /// The auto-converge ops (any other op: refused).
    pub(super) fn apply_auto_converge(&self, op: &Op, pair: &PairSpec) -> Vec<Step> {
        let mut w = self.clone();
        match op {
            Op::SetAutoConverge { side, state } => {
                if !self.side_alive(*side) {
                    return step(ExpectedReply::Dead, w);
                }
                if *side == Side::Source && self.src_running_migration() {
                    return step(ExpectedReply::error(ERR_IN_PROGRESS), w);
                }
                match side {
                    Side::Source => w.src.caps.auto_converge = *state,
                    Side::Destination => w.dst.caps.auto_converge = *state,
                }
                step(ExpectedReply::Ok, w)
            }
            Op::SetThrottle { side, .. } => {
                if !self.side_alive(*side) {
                    return step(ExpectedReply::Dead, w);
                }
                let p = match side {
                    Side::Source => &mut w.src.params,
                    Side::Destination => &mut w.dst.params,
                };
                match p.throttle.set(op) {
                    Ok(t) => {
                        p.throttle = t;
                        step(ExpectedReply::Ok, w)
                    }
                    Err(e) => step(ExpectedReply::error(e), self.clone()),
                }
            }
            Op::WaitThrottled {} => {
                if !self.src.alive {
                    return step(ExpectedReply::Dead, w);
                }
                match self.src.phase {
                    // Periods close at syncs: only quick passes make the throttle come soon.
                    SrcPhase::Held
                        if self.throttles(pair)
                            && self.src.params.passes_are_quick(self.memory) =>
                    {
                        step(ExpectedReply::Ok, w)
                    }
                    // Throttled earlier (it stays until the migration ends), or later.
                    SrcPhase::Held if self.src.caps.auto_converge => {
                        let mut v = step(ExpectedReply::Ok, w.clone());
                        v.extend(step(ExpectedReply::Timeout, w));
                        v
                    }
                    SrcPhase::Held => step(ExpectedReply::Timeout, w),
                    SrcPhase::Converging => {
                        // It may converge first (or never be throttled).
                        let end = if self.pbs() {
                            S::PreSwitchover
                        } else {
                            S::Completed
                        };
                        let mut v = step(ExpectedReply::Ok, w.clone());
                        v.extend(step(ExpectedReply::unreachable(end), w.clone()));
                        v.extend(step(ExpectedReply::Timeout, w));
                        v
                    }
                    // As `wait-passes` in the other phases: the wait gives up on the status
                    // that ends the migration.
                    _ => self.apply(&Op::WaitPasses { n: u64::MAX }, pair),
                }
            }
            _ => step(ExpectedReply::refused("not an auto-converge op"), w),
        }
    }

    /// Whether a held migration in this world gets throttled: auto-converge on, a guest
    /// that dirties memory and runs, passes over its RAM that are quick.
    pub fn throttles(&self, pair: &PairSpec) -> bool {
        self.src.caps.auto_converge
            && pair.image != "idle"
            && self.src.run == GuestRun::Running
            && self.src.params.passes_are_quick(self.memory)
    }
}
