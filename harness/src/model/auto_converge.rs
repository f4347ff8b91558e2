//! auto-converge in the model: the four throttle parameters with QEMU 7.2's
//! rules for setting them (range checks on the whole result, with its
//! texts), and the invariant the source's `cpu-throttle-percentage` obeys:
//! shown only while a migration with the `auto-converge` capability runs,
//! within 1..=99, never once the migration has ended (QEMU lifts the
//! throttle when the migration thread finishes). The capability itself
//! follows the rule of every capability: refused while a migration runs.

use serde::{Deserialize, Serialize};

use crate::scenario::Op;

use super::types::Observation;
use super::world::World;

/// The throttle parameters, per side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Throttle {
    /// `cpu-throttle-initial`, default 20, 1..=99.
    pub initial: u8,
    /// `cpu-throttle-increment`, default 10, 1..=99.
    pub increment: u8,
    /// `cpu-throttle-tailslow`, default false.
    pub tailslow: bool,
    /// `max-cpu-throttle`, default 99, `initial..=99`.
    pub max: u8,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle {
            initial: 20,
            increment: 10,
            tailslow: false,
            max: 99,
        }
    }
}

/// QEMU 7.2's texts.
pub const ERR_INITIAL: &str =
    "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99";
/// `cpu-throttle-increment` out of range.
pub const ERR_INCREMENT: &str =
    "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99";
/// `max-cpu-throttle` below `cpu-throttle-initial` or above 99.
pub const ERR_MAX: &str =
    "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99";

impl Throttle {
    /// `migrate-set-parameters` of a `set-throttle` op: the parameters after it, or QEMU's
    /// error (checked on the whole result: initial, increment, then max).
    pub fn set(&self, op: &Op) -> Result<Throttle, &'static str> {
        let Op::SetThrottle {
            cpu_throttle_initial: i,
            cpu_throttle_increment: inc,
            cpu_throttle_tailslow: t,
            max_cpu_throttle: m,
            ..
        } = op
        else {
            return Ok(*self);
        };
        let next = Throttle {
            initial: i.unwrap_or(self.initial),
            increment: inc.unwrap_or(self.increment),
            tailslow: t.unwrap_or(self.tailslow),
            max: m.unwrap_or(self.max),
        };
        if !(1..=99).contains(&next.initial) {
            return Err(ERR_INITIAL);
        }
        if !(1..=99).contains(&next.increment) {
            return Err(ERR_INCREMENT);
        }
        if next.max < next.initial || next.max > 99 {
            return Err(ERR_MAX);
        }
        Ok(next)
    }
}

/// The `cpu-throttle-percentage` invariant over an observation, given the possible worlds
/// (after the op). `Err` names what is wrong.
pub(crate) fn check(worlds: &[World], obs: &Observation) -> Result<(), String> {
    let Some(pct) = obs.source.cpu_throttle.filter(|_| obs.source.alive) else {
        return Ok(());
    };
    if !(1..=99).contains(&pct) {
        return Err(format!("cpu-throttle-percentage {pct} is outside 1..=99"));
    }
    if let Some(s) = obs.source.status.filter(|s| s.is_settled()) {
        return Err(format!(
            "the source still throttles its vCPUs ({pct} %) after the migration ended '{s}'"
        ));
    }
    if !worlds.iter().any(|w| w.src.caps.auto_converge) {
        return Err(format!(
            "the source throttles its vCPUs ({pct} %) without the auto-converge capability"
        ));
    }
    Ok(())
}

/// A `set-throttle` op.
pub fn set_throttle(
    side: crate::scenario::Side,
    initial: Option<u8>,
    increment: Option<u8>,
    max: Option<u8>,
) -> Op {
    Op::SetThrottle {
        side,
        cpu_throttle_initial: initial,
        cpu_throttle_increment: increment,
        cpu_throttle_tailslow: None,
        max_cpu_throttle: max,
    }
}

/// The fuzzer's auto-converge ops with their weights in `model`'s state: the capability
/// (often on before a migration, sometimes during one: refused), the parameters (QEMU's
/// test values and out-of-range ones), a hold before migrating with it on, and
/// `wait-throttled` while a held migration throttles.
pub fn candidates(model: &super::Model) -> Vec<(u32, Op)> {
    use super::world::{DstPhase, SrcPhase};
    use crate::scenario::Side;
    let worlds = model.worlds();
    let idle = worlds
        .iter()
        .all(|w| matches!(w.src.phase, SrcPhase::Idle(_)));
    let listening = worlds.iter().all(|w| w.dst.phase == DstPhase::Listening);
    let throttling = worlds
        .iter()
        .all(|w| w.src_is_held() && w.throttles(model.pair()));
    let off = worlds.iter().all(|w| !w.src.caps.auto_converge);
    let hold = worlds.iter().all(|w| w.src.params.switchover_hold);
    let w = |cond: bool, hi: u32| if cond { hi } else { 1 };
    let mut v = vec![
        (
            w(idle && listening && off, 40),
            Op::SetAutoConverge {
                side: Side::Source,
                state: true,
            },
        ),
        (
            1,
            Op::SetAutoConverge {
                side: Side::Source,
                state: false,
            },
        ),
        (
            w(idle, 3),
            set_throttle(Side::Source, Some(60), Some(50), Some(99)),
        ),
        (1, set_throttle(Side::Source, Some(0), None, None)),
        (1, set_throttle(Side::Source, None, Some(100), None)),
        (1, set_throttle(Side::Source, None, None, Some(10))),
        (1, set_throttle(Side::Destination, Some(40), None, Some(30))),
        (
            1,
            Op::SetThrottle {
                side: Side::Source,
                cpu_throttle_initial: None,
                cpu_throttle_increment: None,
                cpu_throttle_tailslow: Some(true),
                max_cpu_throttle: Some(95),
            },
        ),
        (w(throttling, 40), Op::WaitThrottled {}),
        // Ending a throttled migration: the throttle must go with it.
        (w(throttling, 20), Op::Cancel {}),
        (w(throttling, 20), Op::Release {}),
        // A held migration is where a throttle can be waited for.
        (w(idle && listening && !off && !hold, 40), Op::Hold {}),
        (
            w(idle && listening && !off && hold, 60),
            Op::Migrate { transport: None },
        ),
    ];
    if listening {
        v.push((
            1,
            Op::SetAutoConverge {
                side: Side::Destination,
                state: true,
            },
        ));
    }
    v
}
