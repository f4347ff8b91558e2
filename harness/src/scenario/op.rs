//! The op language: one [`Op`] is one step a scenario performs on the source/destination pair.
//!
//! Ops are serde enums tagged by `op` (kebab-case), so a scenario file lists them as
//! `[[ops]]` tables (`op = "migrate"`) and JSON as `{"op": "migrate"}`. Unknown fields are rejected.
//! See `docs/scenarios.md` for what each op does.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::size::Size;

/// One VMM of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// The VMM that runs the guest first and sends it.
    Source,
    /// The VMM launched to receive the guest (`-incoming`).
    Destination,
}

impl Side {
    /// Both sides, source first.
    pub const ALL: [Side; 2] = [Side::Source, Side::Destination];

    /// The kebab-case name used in files.
    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the migration stream travels.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// A unix socket in the pair's temporary directory.
    #[default]
    Unix,
    /// TCP on 127.0.0.1 with a port chosen by the destination.
    Tcp,
}

/// QEMU's `MigrationStatus` values for precopy: the subset the op language and the model
/// reason about, so their matches stay exhaustive without postcopy/COLO arms. The full wire
/// enum is `migtest_qmp::schema::MigrationStatus`; names are the same (`from_name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    /// No migration yet (`query-migrate` returns `{}`).
    None,
    /// Connecting and sending the first bitmap.
    Setup,
    /// Iterating over dirty pages.
    Active,
    /// Paused before device serialisation (`pause-before-switchover`).
    PreSwitchover,
    /// Serialising devices after `migrate-continue`.
    Device,
    /// Done: the destination holds the guest.
    Completed,
    /// Transport or stream error.
    Failed,
    /// `migrate_cancel` in progress.
    Cancelling,
    /// Cancelled; the source runs on.
    Cancelled,
}

impl MigrationStatus {
    /// Every status, in declaration order.
    pub const ALL: [MigrationStatus; 9] = [
        MigrationStatus::None,
        MigrationStatus::Setup,
        MigrationStatus::Active,
        MigrationStatus::PreSwitchover,
        MigrationStatus::Device,
        MigrationStatus::Completed,
        MigrationStatus::Failed,
        MigrationStatus::Cancelling,
        MigrationStatus::Cancelled,
    ];

    /// The QAPI name (`pre-switchover`).
    pub fn name(self) -> &'static str {
        match self {
            MigrationStatus::None => "none",
            MigrationStatus::Setup => "setup",
            MigrationStatus::Active => "active",
            MigrationStatus::PreSwitchover => "pre-switchover",
            MigrationStatus::Device => "device",
            MigrationStatus::Completed => "completed",
            MigrationStatus::Failed => "failed",
            MigrationStatus::Cancelling => "cancelling",
            MigrationStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a QAPI name.
    pub fn from_name(s: &str) -> Option<MigrationStatus> {
        MigrationStatus::ALL.into_iter().find(|m| m.name() == s)
    }

    /// QEMU's `migration_is_running()`: an outgoing migration occupies the source
    /// (a new `migrate` or `migrate-set-capabilities` is refused).
    pub fn is_running(self) -> bool {
        matches!(
            self,
            MigrationStatus::Setup
                | MigrationStatus::Active
                | MigrationStatus::PreSwitchover
                | MigrationStatus::Device
                | MigrationStatus::Cancelling
        )
    }

    /// A status that no longer changes without a new command.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            MigrationStatus::None
                | MigrationStatus::Completed
                | MigrationStatus::Failed
                | MigrationStatus::Cancelled
        )
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One step of a scenario. Field names are kebab-case in files.
///
/// Serde goes through a private mirror enum whose unit variants are empty structs, so that
/// `deny_unknown_fields` also rejects `op = "hold"` with stray fields. Integers must fit in `i64`
/// to be written as TOML.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "repr::OpRepr", into = "repr::OpRepr")]
pub enum Op {
    /// `migrate-set-parameters` on `side` with the given fields (absent fields are not sent).
    SetParameters {
        /// Which VMM.
        side: Side,
        /// `downtime-limit` in milliseconds (QEMU accepts at most 2000000).
        downtime_limit: Option<u64>,
        /// `max-bandwidth` in bytes/s (0 = unlimited).
        max_bandwidth: Option<Size>,
        /// `avail-switchover-bandwidth` in bytes/s (0 = estimate).
        avail_switchover_bandwidth: Option<Size>,
        /// `switchover-hold`.
        switchover_hold: Option<bool>,
    },
    /// `migrate-set-capabilities` on `side` with the given capabilities.
    SetCapabilities {
        /// Which VMM.
        side: Side,
        /// The `events` capability.
        events: Option<bool>,
        /// The `pause-before-switchover` capability.
        pause_before_switchover: Option<bool>,
    },
    /// Start a migration from the source to the current destination
    /// (`migrate-incoming` on a fresh destination first, then `migrate` on the source).
    Migrate {
        /// Overrides the pair's transport for this migration.
        transport: Option<Transport>,
    },
    /// Wait until the source's `dirty-sync-count` reaches `n`.
    WaitPasses {
        /// The pass count to reach.
        n: u64,
    },
    /// `switchover-hold = true` on the source.
    Hold,
    /// `switchover-hold = false` on the source.
    Release,
    /// `migrate_cancel` on the source.
    Cancel,
    /// `migrate-continue {state}` on the source.
    Continue {
        /// The status the source must be in (normally `pre-switchover`).
        state: MigrationStatus,
    },
    /// QMP `stop` on `side`.
    Stop {
        /// Which VMM.
        side: Side,
    },
    /// QMP `cont` on `side`.
    Cont {
        /// Which VMM.
        side: Side,
    },
    /// Wait until `side`'s migration status is `status` (ends early when it can no longer come).
    WaitStatus {
        /// Which VMM.
        side: Side,
        /// The status to wait for.
        status: MigrationStatus,
    },
    /// Wait until the migration completed on both sides.
    WaitCompleted,
    /// SIGKILL the VMM of `side`.
    Kill {
        /// Which VMM.
        side: Side,
    },
    /// Kill the current destination (if alive) and launch a fresh one waiting for incoming.
    RestartDestination,
    /// Byte-compare the guest memory of the stopped source and the held destination.
    CheckMemory,
    /// `cont` the destination if paused; its serial keeps printing and its memory keeps changing;
    /// `stop` it, check the A-B invariant, `cont` it again (it is left running).
    CheckDestinationRuns,
}

impl Op {
    /// The `op` tag as written in files.
    pub fn name(&self) -> &'static str {
        match self {
            Op::SetParameters { .. } => "set-parameters",
            Op::SetCapabilities { .. } => "set-capabilities",
            Op::Migrate { .. } => "migrate",
            Op::WaitPasses { .. } => "wait-passes",
            Op::Hold => "hold",
            Op::Release => "release",
            Op::Cancel => "cancel",
            Op::Continue { .. } => "continue",
            Op::Stop { .. } => "stop",
            Op::Cont { .. } => "cont",
            Op::WaitStatus { .. } => "wait-status",
            Op::WaitCompleted => "wait-completed",
            Op::Kill { .. } => "kill",
            Op::RestartDestination => "restart-destination",
            Op::CheckMemory => "check-memory",
            Op::CheckDestinationRuns => "check-destination-runs",
        }
    }

    /// A `set-parameters` op that sets only `switchover-hold`.
    pub fn set_hold(side: Side, hold: bool) -> Op {
        Op::SetParameters {
            side,
            downtime_limit: None,
            max_bandwidth: None,
            avail_switchover_bandwidth: None,
            switchover_hold: Some(hold),
        }
    }

    /// Waits that can block (for the executor's time budget).
    pub fn is_wait(&self) -> bool {
        matches!(
            self,
            Op::WaitPasses { .. } | Op::WaitStatus { .. } | Op::WaitCompleted
        )
    }
}

impl fmt::Display for Op {
    /// One line, JSON-ish: `wait-passes {"n":3}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        if let Some(m) = v.as_object_mut() {
            m.remove("op");
            if m.is_empty() {
                return f.write_str(self.name());
            }
        }
        write!(f, "{} {}", self.name(), v)
    }
}

mod repr {
    //! The serde shape of [`Op`](super::Op).
    use serde::{Deserialize, Serialize};

    use super::{MigrationStatus, Op, Side, Size, Transport};

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
    pub enum OpRepr {
        #[serde(rename_all = "kebab-case")]
        SetParameters {
            side: Side,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            downtime_limit: Option<u64>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            max_bandwidth: Option<Size>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            avail_switchover_bandwidth: Option<Size>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            switchover_hold: Option<bool>,
        },
        #[serde(rename_all = "kebab-case")]
        SetCapabilities {
            side: Side,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            events: Option<bool>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pause_before_switchover: Option<bool>,
        },
        Migrate {
            #[serde(default, skip_serializing_if = "Option::is_none")]
            transport: Option<Transport>,
        },
        WaitPasses {
            n: u64,
        },
        Hold {},
        Release {},
        Cancel {},
        Continue {
            state: MigrationStatus,
        },
        Stop {
            side: Side,
        },
        Cont {
            side: Side,
        },
        WaitStatus {
            side: Side,
            status: MigrationStatus,
        },
        WaitCompleted {},
        Kill {
            side: Side,
        },
        RestartDestination {},
        CheckMemory {},
        CheckDestinationRuns {},
    }

    impl From<OpRepr> for Op {
        fn from(r: OpRepr) -> Op {
            match r {
                OpRepr::SetParameters {
                    side,
                    downtime_limit,
                    max_bandwidth,
                    avail_switchover_bandwidth,
                    switchover_hold,
                } => Op::SetParameters {
                    side,
                    downtime_limit,
                    max_bandwidth,
                    avail_switchover_bandwidth,
                    switchover_hold,
                },
                OpRepr::SetCapabilities {
                    side,
                    events,
                    pause_before_switchover,
                } => Op::SetCapabilities {
                    side,
                    events,
                    pause_before_switchover,
                },
                OpRepr::Migrate { transport } => Op::Migrate { transport },
                OpRepr::WaitPasses { n } => Op::WaitPasses { n },
                OpRepr::Hold {} => Op::Hold,
                OpRepr::Release {} => Op::Release,
                OpRepr::Cancel {} => Op::Cancel,
                OpRepr::Continue { state } => Op::Continue { state },
                OpRepr::Stop { side } => Op::Stop { side },
                OpRepr::Cont { side } => Op::Cont { side },
                OpRepr::WaitStatus { side, status } => Op::WaitStatus { side, status },
                OpRepr::WaitCompleted {} => Op::WaitCompleted,
                OpRepr::Kill { side } => Op::Kill { side },
                OpRepr::RestartDestination {} => Op::RestartDestination,
                OpRepr::CheckMemory {} => Op::CheckMemory,
                OpRepr::CheckDestinationRuns {} => Op::CheckDestinationRuns,
            }
        }
    }

    impl From<Op> for OpRepr {
        fn from(o: Op) -> OpRepr {
            match o {
                Op::SetParameters {
                    side,
                    downtime_limit,
                    max_bandwidth,
                    avail_switchover_bandwidth,
                    switchover_hold,
                } => OpRepr::SetParameters {
                    side,
                    downtime_limit,
                    max_bandwidth,
                    avail_switchover_bandwidth,
                    switchover_hold,
                },
                Op::SetCapabilities {
                    side,
                    events,
                    pause_before_switchover,
                } => OpRepr::SetCapabilities {
                    side,
                    events,
                    pause_before_switchover,
                },
                Op::Migrate { transport } => OpRepr::Migrate { transport },
                Op::WaitPasses { n } => OpRepr::WaitPasses { n },
                Op::Hold => OpRepr::Hold {},
                Op::Release => OpRepr::Release {},
                Op::Cancel => OpRepr::Cancel {},
                Op::Continue { state } => OpRepr::Continue { state },
                Op::Stop { side } => OpRepr::Stop { side },
                Op::Cont { side } => OpRepr::Cont { side },
                Op::WaitStatus { side, status } => OpRepr::WaitStatus { side, status },
                Op::WaitCompleted => OpRepr::WaitCompleted {},
                Op::Kill { side } => OpRepr::Kill { side },
                Op::RestartDestination => OpRepr::RestartDestination {},
                Op::CheckMemory => OpRepr::CheckMemory {},
                Op::CheckDestinationRuns => OpRepr::CheckDestinationRuns {},
            }
        }
    }
}
