//! The op language: one [`Op`] is one step a scenario performs on the source/destination pair.
//!
//! Ops are serde enums tagged by `op` (kebab-case), so a scenario file lists them as
//! `[[ops]]` tables (`op = "migrate"`) and JSON as `{"op": "migrate"}`. Unknown fields are rejected.
//! See `docs/scenarios.md` for what each op does.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::size::Size;

pub use crate::side::Side;

pub use crate::pair::Transport;

/// QEMU's `MigrationStatus`, the QMP crate's type: the op language and the model use its
/// precopy statuses (`MigrationStatus::PRECOPY`) and `postcopy-active`/`postcopy-paused`
/// ([`crate::model::STATUSES`]).
pub use migtest_qmp::schema::MigrationStatus;

/// One step of a scenario. Field names are kebab-case in files.
///
/// Ops without fields are empty struct variants (`Op::Hold {}`), not unit variants: serde's
/// `deny_unknown_fields` does not apply to unit variants of an internally tagged enum, and
/// `op = "hold"` with a stray field must be rejected like any other op. Integers must fit in
/// `i64` to be written as TOML.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Op {
    /// `migrate-set-parameters` on `side` with the given fields (absent fields are not sent).
    #[serde(rename_all = "kebab-case")]
    SetParameters {
        /// Which VMM.
        side: Side,
        /// `downtime-limit` in milliseconds (QEMU accepts at most 2000000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        downtime_limit: Option<u64>,
        /// `max-bandwidth` in bytes/s (0 = unlimited).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bandwidth: Option<Size>,
        /// `avail-switchover-bandwidth` in bytes/s (0 = estimate).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        avail_switchover_bandwidth: Option<Size>,
        /// `switchover-hold`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        switchover_hold: Option<bool>,
        /// `multifd-channels` (QEMU: 1..=255, default 2; any other value is refused).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        multifd_channels: Option<u64>,
        /// `xbzrle-cache-size` in bytes (QEMU: a power of two, at least 4096).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        xbzrle_cache_size: Option<Size>,
        /// `max-postcopy-bandwidth` in bytes/s for postcopy's background pages (0 =
        /// unlimited; QEMU 7.2 accepts any value, at any time).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_postcopy_bandwidth: Option<Size>,
    },
    /// `migrate-set-capabilities` on `side` with the given capabilities.
    #[serde(rename_all = "kebab-case")]
    SetCapabilities {
        /// Which VMM.
        side: Side,
        /// The `events` capability.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        events: Option<bool>,
        /// The `pause-before-switchover` capability.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pause_before_switchover: Option<bool>,
        /// The `multifd` capability.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        multifd: Option<bool>,
        /// The `xbzrle` capability.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        xbzrle: Option<bool>,
        /// The `postcopy-ram` capability (needed on both sides for postcopy).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        postcopy_ram: Option<bool>,
    },
    /// Start a migration from the source to the current destination
    /// (`migrate-incoming` on a fresh destination first, then `migrate` on the source).
    Migrate {
        /// Overrides the pair's transport for this migration.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transport: Option<Transport>,
    },
    /// Wait until the source's `dirty-sync-count` reaches `n`.
    WaitPasses {
        /// The pass count to reach.
        n: u64,
    },
    /// `switchover-hold = true` on the source.
    Hold {},
    /// `switchover-hold = false` on the source.
    Release {},
    /// `migrate_cancel` on the source.
    Cancel {},
    /// `migrate-start-postcopy` on the source: a precopy migration switches to postcopy.
    StartPostcopy {},
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
    WaitCompleted {},
    /// SIGKILL the VMM of `side`.
    Kill {
        /// Which VMM.
        side: Side,
    },
    /// Kill the current destination (if alive) and launch a fresh one waiting for incoming.
    RestartDestination {},
    /// Byte-compare the guest memory of the stopped source and the held destination.
    CheckMemory {},
    /// `cont` the destination if paused; its serial keeps printing and its memory keeps changing;
    /// `stop` it, check the A-B invariant, `cont` it again (it is left running).
    CheckDestinationRuns {},
    /// `migrate-set-capabilities` with only `auto-converge` on `side`.
    SetAutoConverge {
        /// Which VMM.
        side: Side,
        /// The capability's state.
        state: bool,
    },
    /// `migrate-set-parameters` with auto-converge's throttle parameters on `side` (absent
    /// fields are not sent; QEMU range-checks the result).
    #[serde(rename_all = "kebab-case")]
    SetThrottle {
        /// Which VMM.
        side: Side,
        /// `cpu-throttle-initial`, % (1..=99).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu_throttle_initial: Option<u8>,
        /// `cpu-throttle-increment`, % (1..=99).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu_throttle_increment: Option<u8>,
        /// `cpu-throttle-tailslow`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu_throttle_tailslow: Option<bool>,
        /// `max-cpu-throttle`, % (`cpu-throttle-initial`..=99).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_cpu_throttle: Option<u8>,
    },
    /// Wait until the source's `query-migrate` shows `cpu-throttle-percentage` (ends early when
    /// the migration ends).
    WaitThrottled {},
}

impl Op {
    /// A `set-parameters` op on `side` with no member set; callers set the ones they need
    /// through a `let Op::SetParameters { .. } = &mut op` binding.
    pub fn no_parameters(side: Side) -> Op {
        Op::SetParameters {
            side,
            downtime_limit: None,
            max_bandwidth: None,
            avail_switchover_bandwidth: None,
            switchover_hold: None,
            multifd_channels: None,
            xbzrle_cache_size: None,
            max_postcopy_bandwidth: None,
        }
    }

    /// The `op` tag as written in files.
    pub fn name(&self) -> &'static str {
        match self {
            Op::SetParameters { .. } => "set-parameters",
            Op::SetCapabilities { .. } => "set-capabilities",
            Op::Migrate { .. } => "migrate",
            Op::WaitPasses { .. } => "wait-passes",
            Op::Hold {} => "hold",
            Op::Release {} => "release",
            Op::Cancel {} => "cancel",
            Op::StartPostcopy {} => "start-postcopy",
            Op::Continue { .. } => "continue",
            Op::Stop { .. } => "stop",
            Op::Cont { .. } => "cont",
            Op::WaitStatus { .. } => "wait-status",
            Op::WaitCompleted {} => "wait-completed",
            Op::Kill { .. } => "kill",
            Op::RestartDestination {} => "restart-destination",
            Op::CheckMemory {} => "check-memory",
            Op::CheckDestinationRuns {} => "check-destination-runs",
            Op::SetAutoConverge { .. } => "set-auto-converge",
            Op::SetThrottle { .. } => "set-throttle",
            Op::WaitThrottled {} => "wait-throttled",
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
            multifd_channels: None,
            xbzrle_cache_size: None,
            max_postcopy_bandwidth: None,
        }
    }

    /// The `migrate-set-parameters` arguments of a `set-parameters` op (QEMU's names, sizes
    /// in bytes, absent fields not sent); an empty object for any other op.
    pub fn parameter_arguments(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        let mut m = serde_json::Map::new();
        let Op::SetParameters {
            downtime_limit,
            max_bandwidth,
            avail_switchover_bandwidth,
            switchover_hold,
            multifd_channels,
            xbzrle_cache_size,
            max_postcopy_bandwidth,
            ..
        } = self
        else {
            return m;
        };
        let fields = [
            ("downtime-limit", downtime_limit.map(|d| json!(d))),
            ("max-bandwidth", max_bandwidth.map(|b| json!(b.0))),
            (
                "avail-switchover-bandwidth",
                avail_switchover_bandwidth.map(|a| json!(a.0)),
            ),
            ("switchover-hold", switchover_hold.map(|h| json!(h))),
            ("multifd-channels", multifd_channels.map(|c| json!(c))),
            ("xbzrle-cache-size", xbzrle_cache_size.map(|x| json!(x.0))),
            (
                "max-postcopy-bandwidth",
                max_postcopy_bandwidth.map(|b| json!(b.0)),
            ),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                m.insert(name.into(), v);
            }
        }
        m
    }

    /// The `migrate-set-capabilities` list of a `set-capabilities` op (QEMU's names, absent
    /// capabilities not sent); empty for any other op.
    pub fn capability_list(&self) -> Vec<serde_json::Value> {
        let Op::SetCapabilities {
            events,
            pause_before_switchover,
            multifd,
            xbzrle,
            postcopy_ram,
            ..
        } = self
        else {
            return Vec::new();
        };
        [
            ("events", events),
            ("pause-before-switchover", pause_before_switchover),
            ("multifd", multifd),
            ("xbzrle", xbzrle),
            ("postcopy-ram", postcopy_ram),
        ]
        .into_iter()
        .filter_map(|(name, state)| {
            state.map(|s| serde_json::json!({"capability": name, "state": s}))
        })
        .collect()
    }

    /// Waits that can block (for the executor's time budget).
    pub fn is_wait(&self) -> bool {
        matches!(
            self,
            Op::WaitPasses { .. }
                | Op::WaitStatus { .. }
                | Op::WaitCompleted {}
                | Op::WaitThrottled {}
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
