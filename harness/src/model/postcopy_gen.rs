//! Generation rules for postcopy ops (see [`super::strategy`]): the `postcopy-ram`
//! capability, `migrate-start-postcopy`, and which postcopy sequences are not generated
//! because migtest-vmm (on main) and QEMU 7.2 would not agree on them:
//!
//! - `migrate` with `postcopy-ram` on the source and off on the destination: QEMU fails the
//!   migration at once ("RAM postcopy is disabled but have 16 byte advise"), migtest-vmm runs
//!   precopy and fails only at `migrate-start-postcopy`;
//! - `migrate-start-postcopy` while the source guest is not running: QEMU starts the
//!   destination guest by autostart alone, migtest-vmm keeps the source's run state;
//! - `stop`/`cont` on either side during postcopy (not checked against QEMU yet);
//! - `migrate_cancel` during postcopy (the model refuses it: split guest state).

use crate::scenario::{Capability, Op, Side};

use super::world::{DstPhase, GuestRun, SrcPhase, World};
use super::Model;

/// Whether `op` may be generated as far as postcopy is concerned.
pub(crate) fn executable(model: &Model, op: &Op) -> bool {
    let worlds = model.worlds();
    let any = |f: &dyn Fn(&World) -> bool| worlds.iter().any(f);
    let in_postcopy = any(&|w| {
        matches!(w.src.phase, SrcPhase::Postcopy | SrcPhase::PostcopyPaused)
            || w.dst.phase == DstPhase::PostcopyPaused
    });
    match op {
        Op::Migrate { .. } => !any(&|w| {
            w.src.caps.postcopy_ram
                && !w.dst.caps.postcopy_ram
                && w.dst.phase == DstPhase::Listening
        }),
        Op::StartPostcopy {} => !any(&|w| {
            matches!(w.src.phase, SrcPhase::Held | SrcPhase::Converging)
                && w.src.run != GuestRun::Running
        }),
        Op::Stop { .. } | Op::Cont { .. } => !in_postcopy,
        _ => true,
    }
}

/// Postcopy ops with their weights in `model`'s state: capabilities on both sides before a
/// migration, `migrate-start-postcopy` while a migration is held or converging with the
/// capability on (at low weight anywhere else, for the error paths), kills during postcopy.
pub(crate) fn candidates(model: &Model) -> Vec<(u32, Op)> {
    let worlds = model.worlds();
    let all = |f: &dyn Fn(&World) -> bool| worlds.iter().all(f);
    let idle = all(&|w| matches!(w.src.phase, SrcPhase::Idle(_)));
    let listening = all(&|w| w.dst.phase == DstPhase::Listening);
    let ready = all(&|w| {
        w.src.caps.postcopy_ram && matches!(w.src.phase, SrcPhase::Held | SrcPhase::Converging)
    });
    let postcopy = all(&|w| w.src.phase == SrcPhase::Postcopy);
    let src_off = all(&|w| !w.src.caps.postcopy_ram);
    let dst_off = all(&|w| !w.dst.caps.postcopy_ram);
    let w = |cond: bool, hi: u32| if cond { hi } else { 1 };
    let caps = |side, on| Op::set_capability(side, Capability::PostcopyRam, on);
    vec![
        (
            w(idle && listening && src_off, 80),
            caps(Side::Source, true),
        ),
        (w(listening && dst_off, 80), caps(Side::Destination, true)),
        (1, caps(Side::Source, false)),
        (w(ready, 120), Op::StartPostcopy {}),
        (
            w(postcopy, 2),
            Op::Kill {
                side: Side::Destination,
            },
        ),
        (w(postcopy, 2), Op::Kill { side: Side::Source }),
    ]
}

/// Ops worth more in [`PostcopyMachine`]: the postcopy flow and what judges its end.
fn postcopy_boost(op: &Op) -> u32 {
    match op {
        Op::SetCapabilities {
            postcopy_ram: Some(true),
            ..
        }
        | Op::StartPostcopy {}
        | Op::Migrate { transport: None }
        | Op::Hold {}
        | Op::WaitPasses { .. }
        | Op::WaitCompleted {}
        | Op::CheckMemory {}
        | Op::CheckDestinationRuns {} => 10,
        _ => 1,
    }
}

/// [`super::strategy::PairMachine`] focused on postcopy, for fuzzing it: pairs whose
/// destination runs the guest (no `-S`) three times in four, mostly the sweep guest, and the
/// postcopy flow weighted ten times (every other op stays possible for the error paths).
#[derive(Clone, Copy, Debug)]
pub struct PostcopyMachine;

impl proptest_state_machine::ReferenceStateMachine for PostcopyMachine {
    type State = Model;
    type Transition = Op;

    fn init_state() -> proptest::strategy::BoxedStrategy<Model> {
        use proptest::prelude::*;
        (
            super::strategy::pair_spec(),
            prop::bool::weighted(0.75),
            prop::bool::weighted(0.75),
        )
            .prop_map(|(mut p, autostart, sweep)| {
                p.dst_paused = !autostart;
                if sweep {
                    // The guest whose A-B check sees a stale page after it ran on.
                    p.image = "sweep".into();
                }
                Model::new(p)
            })
            .boxed()
    }

    fn transitions(state: &Model) -> proptest::strategy::BoxedStrategy<Op> {
        use proptest::prelude::*;
        let options: Vec<(u32, BoxedStrategy<Op>)> = super::strategy::candidates(state)
            .into_iter()
            .filter(|(_, op)| super::strategy::executable(state, op))
            .map(|(w, op)| (w * postcopy_boost(&op), Just(op).boxed()))
            .collect();
        if options.is_empty() {
            return Just(Op::Cancel {}).boxed();
        }
        proptest::strategy::Union::new_weighted(options).boxed()
    }

    fn apply(mut state: Model, transition: &Op) -> Model {
        state.apply(transition);
        state
    }

    fn preconditions(state: &Model, transition: &Op) -> bool {
        super::strategy::executable(state, transition)
    }
}
