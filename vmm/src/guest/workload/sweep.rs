//! `sweep`: QEMU's A-B migration test guest.
//!
//! Zeroes the first byte of every page of its range (with `fill`, writes the
//! whole page: that byte 0, every other byte non-zero), prints `A`, then
//! forever increments (wrapping) the first byte of each page in address
//! order, printing `B` after each pass and sleeping `pass-delay` µs. Stopped
//! between any two steps the range satisfies
//! [`check_ab_invariant`](crate::guest::abcheck::check_ab_invariant).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_page_addr, check_range, Halt, StepCtx, PAGE};
use crate::guest::image::{SweepParams, VcpuPlan};

/// What `fill` writes into each page before the first pass: the first
/// byte 0 (the A-B counter), then non-zero bytes `i % 251 + 1`.
const FILL_PAGE: [u8; PAGE as usize] = {
    let mut p = [0u8; PAGE as usize];
    let mut i = 1;
    while i < PAGE as usize {
        p[i] = (i % 251 + 1) as u8;
        i += 1;
    }
    p
};

/// Where the sweep is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SweepPhase {
    /// Zeroing; `next` is the address of the next page to zero.
    Zeroing {
        /// Next page address.
        next: u64,
    },
    /// In a pass; `next` is the address of the next page to increment.
    Sweeping {
        /// Next page address.
        next: u64,
    },
    /// Sleeping between passes (restarted in full after a pause).
    Resting,
}

/// Migratable sweep state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SweepState {
    /// Range start.
    pub start: u64,
    /// Range end (exclusive).
    pub end: u64,
    /// Completed passes.
    pub passes: u64,
    /// Current phase.
    pub phase: SweepPhase,
}

impl SweepState {
    pub(super) fn new(plan: &VcpuPlan) -> SweepState {
        SweepState {
            start: plan.start,
            end: plan.end,
            passes: 0,
            phase: SweepPhase::Zeroing { next: plan.start },
        }
    }

    pub(super) fn validate(&self, plan: &VcpuPlan) -> Result<(), String> {
        check_range(plan, self.start, self.end)?;
        match self.phase {
            SweepPhase::Zeroing { next } | SweepPhase::Sweeping { next } => {
                check_page_addr("sweep position", next, self.start, self.end)
            }
            SweepPhase::Resting => Ok(()),
        }
    }

    pub(super) fn step(&mut self, params: &SweepParams, ctx: &StepCtx<'_>) -> Result<(), Halt> {
        match self.phase {
            SweepPhase::Zeroing { next } => {
                if params.fill {
                    ctx.ram.write_bytes(next, &FILL_PAGE)?;
                } else {
                    ctx.ram.write_u8(next, 0)?;
                }
                let next = next + PAGE;
                self.phase = if next >= self.end {
                    ctx.progress(b'A');
                    SweepPhase::Sweeping { next: self.start }
                } else {
                    SweepPhase::Zeroing { next }
                };
            }
            SweepPhase::Sweeping { next } => {
                ctx.ram.fetch_add_u8(next, 1)?;
                let next = next + PAGE;
                self.phase = if next >= self.end {
                    ctx.progress(b'B');
                    self.passes = self.passes.wrapping_add(1);
                    SweepPhase::Resting
                } else {
                    SweepPhase::Sweeping { next }
                };
            }
            SweepPhase::Resting => {
                if params.pass_delay_us == 0
                    || ctx
                        .sleeper
                        .sleep(Duration::from_micros(params.pass_delay_us))
                {
                    self.phase = SweepPhase::Sweeping { next: self.start };
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{run, CountingSleeper};
    use super::super::{Workload, WorkloadState};
    use crate::guest::abcheck::check_ab_invariant;
    use crate::guest::image::{SweepParams, VcpuPlan, WorkloadSpec};
    use crate::guest::memory::GuestRam;
    use crate::guest::serial::{Serial, SerialConfig};

    const PAGE: u64 = 4096;

    fn first_bytes(ram: &GuestRam, start: u64, end: u64) -> Vec<u8> {
        (start..end)
            .step_by(PAGE as usize)
            .map(|a| ram.read_u8(a).unwrap())
            .collect()
    }

    /// A sweep of `[start, end)` resting 5 µs between passes.
    fn plan(start: u64, end: u64, fill: bool) -> VcpuPlan {
        VcpuPlan {
            spec: WorkloadSpec::Sweep(SweepParams {
                pass_delay_us: 5,
                fill,
            }),
            start,
            end,
        }
    }

    #[test]
    fn zeroes_prints_a_then_passes_with_b() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let serial = Serial::open(&SerialConfig::File(path.clone())).unwrap();
        let ram = GuestRam::new(16 * PAGE).unwrap();
        // garbage in the range is zeroed first
        ram.write_u8(3 * PAGE, 9).unwrap();
        let mut w = Workload::new(plan(2 * PAGE, 6 * PAGE, false), true);
        let sleeper = CountingSleeper::default();
        run(&mut w, &ram, &serial, &sleeper, 4);
        assert_eq!(std::fs::read(&path).unwrap(), b"A");
        assert_eq!(first_bytes(&ram, 2 * PAGE, 6 * PAGE), vec![0; 4]);
        run(&mut w, &ram, &serial, &sleeper, 2);
        assert_eq!(first_bytes(&ram, 2 * PAGE, 6 * PAGE), vec![1, 1, 0, 0]);
        check_ab_invariant(first_bytes(&ram, 2 * PAGE, 6 * PAGE)).unwrap();
        run(&mut w, &ram, &serial, &sleeper, 2);
        assert_eq!(std::fs::read(&path).unwrap(), b"AB");
        // resting step, then 256 more passes wrap the byte around
        run(&mut w, &ram, &serial, &sleeper, 1 + 5 * 256);
        assert_eq!(first_bytes(&ram, 2 * PAGE, 6 * PAGE), vec![1; 4]);
        assert_eq!(sleeper.sleeps.get(), 257);
        match &w.state().workload {
            WorkloadState::Sweep(s) => assert_eq!(s.passes, 257),
            other => panic!("unexpected state {other:?}"),
        }
        // nothing outside the range was touched
        assert_eq!(ram.read_u8(PAGE).unwrap(), 0);
        assert_eq!(ram.read_u8(6 * PAGE).unwrap(), 0);
        assert_eq!(ram.read_u8(2 * PAGE + 1).unwrap(), 0);
    }

    #[test]
    fn fill_makes_every_byte_but_the_counter_non_zero() {
        let dir = tempfile::tempdir().unwrap();
        let serial = Serial::open(&SerialConfig::File(dir.path().join("s"))).unwrap();
        let ram = GuestRam::new(8 * PAGE).unwrap();
        let mut w = Workload::new(plan(2 * PAGE, 4 * PAGE, true), true);
        run(&mut w, &ram, &serial, &CountingSleeper::default(), 3);
        for page in [2, 3] {
            let mut buf = [0u8; PAGE as usize];
            ram.read_page(page, &mut buf).unwrap();
            assert_eq!(buf[0], if page == 2 { 1 } else { 0 });
            assert!(buf[1..].iter().all(|b| *b != 0), "page {page}");
        }
        assert!(ram.page_is_zero(4));
    }
}
