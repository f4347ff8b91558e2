//! Generation of executable op sequences: [`PairMachine`] implements
//! [`ReferenceStateMachine`] over the [`Model`].
//!
//! Every generated sequence can run against real processes in bounded time: no op whose
//! expectation contains a timeout (waiting for a status that cannot come), no op the executor
//! would have to refuse (check-memory without a completed migration), `wait-passes` only while
//! every possible world has the source active and held (at most 3 passes ahead, and only when a
//! pass over guest RAM is quick), at most [`MAX_WAITS`] waits and [`MAX_MIGRATIONS`] migrations.
//! Out-of-state ops (migrate while one runs, continue in the wrong state, set-capabilities during
//! a migration, ops on a dead VMM) are generated on purpose: they test the error paths.

use proptest::prelude::*;
use proptest::strategy::Union;
use proptest_state_machine::ReferenceStateMachine;

use crate::scenario::{Capability, MigrationStatus, Op, PairSpec, Scenario, Side, Size, Transport};

use super::world::{DstPhase, SrcPhase};
use super::Model;

/// Most waits in one generated sequence.
pub const MAX_WAITS: u32 = 6;
/// Most migrations started in one generated sequence.
pub const MAX_MIGRATIONS: u32 = 3;
/// Default sequence length range for fuzzing.
pub const SEQUENCE_LEN: std::ops::RangeInclusive<usize> = 1..=12;

/// Pair specs worth fuzzing: small RAM, a guest that keeps dirtying memory.
pub fn pair_spec() -> impl Strategy<Value = PairSpec> {
    (
        prop::sample::select(vec![16u64, 32, 64, 128]),
        1u32..=2,
        prop::sample::select(vec!["sweep", "hotset", "rate", "random"]),
        prop_oneof![Just(Transport::Unix), Just(Transport::Tcp)],
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.9),
    )
        .prop_map(
            |(mib, vcpus, image, transport, dst_paused, events)| PairSpec {
                memory: Size::mib(mib),
                vcpus,
                image: image.to_string(),
                transport,
                dst_paused,
                events,
            },
        )
}

/// Whether `op` may be generated in `model`'s state (also re-checked while shrinking).
pub fn executable(model: &Model, op: &Op) -> bool {
    let worlds = model.worlds();
    if op.is_wait() && model.waits_applied() >= MAX_WAITS {
        return false;
    }
    match op {
        Op::WaitPasses { n } => {
            let ok = worlds.iter().all(|w| {
                w.src.alive
                    && w.src.phase == SrcPhase::Held
                    && *n > w.passes_min
                    && *n <= w.passes_min + 3
                    && w.src.params.passes_are_quick(w.memory)
            });
            if !ok || *n > 10 {
                return false;
            }
        }
        Op::Migrate { .. } if model.migrations() >= MAX_MIGRATIONS => return false,
        Op::Migrate { .. } if super::multifd::migrate_stalls_qemu(worlds) => return false,
        // QEMU 7.2 accepts `postcopy-ram` with `multifd`, migtest-vmm refuses it (QEMU 8.x).
        Op::SetCapabilities {
            side,
            multifd,
            postcopy_ram,
            ..
        } if worlds.iter().any(|w| {
            let c = match side {
                Side::Source => &w.src.caps,
                Side::Destination => &w.dst.caps,
            };
            postcopy_ram.unwrap_or(c.postcopy_ram) && multifd.unwrap_or(c.multifd)
        }) =>
        {
            return false
        }
        Op::Cont { side: Side::Source }
            if worlds.iter().any(|w| {
                matches!(
                    w.src.phase,
                    SrcPhase::PreSwitchover { .. } | SrcPhase::SwitchingOver | SrcPhase::Finishing
                )
            }) =>
        {
            return false
        }
        Op::SetCapabilities {
            side: Side::Destination,
            ..
        } if worlds.iter().any(|w| w.dst.phase != DstPhase::Listening) => return false,
        _ if !super::postcopy_gen::executable(model, op) => return false,
        _ => {}
    }
    let exp = model.expect(op);
    !exp.may_time_out() && !exp.may_be_refused()
}

fn set_params(
    side: Side,
    downtime_limit: Option<u64>,
    max_bandwidth: Option<Size>,
    avail: Option<Size>,
    hold: Option<bool>,
) -> Op {
    Op::SetParameters {
        side,
        downtime_limit,
        max_bandwidth,
        avail_switchover_bandwidth: avail,
        switchover_hold: hold,
        multifd_channels: None,
        xbzrle_cache_size: None,
        max_postcopy_bandwidth: None,
    }
}

/// The menu of ops with their weights in `model`'s state (before preconditions): weighted
/// towards the useful flow of the moment (migrate when idle, wait-passes/release while held,
/// wait-completed while converging, continue in pre-switchover, checks after completion), with
/// every other op kept at a low weight for the error paths.
pub fn candidates(model: &Model) -> Vec<(u32, Op)> {
    candidates_with(model, false)
}

/// [`candidates`], with the `max-postcopy-bandwidth` ops when `postcopy_bandwidth` (the
/// postcopy focus: [`super::focus::Focus::Postcopy`]; the unfocused menu stays as it was, so
/// that its seeds draw the same cases).
pub fn candidates_with(model: &Model, postcopy_bandwidth: bool) -> Vec<(u32, Op)> {
    use MigrationStatus as S;
    let worlds = model.worlds();
    let all = |f: &dyn Fn(&super::world::World) -> bool| worlds.iter().all(f);
    let any = |f: &dyn Fn(&super::world::World) -> bool| worlds.iter().any(f);
    let idle = all(&|w| matches!(w.src.phase, SrcPhase::Idle(_)));
    let listening = all(&|w| w.dst.phase == DstPhase::Listening);
    let held = all(&|w| w.src.phase == SrcPhase::Held);
    let converging = any(&|w| {
        matches!(
            w.src.phase,
            SrcPhase::Converging
                | SrcPhase::SwitchingOver
                | SrcPhase::Finishing
                | SrcPhase::Postcopy
        )
    });
    let pre = all(&|w| matches!(w.src.phase, SrcPhase::PreSwitchover { .. }));
    let ending = any(&|w| matches!(w.src.phase, SrcPhase::Cancelling | SrcPhase::Failing { .. }));
    let completed = all(&|w| w.memory_must_match().is_ok());
    let dst_done = all(&|w| matches!(w.dst.phase, DstPhase::Completed(_)));
    let pbs = all(&|w| w.src.caps.pause_before_switchover);
    let slow = any(&|w| w.src.phase == SrcPhase::Converging && !w.src.params.converges(w.memory));
    // Held with parameters that keep an unheld migration from converging (the legacy hold):
    // lifting them shows whether the hold, not the throttle, is what holds.
    let held_throttled =
        any(&|w| w.src.phase == SrcPhase::Held && !w.src.params.converges(w.memory));
    let min_passes = worlds.iter().map(|w| w.passes_min).min().unwrap_or(0);
    let other = match model.pair().transport {
        Transport::Unix => Transport::Tcp,
        Transport::Tcp => Transport::Unix,
    };
    let w = |cond: bool, hi: u32| if cond { hi } else { 1 };
    let mut v = vec![
        (w(idle && listening, 24), Op::Migrate { transport: None }),
        (
            1,
            Op::Migrate {
                transport: Some(other),
            },
        ),
        (
            w(idle && listening, 12) + w(converging, 10) + w(slow, 40),
            Op::Hold {},
        ),
        (w(held, 14), Op::Release {}),
        (w(held || pre, 8), Op::Cancel {}),
        (
            w(pre, 12),
            Op::Continue {
                state: S::PreSwitchover,
            },
        ),
        (1, Op::Continue { state: S::Active }),
        (w(converging, 12), Op::WaitCompleted {}),
        (
            w(ending, 5),
            Op::WaitStatus {
                side: Side::Source,
                status: S::Cancelled,
            },
        ),
        (
            w(ending, 5),
            Op::WaitStatus {
                side: Side::Source,
                status: S::Failed,
            },
        ),
        (
            w(converging && pbs, 10),
            Op::WaitStatus {
                side: Side::Source,
                status: S::PreSwitchover,
            },
        ),
        (
            w(held, 2),
            Op::WaitStatus {
                side: Side::Source,
                status: S::Active,
            },
        ),
        (
            w(converging, 2),
            Op::WaitStatus {
                side: Side::Source,
                status: S::Completed,
            },
        ),
        (
            w(converging, 2),
            Op::WaitStatus {
                side: Side::Destination,
                status: S::Completed,
            },
        ),
        (
            w(held, 2),
            Op::WaitStatus {
                side: Side::Destination,
                status: S::Active,
            },
        ),
        (w(completed, 14), Op::CheckMemory {}),
        (w(dst_done, 5), Op::CheckDestinationRuns {}),
        (
            w(idle || held, 4) + w(slow, 6) + w(held_throttled, 40),
            set_params(Side::Source, Some(30_000), Some(Size(0)), None, None),
        ),
        (
            // The legacy hold: 3 MB/s and 1 ms, as QEMU's tests do without switchover-hold.
            w(idle && listening, 20),
            set_params(Side::Source, Some(1), Some(Size(3_000_000)), None, None),
        ),
        (
            1,
            set_params(Side::Source, None, Some(Size::mib(128)), None, None),
        ),
        (
            1,
            set_params(Side::Source, Some(2_000_001), None, None, None),
        ),
        (
            1,
            set_params(Side::Source, None, None, Some(Size(1 << 30)), None),
        ),
        (
            1,
            set_params(Side::Destination, None, None, None, Some(true)),
        ),
        (
            w(idle, 3),
            Op::set_capability(Side::Source, Capability::PauseBeforeSwitchover, true),
        ),
        (
            1,
            Op::set_capability(Side::Source, Capability::PauseBeforeSwitchover, false),
        ),
        (
            1,
            Op::set_capability(Side::Destination, Capability::Events, true),
        ),
        (
            1,
            Op::set_capability(Side::Source, Capability::Events, false),
        ),
        (
            1,
            Op::set_capability(Side::Source, Capability::Events, true),
        ),
        (w(held, 2), Op::Stop { side: Side::Source }),
        (1, Op::Cont { side: Side::Source }),
        (
            1,
            Op::Stop {
                side: Side::Destination,
            },
        ),
        (
            1,
            Op::Cont {
                side: Side::Destination,
            },
        ),
        (
            w(held, 2),
            Op::Kill {
                side: Side::Destination,
            },
        ),
        (1, Op::Kill { side: Side::Source }),
        (w(idle && !listening, 10), Op::RestartDestination {}),
    ];
    v.extend(super::multifd::candidates(idle, listening));
    v.extend(super::postcopy_gen::candidates(model, postcopy_bandwidth));
    if held {
        for k in 1..=3 {
            v.push((10, Op::WaitPasses { n: min_passes + k }));
        }
    }
    v.extend(super::auto_converge::candidates(model));
    v.extend(super::world::xbzrle::candidates(idle));
    v
}

/// Weighted strategy over the executable candidates in `model`'s state.
pub fn next_op(model: &Model) -> BoxedStrategy<Op> {
    let options: Vec<(u32, BoxedStrategy<Op>)> = candidates(model)
        .into_iter()
        .filter(|(_, op)| executable(model, op))
        .map(|(w, op)| (w, Just(op).boxed()))
        .collect();
    if options.is_empty() {
        return Just(Op::Cancel {}).boxed();
    }
    Union::new_weighted(options).boxed()
}

/// The reference state machine for proptest-state-machine: state = [`Model`], transition = [`Op`].
#[derive(Clone, Copy, Debug)]
pub struct PairMachine;

impl ReferenceStateMachine for PairMachine {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        pair_spec().prop_map(Model::new).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        next_op(state)
    }

    fn apply(mut state: Model, transition: &Op) -> Model {
        state.apply(transition);
        state
    }

    fn preconditions(state: &Model, transition: &Op) -> bool {
        executable(state, transition)
    }
}

/// Whether every op of `ops` is executable in turn from a fresh pair.
pub fn sequence_is_executable(pair: &PairSpec, ops: &[Op]) -> bool {
    let mut m = Model::new(pair.clone());
    for op in ops {
        if !executable(&m, op) {
            return false;
        }
        m.apply(op);
    }
    true
}

/// Generated scenarios (for writing failing cases out as scenario files).
pub fn scenario() -> impl Strategy<Value = Scenario> {
    PairMachine::sequential_strategy(SEQUENCE_LEN).prop_map(|(model, ops, _)| Scenario {
        purpose: "generated by model::strategy".to_string(),
        pair: model.pair().clone(),
        ops,
    })
}
