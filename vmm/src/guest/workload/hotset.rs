//! `hotset`: a small set of pages rewritten continuously.
//!
//! The hot pages are spread evenly over the range (`pages` of them, at most
//! one per page of the range). Each holds a little-endian `u64` round
//! counter at offset 0: in round `r` every hot page is checked to hold `r`
//! and set to `r + 1`, so a page that migration lost or left stale is
//! caught by the guest (`E`, halt). `B` is printed every `report-every`
//! rounds; each round ends with a `round-delay` µs sleep.
//!
//! With `scribble = N` (> 0) the rest of each hot page (bytes 8..4096) may
//! change every `N` rounds between zero and a pattern in every other byte
//! (too many changed runs for an XBZRLE delta: the page is sent whole); a
//! hash of the page index and `round / N` decides, so the pages change
//! independently of each other and of when migration sends them. The phase
//! is a function of the round, so it needs no migrated state; when a page
//! changes phase the guest first checks that the rest of the page still
//! holds the previous phase (`E`, halt otherwise).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_range, Halt, StepCtx, PAGE};
use crate::guest::image::{HotsetParams, VcpuPlan};

/// Where the hotset round is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HotsetPhase {
    /// Not started; the next step prints `A`.
    Start,
    /// Writing hot page number `next` of the current round.
    Writing {
        /// Index of the next hot page (0-based).
        next: u64,
    },
    /// Sleeping after a round.
    Resting,
}

/// Migratable hotset state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HotsetState {
    /// Range start.
    pub start: u64,
    /// Range end (exclusive).
    pub end: u64,
    /// Current round (the value every hot page holds before this round's write).
    pub round: u64,
    /// Current phase.
    pub phase: HotsetPhase,
}

/// Number of hot pages and distance between them (in pages).
fn geometry(start: u64, end: u64, params: &HotsetParams) -> (u64, u64) {
    let range_pages = end.saturating_sub(start) / PAGE;
    let count = params.pages.min(range_pages).max(1);
    (count, (range_pages / count).max(1))
}

impl HotsetState {
    pub(super) fn new(plan: &VcpuPlan) -> HotsetState {
        HotsetState {
            start: plan.start,
            end: plan.end,
            round: 0,
            phase: HotsetPhase::Start,
        }
    }

    pub(super) fn validate(&self, plan: &VcpuPlan, params: &HotsetParams) -> Result<(), String> {
        check_range(plan, self.start, self.end)?;
        let (count, _) = geometry(self.start, self.end, params);
        match self.phase {
            HotsetPhase::Writing { next } if next >= count => Err(format!(
                "hot page index {next} is not below the {count} hot pages"
            )),
            _ => Ok(()),
        }
    }

    pub(super) fn step(&mut self, params: &HotsetParams, ctx: &StepCtx<'_>) -> Result<(), Halt> {
        let (count, stride) = geometry(self.start, self.end, params);
        match self.phase {
            HotsetPhase::Start => {
                ctx.progress(b'A');
                self.phase = HotsetPhase::Writing { next: 0 };
            }
            HotsetPhase::Writing { next } => {
                let addr = self.start + next * stride * PAGE;
                let found = u64::from_le(ctx.ram.read_u64(addr)?);
                if found != self.round {
                    return Err(Halt(format!(
                        "hotset page {addr:#x} holds {found}, expected round {}",
                        self.round
                    )));
                }
                ctx.ram
                    .write_u64(addr, self.round.wrapping_add(1).to_le())?;
                scribble(params, next, self.round, addr, ctx)?;
                let next = next + 1;
                if next < count {
                    self.phase = HotsetPhase::Writing { next };
                } else {
                    self.round = self.round.wrapping_add(1);
                    if self.round.is_multiple_of(params.report_every) {
                        ctx.progress(b'B');
                    }
                    self.phase = HotsetPhase::Resting;
                }
            }
            HotsetPhase::Resting => {
                if params.round_delay_us == 0
                    || ctx
                        .sleeper
                        .sleep(Duration::from_micros(params.round_delay_us))
                {
                    self.phase = HotsetPhase::Writing { next: 0 };
                }
            }
        }
        Ok(())
    }
}

/// Whether hot page `index` holds the scribble pattern after round `round`: a hash of the
/// page and the phase number, so that the pages change phase independently of each other.
fn scribbled(params: &HotsetParams, index: u64, round: u64) -> bool {
    let n = params.scribble;
    if n == 0 {
        return false;
    }
    // splitmix64 of (index, phase)
    let mut z = (round / n)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(index.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) & 1 == 1
}

/// Byte `at` (8..4096) of a scribbled hot page.
fn pattern_byte(at: usize) -> u8 {
    if at.is_multiple_of(2) {
        at as u8 | 1
    } else {
        0
    }
}

/// Round `round` of hot page `index` at `addr`: when its scribble phase changes, checks the
/// rest of the page holds the previous phase and writes the new one.
fn scribble(
    params: &HotsetParams,
    index: u64,
    round: u64,
    addr: u64,
    ctx: &StepCtx<'_>,
) -> Result<(), Halt> {
    let now = scribbled(params, index, round);
    let before = round > 0 && scribbled(params, index, round - 1);
    if now == before {
        return Ok(());
    }
    let body = |on: bool| -> Vec<u8> {
        (8..PAGE as usize)
            .map(|at| if on { pattern_byte(at) } else { 0 })
            .collect()
    };
    let mut found = vec![0u8; PAGE as usize - 8];
    ctx.ram.read_bytes(addr + 8, &mut found)?;
    if found != body(before) {
        return Err(Halt(format!(
            "hotset page {addr:#x} does not hold its {} body before round {round}",
            if before { "scribbled" } else { "zero" }
        )));
    }
    ctx.ram.write_bytes(addr + 8, &body(now))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{run, CountingSleeper};
    use super::super::Workload;
    use crate::guest::dirty::iter_pages;
    use crate::guest::image::{HotsetParams, VcpuPlan, WorkloadSpec};
    use crate::guest::memory::GuestRam;
    use crate::guest::serial::{Serial, SerialConfig};

    const PAGE: u64 = 4096;

    fn plan(pages: u64) -> VcpuPlan {
        VcpuPlan {
            spec: WorkloadSpec::Hotset(HotsetParams {
                pages,
                round_delay_us: 0,
                report_every: 2,
                scribble: 0,
            }),
            start: 8 * PAGE,
            end: 16 * PAGE,
        }
    }

    #[test]
    fn writes_only_the_hot_pages_with_round_counters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let serial = Serial::open(&SerialConfig::File(path.clone())).unwrap();
        let ram = GuestRam::new(16 * PAGE).unwrap();
        let mut w = Workload::new(plan(4), true);
        let sleeper = CountingSleeper::default();
        // start + 3 rounds of (4 writes + rest)
        run(&mut w, &ram, &serial, &sleeper, 1 + 3 * 5);
        let dirty: Vec<u64> = iter_pages(&ram.dirty().take()).collect();
        assert_eq!(dirty, vec![8, 10, 12, 14]);
        for p in [8, 10, 12, 14] {
            assert_eq!(ram.read_u64(p * PAGE).unwrap(), 3u64.to_le());
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"AB");
        assert!(w.halted().is_none());
    }

    #[test]
    fn scribble_switches_each_body_and_checks_it() {
        let params = HotsetParams {
            pages: 4,
            round_delay_us: 0,
            report_every: 1000,
            scribble: 2,
        };
        let plan = VcpuPlan {
            spec: WorkloadSpec::Hotset(params),
            start: 8 * PAGE,
            end: 16 * PAGE,
        };
        let ram = GuestRam::new(16 * PAGE).unwrap();
        let serial = Serial::open(&SerialConfig::None).unwrap();
        let mut w = Workload::new(plan, false);
        let sleeper = CountingSleeper::default();
        let body = |p: u64| {
            let mut b = vec![0u8; 4088];
            ram.read_bytes(p * PAGE + 8, &mut b).unwrap();
            b
        };
        let scribbled = |b: &[u8]| b.iter().enumerate().all(|(i, v)| (*v != 0) == (i % 2 == 0));
        let mut seen = [[false; 2]; 4];
        for round in 0..16u64 {
            // start (first round only) + 4 writes + rest
            run(
                &mut w,
                &ram,
                &serial,
                &sleeper,
                if round == 0 { 6 } else { 5 },
            );
            let states: Vec<bool> = (0..4)
                .map(|i| super::scribbled(&params, i, round))
                .collect();
            for (i, p) in [8u64, 10, 12, 14].into_iter().enumerate() {
                let b = body(p);
                let on = states[i];
                assert!(
                    if on {
                        scribbled(&b)
                    } else {
                        b.iter().all(|v| *v == 0)
                    },
                    "round {round} page {p}: expected scribbled = {on}"
                );
                seen[i][on as usize] = true;
            }
        }
        assert!(seen.iter().all(|s| s[0] && s[1]), "{seen:?}");
        assert!(w.halted().is_none());
        // A body that is not the previous phase halts the guest when the phase changes.
        ram.write_u8(8 * PAGE + 100, 7).unwrap();
        run(&mut w, &ram, &serial, &sleeper, 5 * 4);
        let halt = w.halted().expect("a wrong body must halt the guest");
        assert!(halt.contains("body before round"), "{halt}");
    }

    #[test]
    fn more_pages_than_range_is_clamped() {
        let ram = GuestRam::new(16 * PAGE).unwrap();
        let serial = Serial::open(&SerialConfig::None).unwrap();
        let mut w = Workload::new(plan(100), false);
        run(&mut w, &ram, &serial, &CountingSleeper::default(), 1 + 8);
        assert_eq!(ram.dirty().count(), 8);
    }

    #[test]
    fn stale_counter_halts_with_e() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let serial = Serial::open(&SerialConfig::File(path.clone())).unwrap();
        let ram = GuestRam::new(16 * PAGE).unwrap();
        let mut w = Workload::new(plan(4), false);
        let sleeper = CountingSleeper::default();
        run(&mut w, &ram, &serial, &sleeper, 1 + 5);
        // a "stale" page: the value from before the last round
        ram.write_u64(10 * PAGE, 0).unwrap();
        run(&mut w, &ram, &serial, &sleeper, 5);
        assert_eq!(std::fs::read(&path).unwrap(), b"E");
        assert_eq!(
            w.halted(),
            Some("hotset page 0xa000 holds 0, expected round 1")
        );
        assert!(sleeper.idles.get() >= 1);
    }
}
