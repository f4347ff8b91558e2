//! The QEMU rules that move a world: what each [`Op`] does to it and which reply it
//! expects, including the races a `wait-status` may resolve either way.

use crate::scenario::{MigrationStatus, Op, PairSpec, Side};

use super::super::expect::{
    ExpectedReply, ERR_DOWNTIME_LIMIT, ERR_IN_PROGRESS, ERR_NOT_EXPECTED_STATE,
};
use super::super::multifd;
use super::super::status::ERR_POSTCOPY_MULTIFD;
use super::super::types::MAX_DOWNTIME_LIMIT_MS;
use super::xbzrle;
use super::{step, Dst, DstPhase, GuestRun, SrcPhase, Step, World};

use MigrationStatus as S;

impl World {
    /// Applies `op` to this (settled) world.
    pub fn apply(&self, op: &Op, pair: &PairSpec) -> Vec<Step> {
        let mut w = self.clone();
        let ok = ExpectedReply::Ok;
        match op {
            Op::SetAutoConverge { .. } | Op::SetThrottle { .. } | Op::WaitThrottled {} => {
                self.apply_auto_converge(op, pair)
            }
            Op::SetParameters {
                side,
                downtime_limit,
                switchover_hold,
                multifd_channels,
                xbzrle_cache_size,
                ..
            } => {
                if !self.side_alive(*side) {
                    return step(ExpectedReply::Dead, w);
                }
                if let Some(e) = multifd::channels_parse_error(*multifd_channels) {
                    return step(ExpectedReply::error(e), w);
                }
                if downtime_limit.is_some_and(|d| d > MAX_DOWNTIME_LIMIT_MS) {
                    return step(ExpectedReply::error(ERR_DOWNTIME_LIMIT), w);
                }
                if let Some(e) = multifd::channels_range_error(*multifd_channels) {
                    return step(ExpectedReply::error(e), w);
                }
                if let Some(err) = xbzrle::cache_size_error(*xbzrle_cache_size) {
                    return step(ExpectedReply::error(err), w);
                }
                let p = match side {
                    Side::Source => &mut w.src.params,
                    Side::Destination => &mut w.dst.params,
                };
                p.update(op);
                if let Some(h) = switchover_hold {
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
            Op::Hold {} => self.apply(&Op::set_hold(Side::Source, true), pair),
            Op::Release {} => self.apply(&Op::set_hold(Side::Source, false), pair),
            Op::SetCapabilities {
                side,
                events,
                pause_before_switchover,
                multifd,
                xbzrle,
                postcopy_ram,
            } => {
                if !self.side_alive(*side) {
                    return step(ExpectedReply::Dead, w);
                }
                if *side == Side::Source && self.src_running_migration() {
                    return step(ExpectedReply::error(ERR_IN_PROGRESS), w);
                }
                let current = match side {
                    Side::Source => &self.src.caps,
                    Side::Destination => &self.dst.caps,
                };
                // migtest-vmm refuses the pair as QEMU 8.x's migrate_caps_check (QEMU 7.2
                // accepts it; the generator does not produce it, see `postcopy_gen`).
                if postcopy_ram.unwrap_or(current.postcopy_ram)
                    && multifd.unwrap_or(current.multifd)
                {
                    return step(ExpectedReply::error(ERR_POSTCOPY_MULTIFD), w);
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
                if let Some(m) = multifd {
                    c.multifd = *m;
                }
                if let Some(x) = xbzrle {
                    c.xbzrle = *x;
                }
                if let Some(p) = postcopy_ram {
                    c.postcopy_ram = *p;
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
                let disagree = multifd::mismatch(
                    (&self.src.caps, &self.src.params),
                    (&self.dst.caps, &self.dst.params),
                );
                if self.dst.phase == DstPhase::Listening
                    && (disagree.is_some()
                        || (self.src.caps.postcopy_ram && !self.dst.caps.postcopy_ram))
                {
                    // The destination refuses the connections and exits; the source fails
                    // (multifd disagreement; postcopy-ram on the source only is QEMU's
                    // loadvm_postcopy_handle_advise: "RAM postcopy is disabled but have 16
                    // byte advise").
                    w.dst.phase = DstPhase::Dying;
                    w.src.phase = SrcPhase::Failing { from_device: false };
                } else if self.dst.phase == DstPhase::Listening {
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
                    SrcPhase::Postcopy | SrcPhase::PostcopyPaused => {
                        // The switch to postcopy syncs once more: `n` may be reached.
                        let ended = [S::PostcopyActive, S::PostcopyPaused, S::Completed];
                        let mut v = step(ExpectedReply::Unreachable(ended.into()), w.clone());
                        v.extend(step(ok, w));
                        v
                    }
                }
            }
            Op::StartPostcopy {} => self.start_postcopy(),
            Op::Cancel {} => {
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
                    SrcPhase::Postcopy | SrcPhase::PostcopyPaused => step(
                        ExpectedReply::refused(super::postcopy::NO_POSTCOPY_CANCEL),
                        w,
                    ),
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
                    s.status == *state && !s.status.is_settled() && s.status != S::PreSwitchover
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
                        | SrcPhase::Finishing
                        | SrcPhase::Postcopy
                        | SrcPhase::PostcopyPaused => step(ok, w),
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
                        w.dst.set_running(false);
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
                            | SrcPhase::Finishing
                            | SrcPhase::Postcopy
                            | SrcPhase::PostcopyPaused => {
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
                        w.dst.set_running(true);
                        if w.dst.phase != DstPhase::Dead {
                            let runs = w.dst_runs_in_postcopy();
                            w.dst.ran |= runs;
                        }
                        step(ok, w)
                    }
                }
            }
            Op::WaitStatus { side, status } => self.wait_status(*side, *status),
            Op::WaitCompleted {} => {
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
                    SrcPhase::Finishing | SrcPhase::Postcopy => {
                        let stuck = w.clone();
                        w.complete_both();
                        let mut v = step(ok, w);
                        if self.postcopy_is_slow() {
                            v.extend(step(ExpectedReply::Timeout, stuck));
                        }
                        v
                    }
                    SrcPhase::PostcopyPaused => step(ExpectedReply::Timeout, w),
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
            Op::Kill { side: Side::Source } => self
                .lose_source()
                .into_iter()
                .flat_map(|w| step(ok.clone(), w))
                .collect(),
            Op::Kill {
                side: Side::Destination,
            } => self
                .lose_destination()
                .into_iter()
                .flat_map(|mut w| {
                    w.dst.phase = DstPhase::Dead;
                    step(ok.clone(), w)
                })
                .collect(),
            Op::RestartDestination {} => self
                .lose_destination()
                .into_iter()
                .flat_map(|mut w| {
                    w.dst = Dst::fresh(pair);
                    step(ok.clone(), w)
                })
                .collect(),
            Op::CheckMemory {} => match self.memory_must_match() {
                Ok(()) => step(ok, w),
                Err(reason) => step(ExpectedReply::refused(reason), w),
            },
            Op::CheckDestinationRuns {} => match self.dst.phase {
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
                // Stays postcopy-paused (no recovery op yet): only that goal comes.
                DstPhase::PostcopyPaused => match goal {
                    S::PostcopyPaused => step(ok, w),
                    S::PostcopyActive => {
                        let mut v = step(ok, w.clone());
                        v.extend(step(ExpectedReply::Timeout, w));
                        v
                    }
                    _ => step(ExpectedReply::Timeout, w),
                },
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
                    let in_postcopy = self.src.phase == SrcPhase::Postcopy;
                    let transient = matches!(goal, S::Setup | S::Active)
                        || (in_postcopy && goal == S::PostcopyActive);
                    if completes {
                        let mut done = w.clone();
                        done.complete_both();
                        if goal == S::Completed {
                            v.extend(step(ok.clone(), done));
                        } else {
                            v.extend(step(ExpectedReply::unreachable(S::Completed), done));
                        }
                        if (!self.src.params.converges(self.memory)
                            && self.src.phase == SrcPhase::Converging)
                            || self.postcopy_is_slow()
                        {
                            v.extend(step(ExpectedReply::Timeout, w.clone()));
                        }
                    } else if !transient {
                        v.extend(step(ExpectedReply::Timeout, w.clone()));
                    }
                    if transient {
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
            SrcPhase::PostcopyPaused if goal == S::PostcopyActive => {
                let mut v = step(ok, w.clone());
                v.extend(step(ExpectedReply::Timeout, w));
                v
            }
            SrcPhase::PostcopyPaused => step(ExpectedReply::Timeout, w),
            SrcPhase::Postcopy => {
                let mut done = w.clone();
                done.complete();
                // Slow postcopy: whatever does not come at once waits for the end.
                let slow = (self.postcopy_is_slow() && goal != S::PostcopyActive)
                    .then(|| step(ExpectedReply::Timeout, w.clone()));
                let mut v = match goal {
                    S::Completed => step(ok, done),
                    S::Setup | S::Active | S::PostcopyActive => {
                        let mut v = step(ok, w);
                        v.extend(step(ExpectedReply::unreachable(S::Completed), done));
                        v
                    }
                    _ => step(ExpectedReply::unreachable(S::Completed), done),
                };
                v.extend(slow.into_iter().flatten());
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
    /// `stop` (`run` false) or `cont` (`run` true) on the destination: before completion it sets
    /// autostart (the guest runs after the incoming migration, or not); after, it pauses or
    /// runs the guest (a guest that ran has diverged from the source).
    fn set_running(&mut self, run: bool) {
        match self.phase {
            DstPhase::Listening
            | DstPhase::Incoming
            | DstPhase::Dying
            | DstPhase::PostcopyPaused => self.autostart = run,
            DstPhase::Completed(_) if run => {
                self.phase = DstPhase::Completed(GuestRun::Running);
                self.ran = true;
            }
            DstPhase::Completed(GuestRun::Running) => {
                self.phase = DstPhase::Completed(GuestRun::Paused)
            }
            DstPhase::Completed(_) | DstPhase::Dead => {}
        }
    }
}
