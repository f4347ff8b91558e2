//! `rate`: dirties a fixed number of pages per second.
//!
//! Walks its range page by page, wrapping, writing a little-endian `u64`
//! lap counter at offset 0 of each page: on lap `l` a page must hold `l`
//! before it is set to `l + 1` (a stale or lost page halts with `E`). `B` is
//! printed after each full lap. Pacing is host-side: writes are spread
//! evenly over time at millisecond granularity, the clock restarts on every
//! resume, and a backlog of more than 100 ms (e.g. after the host was
//! starved) is dropped rather than written in a burst.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{check_page_addr, check_range, Halt, StepCtx, PAGE};
use crate::guest::image::{RateParams, VcpuPlan};

/// Where the rate walk is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RatePhase {
    /// Not started; the next step prints `A`.
    Start,
    /// Walking; `next` is the address of the next page to write.
    Running {
        /// Next page address.
        next: u64,
    },
}

/// Migratable rate state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RateState {
    /// Range start.
    pub start: u64,
    /// Range end (exclusive).
    pub end: u64,
    /// Current lap (the value pages hold before this lap's write).
    pub lap: u64,
    /// Current phase.
    pub phase: RatePhase,
}

/// Host-only pacing clock (not migrated).
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    epoch: Option<Instant>,
    done: u64,
}

impl Pacer {
    /// Returns `None` if a write is due now, else how long to wait.
    fn wait_needed(&mut self, pages_per_sec: u64) -> Option<Duration> {
        let now = Instant::now();
        let epoch = *self.epoch.get_or_insert(now);
        let elapsed_us = now.duration_since(epoch).as_micros();
        let rate = u128::from(pages_per_sec);
        let due = elapsed_us * rate / 1_000_000;
        let done = u128::from(self.done);
        if done < due {
            if due - done > rate / 10 + 1 {
                // Too far behind: drop the backlog instead of bursting.
                self.epoch = Some(now);
                self.done = 0;
            }
            return None;
        }
        let next_due_us = (done + 1) * 1_000_000 / rate;
        let wait_us = next_due_us.saturating_sub(elapsed_us).max(1000);
        Some(Duration::from_micros(
            u64::try_from(wait_us).unwrap_or(u64::MAX),
        ))
    }

    fn wrote(&mut self) {
        self.done += 1;
    }
}

impl RateState {
    pub(super) fn new(plan: &VcpuPlan) -> RateState {
        RateState {
            start: plan.start,
            end: plan.end,
            lap: 0,
            phase: RatePhase::Start,
        }
    }

    pub(super) fn validate(&self, plan: &VcpuPlan) -> Result<(), String> {
        check_range(plan, self.start, self.end)?;
        match self.phase {
            RatePhase::Running { next } => {
                check_page_addr("rate position", next, self.start, self.end)
            }
            RatePhase::Start => Ok(()),
        }
    }

    pub(super) fn step(
        &mut self,
        params: &RateParams,
        ctx: &StepCtx<'_>,
        pacer: &mut Pacer,
    ) -> Result<(), Halt> {
        match self.phase {
            RatePhase::Start => {
                ctx.progress(b'A');
                self.phase = RatePhase::Running { next: self.start };
            }
            RatePhase::Running { next } => {
                if let Some(wait) = pacer.wait_needed(params.pages_per_sec) {
                    ctx.sleeper.sleep(wait);
                    return Ok(());
                }
                let found = u64::from_le(ctx.ram.read_u64(next)?);
                if found != self.lap {
                    return Err(Halt(format!(
                        "rate page {next:#x} holds {found}, expected lap {}",
                        self.lap
                    )));
                }
                ctx.ram.write_u64(next, self.lap.wrapping_add(1).to_le())?;
                pacer.wrote();
                let next = next + PAGE;
                self.phase = if next >= self.end {
                    self.lap = self.lap.wrapping_add(1);
                    ctx.progress(b'B');
                    RatePhase::Running { next: self.start }
                } else {
                    RatePhase::Running { next }
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{StepCtx, Workload};
    use super::*;
    use crate::guest::image::WorkloadSpec;
    use crate::guest::memory::GuestRam;
    use crate::guest::serial::{Serial, SerialConfig};
    use std::cell::Cell;

    /// A sleeper that really sleeps (bounded) and records the total time.
    #[derive(Default)]
    struct RealSleeper(Cell<Duration>);

    impl super::super::Sleeper for RealSleeper {
        fn sleep(&self, d: Duration) -> bool {
            let d = d.min(Duration::from_millis(20));
            std::thread::sleep(d);
            self.0.set(self.0.get() + d);
            true
        }
        fn idle(&self) {}
    }

    #[test]
    fn paces_and_wraps_laps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let serial = Serial::open(&SerialConfig::File(path.clone())).unwrap();
        let ram = GuestRam::new(8 * PAGE).unwrap();
        let plan = VcpuPlan {
            spec: WorkloadSpec::Rate(RateParams {
                pages_per_sec: 2000,
            }),
            start: 4 * PAGE,
            end: 8 * PAGE,
        };
        let mut w = Workload::new(plan, true);
        let sleeper = RealSleeper::default();
        let ctx = StepCtx {
            ram: &ram,
            serial: &serial,
            console: true,
            sleeper: &sleeper,
        };
        let begin = Instant::now();
        // 200 pages at 2000/s take about 100 ms
        while ram.dirty().count() < 4 || lap(&w) < 50 {
            w.step(&ctx);
        }
        let took = begin.elapsed();
        assert!(took >= Duration::from_millis(90), "too fast: {took:?}");
        assert!(took < Duration::from_secs(5), "too slow: {took:?}");
        assert!(sleeper.0.get() > Duration::ZERO);
        for p in 4..8 {
            assert_eq!(ram.read_u64(p * PAGE).unwrap(), 50u64.to_le());
        }
        assert_eq!(ram.read_u64(0).unwrap(), 0);
        let out = std::fs::read(&path).unwrap();
        assert_eq!(out.len(), 51);
        assert_eq!(out[0], b'A');
    }

    fn lap(w: &Workload) -> u64 {
        match &w.state().workload {
            super::super::WorkloadState::Rate(s) => s.lap,
            _ => unreachable!("rate workload"),
        }
    }

    #[test]
    fn pacer_drops_large_backlog() {
        let mut p = Pacer {
            epoch: Some(Instant::now() - Duration::from_secs(10)),
            done: 0,
        };
        assert_eq!(p.wait_needed(100), None);
        // backlog dropped: clock restarted, next write not yet due
        assert!(p.wait_needed(100).is_some());
    }
}
