//! The op language: one [`Op`] is one step a scenario performs on the source/destination pair.
//!
//! Ops are serde enums tagged by `op` (kebab-case), so a scenario file lists them as
//! `[[ops]]` tables (`op = "migrate"`) and JSON as `{"op": "migrate"}`. Unknown fields are rejected.
//! See `docs/scenarios.md` for what each op does.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::size::Size;

pub use crate::side::Side;

pub use crate::pair::Transport;

/// QEMU's `MigrationStatus`, the QMP crate's type: the op language and the model use its
/// precopy statuses (`MigrationStatus::PRECOPY`).
pub use migtest_qmp::schema::MigrationStatus;

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
        /// `xbzrle-cache-size` in bytes (QEMU: a power of two, at least 4096).
        xbzrle_cache_size: Option<Size>,
    },
    /// `migrate-set-capabilities` on `side` with the given capabilities.
    SetCapabilities {
        /// Which VMM.
        side: Side,
        /// The `events` capability.
        events: Option<bool>,
        /// The `pause-before-switchover` capability.
        pause_before_switchover: Option<bool>,
        /// The `xbzrle` capability.
        xbzrle: Option<bool>,
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
            xbzrle_cache_size: None,
        }
    }

    /// The `migrate-set-parameters` arguments of a `set-parameters` op (QEMU's names, sizes
    /// in bytes, absent fields not sent); an empty object for any other op.
    pub fn parameter_arguments(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        let mut m = serde_json::Map::new();
        let Op::SetParameters {
            downtime_limit: d,
            max_bandwidth: b,
            avail_switchover_bandwidth: a,
            switchover_hold: h,
            xbzrle_cache_size: x,
            ..
        } = self
        else {
            return m;
        };
        let fields = [
            ("downtime-limit", d.map(|d| json!(d))),
            ("max-bandwidth", b.map(|b| json!(b.0))),
            ("avail-switchover-bandwidth", a.map(|a| json!(a.0))),
            ("switchover-hold", h.map(|h| json!(h))),
            ("xbzrle-cache-size", x.map(|x| json!(x.0))),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                m.insert(name.into(), v);
            }
        }
        m
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
            #[serde(default, skip_serializing_if = "Option::is_none")]
            xbzrle_cache_size: Option<Size>,
        },
        #[serde(rename_all = "kebab-case")]
        SetCapabilities {
            side: Side,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            events: Option<bool>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pause_before_switchover: Option<bool>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            xbzrle: Option<bool>,
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
                    xbzrle_cache_size,
                } => Op::SetParameters {
                    side,
                    downtime_limit,
                    max_bandwidth,
                    avail_switchover_bandwidth,
                    switchover_hold,
                    xbzrle_cache_size,
                },
                OpRepr::SetCapabilities {
                    side,
                    events,
                    pause_before_switchover,
                    xbzrle,
                } => Op::SetCapabilities {
                    side,
                    events,
                    pause_before_switchover,
                    xbzrle,
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
                    xbzrle_cache_size,
                } => OpRepr::SetParameters {
                    side,
                    downtime_limit,
                    max_bandwidth,
                    avail_switchover_bandwidth,
                    switchover_hold,
                    xbzrle_cache_size,
                },
                Op::SetCapabilities {
                    side,
                    events,
                    pause_before_switchover,
                    xbzrle,
                } => OpRepr::SetCapabilities {
                    side,
                    events,
                    pause_before_switchover,
                    xbzrle,
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
