//! The status machine the model judges events and `query-migrate` against: precopy's
//! statuses plus `postcopy-active` and `postcopy-paused` ([`STATUSES`]).

use std::collections::VecDeque;

use crate::scenario::{MigrationStatus, Op, Side};

use MigrationStatus as S;

/// Every status the model knows: QEMU's precopy statuses, `postcopy-active` and
/// `postcopy-paused` (the model panics on no other: `postcopy-recover`, `colo`, ... never
/// come from the ops it knows).
pub const STATUSES: [MigrationStatus; 11] = MigrationStatus::MODELLED;

/// `migrate-set-capabilities` leaving `postcopy-ram` and `multifd` both on (migtest-vmm, as
/// QEMU 8.x; QEMU 7.2 accepts it).
pub const ERR_POSTCOPY_MULTIFD: &str = "Postcopy is not yet compatible with multifd";

/// QEMU's `migrate-start-postcopy` error when `postcopy-ram` is off on the source.
pub const ERR_POSTCOPY_NOT_ENABLED: &str =
    "Enable postcopy with migrate_set_capability before the start of migration";
/// QEMU's `migrate-start-postcopy` error before any migration was started.
pub const ERR_POSTCOPY_NOT_STARTED: &str =
    "Postcopy must be started after migration has been started";

/// Whether a MIGRATION event `to` may follow `from` on `side` (`from` = `none` for a fresh
/// process). Source: none/completed/cancelled/failed → setup → active → completed or
/// (pause-before-switchover) pre-switchover → device → completed; setup/active/pre-switchover/
/// device → cancelling → cancelled; setup/active/pre-switchover/device → failed.
/// Destination: none → setup → active → completed; setup/active → failed.
/// Postcopy, both sides: active → postcopy-active (`migrate-start-postcopy`) → completed,
/// or → postcopy-paused (the other side died), or → failed.
pub fn legal_transition(side: Side, from: MigrationStatus, to: MigrationStatus) -> bool {
    match side {
        Side::Source => matches!(
            (from, to),
            (S::None | S::Completed | S::Cancelled | S::Failed, S::Setup)
                | (S::Setup, S::Active)
                | (S::Active, S::PreSwitchover | S::Completed)
                | (S::PreSwitchover, S::Device)
                | (S::Device, S::Completed)
                | (
                    S::Setup | S::Active | S::PreSwitchover | S::Device,
                    S::Cancelling | S::Failed
                )
                | (S::Cancelling, S::Cancelled)
                | (S::Active, S::PostcopyActive)
                | (
                    S::PostcopyActive,
                    S::Completed | S::PostcopyPaused | S::Failed
                )
        ),
        Side::Destination => matches!(
            (from, to),
            (S::None, S::Setup)
                | (S::Setup, S::Active)
                | (S::Active, S::Completed | S::PostcopyActive)
                | (S::Setup | S::Active, S::Failed)
                | (
                    S::PostcopyActive,
                    S::Completed | S::PostcopyPaused | S::Failed
                )
        ),
    }
}

/// Whether `query-migrate` on `side` may show `to` some time after it showed `from`: along
/// [`legal_transition`]s, starting a new migration (terminal → setup) only if `new_migration`.
pub fn reachable(
    side: Side,
    from: MigrationStatus,
    to: MigrationStatus,
    new_migration: bool,
) -> bool {
    if from == to {
        return true;
    }
    let mut seen = vec![from];
    let mut i = 0;
    while i < seen.len() {
        let a = seen[i];
        i += 1;
        for b in STATUSES {
            let restart = a.is_settled() && b == S::Setup;
            if seen.contains(&b) || !legal_transition(side, a, b) || (restart && !new_migration) {
                continue;
            }
            if b == to {
                return true;
            }
            seen.push(b);
        }
    }
    false
}

/// Whether a wait should give up on seeing `status` on the awaited side: for `wait-passes`, any
/// status but setup/active; for `wait-status`/`wait-completed`, a terminal status (none,
/// completed, failed, cancelled) other than the goal. Other waits end with a timeout.
pub fn wait_gives_up(op: &Op, status: MigrationStatus) -> bool {
    match op {
        Op::WaitPasses { .. } | Op::WaitThrottled {} => !matches!(status, S::Setup | S::Active),
        Op::WaitStatus { status: goal, .. } => status != *goal && status.is_settled(),
        Op::WaitCompleted {} => status != S::Completed && status.is_settled(),
        _ => false,
    }
}

/// QEMU 7.2's destination may show no status (`none`) while its incoming migration is in
/// setup or active, after the events for them were sent: `shown` after `known` is allowed.
pub(super) fn incoming_status_hidden(
    side: Side,
    shown: MigrationStatus,
    known: MigrationStatus,
) -> bool {
    side == Side::Destination && shown == S::None && matches!(known, S::Setup | S::Active)
}

/// The shortest legal MIGRATION event path from `from` to `to` (excluding `from`); from an unknown
/// status just `to`.
pub(super) fn event_path(
    side: Side,
    from: Option<MigrationStatus>,
    to: MigrationStatus,
    pbs: bool,
) -> Vec<MigrationStatus> {
    let Some(from) = from else {
        return if to == S::None { vec![] } else { vec![to] };
    };
    if from == to {
        return vec![];
    }
    let allowed = |a: MigrationStatus, b: MigrationStatus| {
        legal_transition(side, a, b)
            && !(side == Side::Source && b == S::PreSwitchover && !pbs)
            && !(side == Side::Source && a == S::Active && b == S::Completed && pbs)
    };
    let mut prev: Vec<Option<MigrationStatus>> = vec![None; STATUSES.len()];
    let idx = |s: MigrationStatus| STATUSES.iter().position(|x| *x == s).expect("status");
    let mut seen = vec![false; STATUSES.len()];
    seen[idx(from)] = true;
    let mut q = VecDeque::from([from]);
    while let Some(a) = q.pop_front() {
        for b in STATUSES {
            if !seen[idx(b)] && allowed(a, b) {
                seen[idx(b)] = true;
                prev[idx(b)] = Some(a);
                if b == to {
                    let mut path = vec![b];
                    let mut cur = a;
                    while cur != from {
                        path.push(cur);
                        cur = prev[idx(cur)].expect("path");
                    }
                    path.reverse();
                    return path;
                }
                q.push_back(b);
            }
        }
    }
    vec![to]
}
