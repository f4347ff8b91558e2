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

use crate::scenario::{Capability, Op, Side, Size};

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
pub(crate) fn candidates(model: &Model, bandwidth: bool) -> Vec<(u32, Op)> {
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
    let memory = model.pair().memory.0;
    let postcopy_bandwidth = |hold: Option<bool>, b| Op::SetParameters {
        side: Side::Source,
        downtime_limit: None,
        // With the hold: precopy capped at the RAM per second too, so a held pass takes
        // about a second and the sweep guest dirties pages all along it: at the switch many
        // pages are still to come, more than the first burst of background pages (a tenth of
        // a second's worth). At unlimited precopy bandwidth the pages left at the switch were
        // sometimes within that burst (a loaded machine's vCPU dirtied few since the last
        // pass): the destination requested none and 1 replay of 10 missed the fault.
        max_bandwidth: hold.map(|_| Size(memory.max(1 << 20))),
        avail_switchover_bandwidth: None,
        switchover_hold: hold,
        multifd_channels: None,
        xbzrle_cache_size: None,
        max_postcopy_bandwidth: Some(Size(b)),
    };
    // A quarter of the RAM per second, the slowest cap a wait for the end still allows
    // (`Parameters::postcopy_is_quick`): the background sender starts postcopy with a
    // tenth of a second's burst and then goes at the cap, so the running destination's
    // vCPU reaches pages not yet sent and requests them. At half the RAM per second the
    // shrunk case failed 8 of 10 replays in a loaded CI run. With the hold in the same
    // command: one op prepares a held migration with a slow postcopy.
    let slow = (model.pair().memory.0 / 4).max(4096);
    let mut v = Vec::new();
    if bandwidth {
        v = vec![
            (w(idle, 3), postcopy_bandwidth(Some(true), slow)),
            (1, postcopy_bandwidth(None, slow)),
            (1, postcopy_bandwidth(None, 0)),
            (1, postcopy_bandwidth(None, 4096)),
        ];
    }
    v.extend([
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
    ]);
    v
}

/// The weight of `op` in the postcopy focus
/// ([`Focus::Postcopy`](super::focus::Focus::Postcopy)), from its unfocused weight `base`:
/// the postcopy flow and what judges its end ten times more; a slow
/// `max-postcopy-bandwidth` (so that the running destination surely requests pages before
/// the background sender sent them), with the hold, twenty times more while none is set;
/// `wait-passes` until precopy's first pass is over and `start-postcopy` only after it
/// (before, a page the destination requests may never have been sent, and a race decides
/// what it gets); a second hold hardly; any other op at a quarter of its weight.
pub(super) fn weight(model: &Model, op: &Op, base: u32) -> u32 {
    let worlds = model.worlds();
    let passes = worlds.iter().map(|w| w.passes_min).min().unwrap_or(0);
    let unheld = worlds.iter().all(|w| !w.src.params.switchover_hold);
    let idle = worlds
        .iter()
        .all(|w| matches!(w.src.phase, SrcPhase::Idle(_)));
    let unset = worlds
        .iter()
        .all(|w| w.src.params.max_postcopy_bandwidth.0 == 0);
    match op {
        Op::SetParameters {
            max_postcopy_bandwidth: Some(b),
            switchover_hold,
            ..
        } if b.0 > 0 && unset && b.0.saturating_mul(4) >= model.pair().memory.0 => {
            if switchover_hold.is_some() && idle && unheld {
                base * 60
            } else {
                base * 10
            }
        }
        // Precopy passes stay quick (the legacy hold's 3 MB/s would rule out `wait-passes`).
        Op::SetParameters {
            max_bandwidth: Some(b),
            ..
        } if b.0 > 0 && b.0 < 128 << 20 => 1,
        Op::StartPostcopy {} if passes < 2 => (base / 10).max(1),
        Op::WaitPasses { .. } if passes >= 2 => base,
        Op::Hold {} if !unheld => 1,
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
        | Op::CheckDestinationRuns {} => base * 10,
        // Everything else (error paths, other features) at a quarter.
        _ => (base / 4).max(1),
    }
}

/// Pairs for the postcopy focus: destinations that run the guest (no `-S`) three times in
/// four, mostly the sweep guest (whose A-B check sees a stale page after it ran on).
pub(super) fn pair() -> proptest::strategy::BoxedStrategy<crate::scenario::PairSpec> {
    use proptest::prelude::*;
    (
        super::strategy::pair_spec(),
        prop::bool::weighted(0.75),
        prop::bool::weighted(0.75),
    )
        .prop_map(|(mut p, autostart, sweep)| {
            p.dst_paused = !autostart;
            if sweep {
                p.image = "sweep".into();
            }
            p
        })
        .boxed()
}
