//! What the model allows after an op: [`Expectation`] = alternatives ([`Outcome`]s), one per way
//! the real pair may have gone (races such as "the migration completed just before `cancel`").

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::scenario::{MigrationStatus, Side};

use super::types::{Observation, Reply, RunState, SideObservation};
use super::world::World;

/// The QMP error class of every migration error QEMU raises here.
pub const GENERIC_ERROR: &str = "GenericError";
/// `migrate` / `migrate-set-capabilities` while a migration runs (QERR_MIGRATION_ACTIVE).
pub const ERR_IN_PROGRESS: &str = "There's a migration process in progress";
/// `migrate-continue` in another state; QEMU appends the current status.
pub const ERR_NOT_EXPECTED_STATE: &str = "Migration not in expected state";
/// `migrate-set-parameters` with `downtime-limit` above 2000 s.
pub const ERR_DOWNTIME_LIMIT: &str = "downtime_limit";

/// The reply an op may get.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpectedReply {
    /// Success.
    Ok,
    /// A QMP error of `class` whose `desc` contains `contains` (when given).
    Error {
        /// Error class (always [`GENERIC_ERROR`] here).
        class: &'static str,
        /// A substring of `desc` QEMU is known to use.
        contains: Option<String>,
    },
    /// The target VMM is not alive.
    Dead,
    /// The op cannot be performed; the executor must refuse it (any reason text matches).
    Refused {
        /// Why, for humans.
        reason: String,
    },
    /// A wait that can never end by itself: the executor runs into its timeout.
    Timeout,
    /// A wait gives up early seeing one of these statuses.
    Unreachable(BTreeSet<MigrationStatus>),
}

impl ExpectedReply {
    pub(crate) fn error(contains: impl Into<String>) -> ExpectedReply {
        ExpectedReply::Error {
            class: GENERIC_ERROR,
            contains: Some(contains.into()),
        }
    }

    pub(crate) fn unreachable(s: MigrationStatus) -> ExpectedReply {
        ExpectedReply::Unreachable([s].into_iter().collect())
    }

    pub(crate) fn refused(reason: &str) -> ExpectedReply {
        ExpectedReply::Refused {
            reason: reason.to_string(),
        }
    }

    /// Whether `reply` is allowed.
    pub fn matches(&self, reply: &Reply) -> bool {
        match (self, reply) {
            (ExpectedReply::Ok, Reply::Ok)
            | (ExpectedReply::Dead, Reply::Dead)
            | (ExpectedReply::Timeout, Reply::Timeout)
            | (ExpectedReply::Refused { .. }, Reply::Refused { .. }) => true,
            (ExpectedReply::Error { class, contains }, Reply::Error { class: c, desc }) => {
                c == class && contains.as_ref().is_none_or(|s| desc.contains(s.as_str()))
            }
            (ExpectedReply::Unreachable(set), Reply::Unreachable { status }) => {
                set.contains(status)
            }
            _ => false,
        }
    }

    /// A reply that matches (for canonical observations).
    pub fn canonical(&self) -> Reply {
        match self {
            ExpectedReply::Ok => Reply::Ok,
            ExpectedReply::Error { class, contains } => Reply::Error {
                class: class.to_string(),
                desc: contains.clone().unwrap_or_else(|| "error".into()),
            },
            ExpectedReply::Dead => Reply::Dead,
            ExpectedReply::Refused { reason } => Reply::Refused {
                reason: reason.clone(),
            },
            ExpectedReply::Timeout => Reply::Timeout,
            ExpectedReply::Unreachable(set) => Reply::Unreachable {
                status: *set.iter().next().expect("non-empty"),
            },
        }
    }
}

impl fmt::Display for ExpectedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedReply::Ok => f.write_str("ok"),
            ExpectedReply::Error { class, contains } => match contains {
                Some(s) => write!(f, "{class} containing {s:?}"),
                None => write!(f, "{class}"),
            },
            ExpectedReply::Dead => f.write_str("dead"),
            ExpectedReply::Refused { reason } => write!(f, "refused ({reason})"),
            ExpectedReply::Timeout => f.write_str("timeout"),
            ExpectedReply::Unreachable(set) => write!(f, "unreachable (status {})", fmt_set(set)),
        }
    }
}

/// Whether a process must be alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alive {
    /// Must be alive.
    Yes,
    /// Must be dead.
    No,
    /// Dying (e.g. a destination whose incoming migration failed exits by itself).
    Maybe,
}

/// One allowed (status, run state) pair of a live VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    /// `query-migrate` status.
    pub status: MigrationStatus,
    /// `query-status` run state.
    pub run_state: RunState,
}

/// What is allowed of one side after the op.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SideExpect {
    /// Alive or not.
    pub alive: Alive,
    /// Allowed (status, run state) pairs while alive, in time order; the first is the canonical
    /// one. See [`SideExpect::allows`].
    pub snapshots: Vec<Snapshot>,
    /// Lower bound of `dirty-sync-count` (source, current migration).
    pub min_passes: u64,
    /// Whether MIGRATION events are sent (the side's `events` capability).
    pub events: bool,
}

impl SideExpect {
    /// Allowed statuses.
    pub fn statuses(&self) -> BTreeSet<MigrationStatus> {
        self.snapshots.iter().map(|s| s.status).collect()
    }

    /// Allowed run states.
    pub fn run_states(&self) -> BTreeSet<RunState> {
        self.snapshots.iter().map(|s| s.run_state).collect()
    }

    /// Whether a run state read by `query-status` followed by a status read by `query-migrate`
    /// is allowed: the snapshots are in time order, and the status may be from the same or a
    /// later snapshot than the run state (the two queries are not atomic).
    pub fn allows(&self, status: Option<MigrationStatus>, run_state: Option<RunState>) -> bool {
        let first_run = self
            .snapshots
            .iter()
            .position(|s| run_state.is_none_or(|r| r == s.run_state));
        match first_run {
            None => false,
            Some(i) => self.snapshots[i..]
                .iter()
                .any(|s| status.is_none_or(|st| st == s.status)),
        }
    }

    /// Whether the side may run the guest.
    pub fn may_run(&self) -> bool {
        self.alive != Alive::No
            && self
                .snapshots
                .iter()
                .any(|s| s.run_state == RunState::Running)
    }

    /// The first mismatch between this expectation and `obs`, as a phrase.
    fn mismatch(&self, side: Side, obs: &SideObservation) -> Option<String> {
        match (self.alive, obs.alive) {
            (Alive::Yes, false) => return Some(format!("expected the {side} alive, saw it dead")),
            (Alive::No, true) => return Some(format!("expected the {side} dead, saw it alive")),
            (_, false) => return None,
            _ => {}
        }
        let ok = self.allows(obs.status, obs.run_state);
        if !ok {
            let st_ok = obs.status.is_none_or(|st| self.statuses().contains(&st));
            return Some(if !st_ok {
                format!(
                    "expected {side} status in {}, saw {}",
                    fmt_set(&self.statuses()),
                    obs.status.expect("checked")
                )
            } else {
                format!(
                    "expected {side} (status, run state) in {}, saw ({}, {})",
                    fmt_snapshots(&self.snapshots),
                    fmt_opt(obs.status),
                    fmt_opt(obs.run_state)
                )
            });
        }
        if let Some(n) = obs.dirty_sync_count {
            if n < self.min_passes {
                return Some(format!(
                    "expected {side} dirty-sync-count >= {}, saw {n}",
                    self.min_passes
                ));
            }
        }
        None
    }
}

/// Which side runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestOwner {
    /// Nobody runs it (paused, held, killed).
    Nobody,
    /// The source runs it.
    Source,
    /// The destination runs it.
    Destination,
    /// Both run it: only after the test itself `cont`ed a post-migrate source.
    Both,
}

/// One way the pair may have gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Outcome {
    /// The op's reply.
    pub reply: ExpectedReply,
    /// The source afterwards.
    pub source: SideExpect,
    /// The destination afterwards.
    pub destination: SideExpect,
    /// Who runs the guest once the dust settles.
    pub guest_owner: GuestOwner,
    /// Whether the memory of the stopped source and the held destination must be equal now.
    pub memory_must_match: bool,
    /// Number of migrations started so far.
    pub migrations: u32,
    /// The switchover-hold parameter on the source.
    pub hold: bool,
    #[serde(skip)]
    pub(crate) world: World,
}

impl Outcome {
    /// The expectation of `side`.
    pub fn side(&self, side: Side) -> &SideExpect {
        match side {
            Side::Source => &self.source,
            Side::Destination => &self.destination,
        }
    }

    /// The first mismatch with `obs`, if any.
    pub fn mismatch(&self, obs: &Observation) -> Option<String> {
        if !self.reply.matches(&obs.reply) {
            return Some(format!("expected reply {}, saw {}", self.reply, obs.reply));
        }
        for side in Side::ALL {
            if let Some(m) = self.side(side).mismatch(side, obs.side(side)) {
                return Some(m);
            }
        }
        // The destination is observed before the source: once it completed the migration, the
        // source guest has been stopped for switchover.
        let (d, s) = (&obs.destination, &obs.source);
        if self.world.dst_incoming()
            && !self.world.tainted
            && d.alive
            && d.status == Some(MigrationStatus::Completed)
            && s.alive
            && (s.status == Some(MigrationStatus::Setup)
                || matches!(s.run_state, Some(RunState::Running | RunState::Paused)))
        {
            return Some(format!(
                "destination completed while the source was not past switchover (source {}, {})",
                fmt_opt(s.status),
                fmt_opt(s.run_state)
            ));
        }
        None
    }
}

/// All observations allowed after an op: any one [`Outcome`] must match. Serializes to JSON for
/// transcripts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Expectation {
    /// The alternatives; the first is the canonical one.
    pub outcomes: Vec<Outcome>,
}

impl Expectation {
    /// Allowed replies.
    pub fn replies(&self) -> Vec<&ExpectedReply> {
        let mut v: Vec<&ExpectedReply> = Vec::new();
        for o in &self.outcomes {
            if !v.contains(&&o.reply) {
                v.push(&o.reply);
            }
        }
        v
    }

    /// Union of allowed statuses of `side`.
    pub fn statuses(&self, side: Side) -> BTreeSet<MigrationStatus> {
        self.outcomes
            .iter()
            .flat_map(|o| o.side(side).statuses())
            .collect()
    }

    /// Union of allowed run states of `side`.
    pub fn run_states(&self, side: Side) -> BTreeSet<RunState> {
        self.outcomes
            .iter()
            .flat_map(|o| o.side(side).run_states())
            .collect()
    }

    /// The lowest `dirty-sync-count` any outcome allows on the source.
    pub fn min_passes(&self) -> u64 {
        self.outcomes
            .iter()
            .map(|o| o.source.min_passes)
            .min()
            .unwrap_or(0)
    }

    /// `Some(reason)` when every outcome says the executor must refuse the op.
    pub fn refused(&self) -> Option<&str> {
        let mut reason = None;
        for o in &self.outcomes {
            match &o.reply {
                ExpectedReply::Refused { reason: r } => reason = Some(r.as_str()),
                _ => return None,
            }
        }
        reason
    }

    /// Whether some outcome is a wait timing out.
    pub fn may_time_out(&self) -> bool {
        self.outcomes
            .iter()
            .any(|o| o.reply == ExpectedReply::Timeout)
    }

    /// Whether some outcome lets the op be refused.
    pub fn may_be_refused(&self) -> bool {
        self.outcomes
            .iter()
            .any(|o| matches!(o.reply, ExpectedReply::Refused { .. }))
    }

    /// Whether some outcome allows both sides to run the guest: only when the test itself
    /// `cont`ed the source after (or during) switchover.
    pub fn allows_both_running(&self) -> bool {
        self.outcomes
            .iter()
            .any(|o| o.guest_owner == GuestOwner::Both || o.world.tainted)
    }

    /// Whether every outcome has the source's switchover held (a held, running migration).
    pub fn held_throughout(&self) -> bool {
        !self.outcomes.is_empty() && self.outcomes.iter().all(|o| o.world.src_is_held())
    }
}

/// An observation the model does not allow, explained in one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("after `{op}`: {message}")]
pub struct Violation {
    /// The op, as one line.
    pub op: String,
    /// What was expected and what was seen.
    pub message: String,
}

pub(crate) fn fmt_set<T: fmt::Display>(set: &BTreeSet<T>) -> String {
    let v: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    format!("{{{}}}", v.join(", "))
}

fn fmt_snapshots(v: &[Snapshot]) -> String {
    let v: Vec<String> = v
        .iter()
        .map(|s| format!("({}, {})", s.status, s.run_state))
        .collect();
    format!("{{{}}}", v.join(", "))
}

fn fmt_opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_string(), |v| v.to_string())
}
