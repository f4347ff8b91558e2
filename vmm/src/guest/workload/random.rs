//! `random`: seeded self-checking records in random slots.
//!
//! The range is divided into 64-byte slots. Record number `n` (0-based) is
//! derived from ChaCha8 seeded with `seed` on stream `n`, which picks a slot
//! and a payload, so the whole sequence is a pure function of the migrated
//! state. Before overwriting a slot the guest verifies what is there: all
//! zero (never written) or a valid [`Record`] for that slot with a sequence
//! number not above the records written so far. A bad record prints `E` and
//! halts the workload, so a migration that corrupts memory is caught by the
//! guest itself. `A` is printed at start and `B` after every `burst`
//! records, followed by a `burst-delay` µs sleep.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::{check_range, Halt, StepCtx};
use crate::guest::image::{RandomParams, VcpuPlan};

/// Size of one record / slot in bytes.
pub const RECORD_SIZE: usize = 64;
/// Magic at offset 0 of every record (`"MIGTREC1"`, little-endian u64).
pub const RECORD_MAGIC: u64 = u64::from_le_bytes(*b"MIGTREC1");

/// A decoded record. Layout (little-endian): magic `u64`, slot `u64`,
/// sequence `u64` (1-based), 32 payload bytes, XXH3-64 of bytes 0..56.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Slot index the record was written to.
    pub slot: u64,
    /// Sequence number (record `n` carries `n + 1`).
    pub seq: u64,
    /// Random payload.
    pub payload: [u8; 32],
}

impl Record {
    /// Encodes the record with its checksum.
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0..8].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[8..16].copy_from_slice(&self.slot.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..56].copy_from_slice(&self.payload);
        let sum = xxh3_64(&b[..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decodes and verifies a record; `Ok(None)` for an all-zero slot.
    pub fn decode(b: &[u8; RECORD_SIZE]) -> Result<Option<Record>, String> {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        if word(0) != RECORD_MAGIC {
            return Err(format!("bad magic {:#018x}", word(0)));
        }
        if word(56) != xxh3_64(&b[..56]) {
            return Err("bad checksum".into());
        }
        let mut payload = [0u8; 32];
        payload.copy_from_slice(&b[24..56]);
        Ok(Some(Record {
            slot: word(8),
            seq: word(16),
            payload,
        }))
    }
}

/// Where the random workload is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RandomPhase {
    /// Not started; the next step prints `A`.
    Start,
    /// Writing records; `in_burst` written in the current burst.
    Writing {
        /// Records written in this burst.
        in_burst: u64,
    },
    /// Sleeping after a burst.
    Resting,
}

/// Migratable random-workload state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RandomState {
    /// Range start.
    pub start: u64,
    /// Range end (exclusive).
    pub end: u64,
    /// Seed (must match the image).
    pub seed: u64,
    /// Records written so far.
    pub written: u64,
    /// Current phase.
    pub phase: RandomPhase,
}

/// The slot and payload of record number `n`.
pub fn record_for(seed: u64, n: u64, slots: u64) -> (u64, [u8; 32]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(n);
    let slot = rng.gen_range(0..slots);
    let mut payload = [0u8; 32];
    rng.fill(&mut payload);
    (slot, payload)
}

impl RandomState {
    pub(super) fn new(plan: &VcpuPlan, seed: u64) -> RandomState {
        RandomState {
            start: plan.start,
            end: plan.end,
            seed,
            written: 0,
            phase: RandomPhase::Start,
        }
    }

    fn slots(&self) -> u64 {
        self.end.saturating_sub(self.start) / RECORD_SIZE as u64
    }

    pub(super) fn validate(&self, plan: &VcpuPlan, params: &RandomParams) -> Result<(), String> {
        check_range(plan, self.start, self.end)?;
        if self.seed != params.seed {
            return Err(format!(
                "seed {} does not match this guest's {}",
                self.seed, params.seed
            ));
        }
        match self.phase {
            RandomPhase::Writing { in_burst } if in_burst >= params.burst => Err(format!(
                "burst position {in_burst} is not below the burst of {}",
                params.burst
            )),
            _ => Ok(()),
        }
    }

    pub(super) fn step(&mut self, params: &RandomParams, ctx: &StepCtx<'_>) -> Result<(), Halt> {
        match self.phase {
            RandomPhase::Start => {
                ctx.progress(b'A');
                self.phase = RandomPhase::Writing { in_burst: 0 };
            }
            RandomPhase::Writing { in_burst } => {
                let slots = self.slots();
                if slots == 0 {
                    return Err(Halt("range holds no record slot".into()));
                }
                let (slot, payload) = record_for(self.seed, self.written, slots);
                let addr = self.start + slot * RECORD_SIZE as u64;
                let mut current = [0u8; RECORD_SIZE];
                ctx.ram.read_bytes(addr, &mut current)?;
                match Record::decode(&current) {
                    Ok(None) => {}
                    Ok(Some(r)) if r.slot == slot && r.seq >= 1 && r.seq <= self.written => {}
                    Ok(Some(r)) => {
                        return Err(Halt(format!(
                            "record at {addr:#x} (slot {slot}) claims slot {} seq {} with {} records written",
                            r.slot, r.seq, self.written
                        )))
                    }
                    Err(e) => {
                        return Err(Halt(format!("record at {addr:#x} (slot {slot}): {e}")))
                    }
                }
                self.written = self.written.wrapping_add(1);
                let record = Record {
                    slot,
                    seq: self.written,
                    payload,
                };
                ctx.ram.write_bytes(addr, &record.encode())?;
                let in_burst = in_burst + 1;
                self.phase = if in_burst >= params.burst {
                    ctx.progress(b'B');
                    RandomPhase::Resting
                } else {
                    RandomPhase::Writing { in_burst }
                };
            }
            RandomPhase::Resting => {
                if params.burst_delay_us == 0
                    || ctx
                        .sleeper
                        .sleep(Duration::from_micros(params.burst_delay_us))
                {
                    self.phase = RandomPhase::Writing { in_burst: 0 };
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
    use super::*;
    use crate::guest::image::WorkloadSpec;
    use crate::guest::memory::GuestRam;
    use crate::guest::serial::{Serial, SerialConfig};

    const PAGE: u64 = 4096;

    fn plan() -> VcpuPlan {
        VcpuPlan {
            spec: WorkloadSpec::Random(RandomParams {
                seed: 42,
                burst: 100,
                burst_delay_us: 0,
            }),
            start: 2 * PAGE,
            end: 4 * PAGE,
        }
    }

    #[test]
    fn record_round_trip_and_corruption() {
        let r = Record {
            slot: 7,
            seq: 3,
            payload: [9; 32],
        };
        let mut b = r.encode();
        assert_eq!(Record::decode(&b), Ok(Some(r)));
        assert_eq!(Record::decode(&[0; RECORD_SIZE]), Ok(None));
        b[30] ^= 1;
        assert_eq!(Record::decode(&b), Err("bad checksum".into()));
        b[0] ^= 1;
        assert!(Record::decode(&b).unwrap_err().starts_with("bad magic"));
    }

    #[test]
    fn records_are_deterministic() {
        assert_eq!(record_for(1, 5, 1000), record_for(1, 5, 1000));
        assert_ne!(record_for(1, 5, 1000), record_for(1, 6, 1000));
        assert_ne!(record_for(1, 5, 1000), record_for(2, 5, 1000));
    }

    #[test]
    fn writes_valid_records_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let serial = Serial::open(&SerialConfig::File(path.clone())).unwrap();
        let ram = GuestRam::new(8 * PAGE).unwrap();
        let mut w = Workload::new(plan(), true);
        // A + 3 bursts of (100 records + rest) + 10 records
        run(
            &mut w,
            &ram,
            &serial,
            &CountingSleeper::default(),
            1 + 3 * 101 + 10,
        );
        assert!(w.halted().is_none(), "{:?}", w.halted());
        assert_eq!(std::fs::read(&path).unwrap(), b"ABBB");
        match &w.state().workload {
            WorkloadState::Random(s) => assert_eq!(s.written, 310),
            other => panic!("{other:?}"),
        }
        // every slot is empty or a valid record for itself
        let mut valid = 0;
        for slot in 0..(2 * PAGE / RECORD_SIZE as u64) {
            let mut b = [0u8; RECORD_SIZE];
            ram.read_bytes(2 * PAGE + slot * 64, &mut b).unwrap();
            if let Some(r) = Record::decode(&b).unwrap() {
                assert_eq!(r.slot, slot);
                valid += 1;
            }
        }
        assert!(valid > 50, "{valid}");
        // nothing outside the range
        assert!(ram.page_is_zero(1) && ram.page_is_zero(4));
    }

    #[test]
    fn corrupted_slot_halts_with_e() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let serial = Serial::open(&SerialConfig::File(path.clone())).unwrap();
        let ram = GuestRam::new(8 * PAGE).unwrap();
        // garbage in every slot: the first record written finds it
        for a in (2 * PAGE..4 * PAGE).step_by(64) {
            ram.write_u8(a + 20, 1).unwrap();
        }
        let mut w = Workload::new(plan(), false);
        let sleeper = CountingSleeper::default();
        run(&mut w, &ram, &serial, &sleeper, 5);
        assert_eq!(std::fs::read(&path).unwrap(), b"E");
        assert!(
            w.halted().unwrap().contains("bad magic"),
            "{:?}",
            w.halted()
        );
        assert_eq!(sleeper.idles.get(), 3);
    }
}
