//! `idle`: no guest writes. The console vCPU prints `A` once, then the
//! vCPU waits until it is paused or shut down.

use serde::{Deserialize, Serialize};

use super::StepCtx;

/// Where the idle workload is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IdlePhase {
    /// Not started; the next step prints `A`.
    #[default]
    Start,
    /// Idling.
    Idle,
}

/// Migratable idle state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct IdleState {
    /// Current phase.
    pub phase: IdlePhase,
}

impl IdleState {
    pub(super) fn step(&mut self, ctx: &StepCtx<'_>) {
        match self.phase {
            IdlePhase::Start => {
                ctx.progress(b'A');
                self.phase = IdlePhase::Idle;
            }
            IdlePhase::Idle => ctx.sleeper.idle(),
        }
    }
}
