//! Guest workloads: resumable state machines that write guest RAM.
//!
//! A workload advances in small [`Workload::step`]s; each step performs at
//! most one guest write (one page, or one 64-byte record) or one sleep, and
//! updates the serializable state in the same step. vCPUs only stop between
//! steps, so a saved [`VcpuState`] always describes RAM exactly and the
//! destination resumes where the source stopped.
//!
//! Serial output: the vCPU running the image's main workload (the *console*
//! vCPU) prints `A`/`B`; every vCPU prints `E` when its self-check fails,
//! after which its workload halts.

mod hotset;
mod idle;
mod random;
mod rate;
mod sweep;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::image::{VcpuPlan, WorkloadSpec};
use super::memory::{GuestRam, GuestRamError, PAGE_SIZE};
use super::serial::Serial;

pub use hotset::{HotsetPhase, HotsetState};
pub use idle::{IdlePhase, IdleState};
pub use random::{RandomPhase, RandomState, Record, RECORD_MAGIC, RECORD_SIZE};
pub use rate::{RatePhase, RateState};
pub use sweep::{SweepPhase, SweepState};

const PAGE: u64 = PAGE_SIZE as u64;

/// How workloads wait: interruptibly, so a pause is honoured promptly.
pub trait Sleeper {
    /// Sleeps for `duration` or until the vCPU must stop; returns `true` if
    /// the full duration elapsed.
    fn sleep(&self, duration: Duration) -> bool;
    /// Waits until the vCPU must stop (used by idle and halted workloads).
    fn idle(&self);
}

/// Everything a step may touch.
pub struct StepCtx<'a> {
    /// Guest RAM; all writes go through its accessors.
    pub ram: &'a GuestRam,
    /// Serial port.
    pub serial: &'a Serial,
    /// Whether this vCPU prints progress (`A`, `B`).
    pub console: bool,
    /// Interruptible waiting.
    pub sleeper: &'a dyn Sleeper,
}

impl StepCtx<'_> {
    /// Prints a progress byte if this is the console vCPU.
    fn progress(&self, byte: u8) {
        if self.console {
            self.serial.write(&[byte]);
        }
    }
}

/// Why a workload halted (its self-check failed).
#[derive(Debug)]
pub(crate) struct Halt(pub String);

impl From<GuestRamError> for Halt {
    fn from(e: GuestRamError) -> Halt {
        Halt(format!("guest RAM access failed: {e}"))
    }
}

/// Progress of one workload, by kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WorkloadState {
    /// See [`SweepState`].
    Sweep(SweepState),
    /// See [`HotsetState`].
    Hotset(HotsetState),
    /// See [`RateState`].
    Rate(RateState),
    /// See [`RandomState`].
    Random(RandomState),
    /// See [`IdleState`].
    Idle(IdleState),
}

impl WorkloadState {
    /// The `kind` string, as in guest images.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkloadState::Sweep(_) => "sweep",
            WorkloadState::Hotset(_) => "hotset",
            WorkloadState::Rate(_) => "rate",
            WorkloadState::Random(_) => "random",
            WorkloadState::Idle(_) => "idle",
        }
    }
}

/// Migrated state of one vCPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// Workload progress.
    pub workload: WorkloadState,
    /// Set when the workload's self-check failed; it no longer runs.
    pub halted: Option<String>,
}

/// A workload bound to its plan, plus host-only pacing state.
#[derive(Debug)]
pub struct Workload {
    plan: VcpuPlan,
    console: bool,
    state: VcpuState,
    pacer: rate::Pacer,
}

impl Workload {
    /// A workload at its initial state. `console` selects whether it prints
    /// progress bytes.
    pub fn new(plan: VcpuPlan, console: bool) -> Workload {
        let workload = match plan.spec {
            WorkloadSpec::Sweep(_) => WorkloadState::Sweep(SweepState::new(&plan)),
            WorkloadSpec::Hotset(_) => WorkloadState::Hotset(HotsetState::new(&plan)),
            WorkloadSpec::Rate(_) => WorkloadState::Rate(RateState::new(&plan)),
            WorkloadSpec::Random(p) => WorkloadState::Random(RandomState::new(&plan, p.seed)),
            WorkloadSpec::Idle => WorkloadState::Idle(IdleState::default()),
        };
        Workload {
            plan,
            console,
            state: VcpuState {
                workload,
                halted: None,
            },
            pacer: rate::Pacer::default(),
        }
    }

    /// The plan (kind, parameters, range).
    pub fn plan(&self) -> &VcpuPlan {
        &self.plan
    }

    /// Whether this vCPU prints progress bytes.
    pub fn is_console(&self) -> bool {
        self.console
    }

    /// The current migratable state.
    pub fn state(&self) -> &VcpuState {
        &self.state
    }

    /// Whether the workload halted after a failed self-check.
    pub fn halted(&self) -> Option<&str> {
        self.state.halted.as_deref()
    }

    /// Checks that `state` belongs to this workload's plan and that every
    /// position in it is inside the plan's range.
    pub fn validate(&self, state: &VcpuState) -> Result<(), String> {
        if let Some(reason) = &state.halted {
            if reason.len() > 4096 {
                return Err("halt reason longer than 4096 bytes".into());
            }
        }
        match (&self.plan.spec, &state.workload) {
            (WorkloadSpec::Sweep(_), WorkloadState::Sweep(s)) => s.validate(&self.plan),
            (WorkloadSpec::Hotset(p), WorkloadState::Hotset(s)) => s.validate(&self.plan, p),
            (WorkloadSpec::Rate(_), WorkloadState::Rate(s)) => s.validate(&self.plan),
            (WorkloadSpec::Random(p), WorkloadState::Random(s)) => s.validate(&self.plan, p),
            (WorkloadSpec::Idle, WorkloadState::Idle(_)) => Ok(()),
            (spec, got) => Err(format!(
                "workload kind `{}` does not match this guest's `{}`",
                got.kind(),
                spec.kind()
            )),
        }
    }

    /// Replaces the state; call [`validate`](Self::validate) first.
    pub fn set_state(&mut self, state: VcpuState) {
        self.state = state;
        self.pacer = rate::Pacer::default();
    }

    /// Called when the vCPU starts running again: restarts host-side pacing
    /// (time spent paused is not owed to the rate workload).
    pub fn on_resume(&mut self) {
        self.pacer = rate::Pacer::default();
    }

    /// Performs one step: at most one guest write or one sleep.
    pub fn step(&mut self, ctx: &StepCtx<'_>) {
        if self.state.halted.is_some() {
            ctx.sleeper.idle();
            return;
        }
        let result = match (&self.plan.spec, &mut self.state.workload) {
            (WorkloadSpec::Sweep(p), WorkloadState::Sweep(s)) => s.step(p, ctx),
            (WorkloadSpec::Hotset(p), WorkloadState::Hotset(s)) => s.step(p, ctx),
            (WorkloadSpec::Rate(p), WorkloadState::Rate(s)) => s.step(p, ctx, &mut self.pacer),
            (WorkloadSpec::Random(p), WorkloadState::Random(s)) => s.step(p, ctx),
            (WorkloadSpec::Idle, WorkloadState::Idle(s)) => {
                s.step(ctx);
                Ok(())
            }
            // validate() keeps kinds matched; treat a mismatch as a halt.
            (spec, got) => Err(Halt(format!(
                "state kind `{}` does not match workload `{}`",
                got.kind(),
                spec.kind()
            ))),
        };
        if let Err(Halt(reason)) = result {
            ctx.serial.write(b"E");
            self.state.halted = Some(reason);
        }
    }
}

/// Checks that `[start, end)` equals the plan's range.
fn check_range(plan: &VcpuPlan, start: u64, end: u64) -> Result<(), String> {
    if (start, end) == (plan.start, plan.end) {
        Ok(())
    } else {
        Err(format!(
            "range [{start:#x}, {end:#x}) does not match this guest's [{:#x}, {:#x})",
            plan.start, plan.end
        ))
    }
}

/// Checks that `addr` is a page-aligned address inside `[start, end)`.
fn check_page_addr(what: &str, addr: u64, start: u64, end: u64) -> Result<(), String> {
    if addr >= start && addr < end && addr.is_multiple_of(PAGE) {
        Ok(())
    } else {
        Err(format!(
            "{what} {addr:#x} is not a page inside [{start:#x}, {end:#x})"
        ))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for stepping workloads without vCPU threads.
    use super::*;
    use std::cell::Cell;

    /// A sleeper that returns at once and counts calls.
    #[derive(Default)]
    pub struct CountingSleeper {
        pub sleeps: Cell<u64>,
        pub idles: Cell<u64>,
    }

    impl Sleeper for CountingSleeper {
        fn sleep(&self, _: Duration) -> bool {
            self.sleeps.set(self.sleeps.get() + 1);
            true
        }
        fn idle(&self) {
            self.idles.set(self.idles.get() + 1);
        }
    }

    /// Runs `steps` steps.
    pub fn run(
        w: &mut Workload,
        ram: &GuestRam,
        serial: &Serial,
        sleeper: &dyn Sleeper,
        steps: u64,
    ) {
        let ctx = StepCtx {
            ram,
            serial,
            console: w.is_console(),
            sleeper,
        };
        for _ in 0..steps {
            w.step(&ctx);
        }
    }
}
