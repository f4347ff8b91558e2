//! The vocabulary the model shares with the executor: run states, parameters, capabilities,
//! events, and the [`Observation`] the executor records after each op.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::scenario::{MigrationStatus, Op, Size};

/// QEMU's `RunState` (`query-status`), the QMP crate's type.
pub use migtest_qmp::schema::RunState;

/// QEMU's limit for `downtime-limit`: 2000 s in ms.
pub const MAX_DOWNTIME_LIMIT_MS: u64 = 2_000_000;

/// The migration parameters the model tracks, per side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Parameters {
    /// ms; default 300.
    pub downtime_limit: u64,
    /// bytes/s; default 128 MiB/s; 0 = unlimited.
    pub max_bandwidth: Size,
    /// bytes/s; default 0 (estimate).
    pub avail_switchover_bandwidth: Size,
    /// default false.
    pub switchover_hold: bool,
    /// `multifd-channels`: 1..=255, default 2.
    pub multifd_channels: u8,
    /// auto-converge's throttle parameters.
    #[serde(default)]
    pub throttle: super::auto_converge::Throttle,
    /// bytes; default 64 MiB (QEMU's); a power of two, at least a page.
    #[serde(default = "super::world::xbzrle::default_cache_size")]
    pub xbzrle_cache_size: Size,
    /// `max-postcopy-bandwidth`, bytes/s for postcopy's background pages; default 0
    /// (unlimited); any value, at any time (no range check in QEMU 7.2).
    #[serde(default)]
    pub max_postcopy_bandwidth: Size,
}

impl Default for Parameters {
    fn default() -> Parameters {
        Parameters {
            downtime_limit: 300,
            max_bandwidth: Size(134_217_728),
            avail_switchover_bandwidth: Size(0),
            switchover_hold: false,
            multifd_channels: super::multifd::DEFAULT_CHANNELS,
            throttle: Default::default(),
            xbzrle_cache_size: super::world::xbzrle::default_cache_size(),
            max_postcopy_bandwidth: Size(0),
        }
    }
}

impl Parameters {
    /// What a `set-parameters` op sets: its present fields replace these (other ops change
    /// nothing). Read from the op's QMP arguments, so each parameter is named in one place.
    pub fn update(&mut self, op: &Op) {
        for (name, v) in op.parameter_arguments() {
            match (name.as_str(), v.as_u64()) {
                ("downtime-limit", Some(n)) => self.downtime_limit = n,
                ("max-bandwidth", Some(n)) => self.max_bandwidth = Size(n),
                ("avail-switchover-bandwidth", Some(n)) => {
                    self.avail_switchover_bandwidth = Size(n)
                }
                // Only a valid count is ever applied (see `multifd::channels_parse_error`).
                ("multifd-channels", Some(n)) => {
                    if let Ok(c) = u8::try_from(n) {
                        self.multifd_channels = c;
                    }
                }
                ("xbzrle-cache-size", Some(n)) => self.xbzrle_cache_size = Size(n),
                ("max-postcopy-bandwidth", Some(n)) => self.max_postcopy_bandwidth = Size(n),
                ("switchover-hold", _) => {
                    self.switchover_hold = v.as_bool().unwrap_or(self.switchover_hold)
                }
                _ => {}
            }
        }
    }
}

/// Bandwidth the model assumes a migration really reaches when not capped lower (bytes/s).
pub const ASSUMED_LINK_BANDWIDTH: u64 = 128 << 20;

impl Parameters {
    /// Whether an un-held precopy migration of `memory` bytes is guaranteed to switch over in
    /// bounded time, whatever the guest dirties: passes must be quick
    /// ([`Parameters::passes_are_quick`]) and the switchover threshold (bandwidth x downtime)
    /// must cover twice the guest RAM. The bandwidth is `avail-switchover-bandwidth` when set,
    /// else `max-bandwidth` capped at [`ASSUMED_LINK_BANDWIDTH`].
    pub fn converges(&self, memory: Size) -> bool {
        if !self.passes_are_quick(memory) {
            return false;
        }
        let bw = if self.avail_switchover_bandwidth.0 > 0 {
            self.avail_switchover_bandwidth.0
        } else if self.max_bandwidth.0 == 0 {
            ASSUMED_LINK_BANDWIDTH
        } else {
            self.max_bandwidth.0.min(ASSUMED_LINK_BANDWIDTH)
        };
        let threshold = (bw as u128) * (self.downtime_limit as u128) / 1000;
        threshold >= 2 * memory.0 as u128
    }

    /// Whether one full pass over `memory` bytes takes at most 4 s at `max-bandwidth`
    /// (so waiting for a few passes is bounded).
    pub fn passes_are_quick(&self, memory: Size) -> bool {
        quick_at(self.max_bandwidth, memory)
    }

    /// Whether postcopy's background sender gets through `memory` bytes in at most 4 s at
    /// `max-postcopy-bandwidth`, so that postcopy surely ends within a wait (a destination
    /// that does not run the guest requests no page: only the background sender moves on).
    pub fn postcopy_is_quick(&self, memory: Size) -> bool {
        quick_at(self.max_postcopy_bandwidth, memory)
    }
}

/// Whether `memory` bytes go in at most 4 s at `bandwidth` bytes/s (0: unlimited).
fn quick_at(bandwidth: Size, memory: Size) -> bool {
    bandwidth.0 == 0 || memory.0 <= bandwidth.0.saturating_mul(4)
}

/// The migration capabilities the model tracks, per side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Capabilities {
    /// `events`: MIGRATION / MIGRATION_PASS events are sent.
    pub events: bool,
    /// `pause-before-switchover`.
    pub pause_before_switchover: bool,
    /// `multifd`: pages over `multifd-channels` extra connections.
    pub multifd: bool,
    /// `auto-converge`: the source throttles its vCPUs when the guest outruns the migration.
    #[serde(default)]
    pub auto_converge: bool,
    /// `xbzrle`.
    #[serde(default)]
    pub xbzrle: bool,
    /// `postcopy-ram`.
    #[serde(default)]
    pub postcopy_ram: bool,
}

/// A QMP event the executor received from one VMM, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// `MIGRATION {status}`.
    Migration {
        /// The new status.
        status: MigrationStatus,
    },
    /// `MIGRATION_PASS {pass}` (source).
    MigrationPass {
        /// The dirty-sync-count of the pass.
        pass: u64,
    },
    /// `STOP`.
    Stop,
    /// `RESUME`.
    Resume,
}

/// What the executor saw of one VMM after an op settled. `None` fields were not observed and are
/// not judged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SideObservation {
    /// Whether the process is alive (`false`: exited or killed).
    pub alive: bool,
    /// `query-migrate` status (`None` status value when it returned `{}`).
    pub status: Option<MigrationStatus>,
    /// `query-status` run state.
    pub run_state: Option<RunState>,
    /// `ram.dirty-sync-count` when `query-migrate` had `ram`.
    pub dirty_sync_count: Option<u64>,
    /// `cpu-throttle-percentage` of `query-migrate` (auto-converge), when shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle: Option<u64>,
    /// Events received since the previous observation, in order.
    pub events: Vec<Event>,
}

impl SideObservation {
    /// A dead process: nothing else observed.
    pub fn dead() -> SideObservation {
        SideObservation {
            alive: false,
            ..SideObservation::default()
        }
    }
}

/// How the op itself ended, as the executor reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// QMP `return` (or, for waits, kills and checks: done, passed).
    Ok,
    /// QMP `error`.
    Error {
        /// `class`, e.g. `GenericError`.
        class: String,
        /// `desc`.
        desc: String,
    },
    /// The op targets a VMM whose process is not alive; nothing was sent.
    Dead,
    /// The executor did not perform the op: its preconditions do not hold (e.g. check-memory
    /// without a completed migration).
    Refused {
        /// Why.
        reason: String,
    },
    /// A wait ran out of time.
    Timeout,
    /// A wait gave up early: the awaited status or pass count can no longer come
    /// (see [`crate::model::wait_gives_up`]).
    Unreachable {
        /// The status that ended the wait.
        status: MigrationStatus,
    },
    /// A check (check-memory, check-destination-runs) ran and failed.
    CheckFailed {
        /// What differed.
        reason: String,
    },
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ok => f.write_str("ok"),
            Reply::Error { class, desc } => write!(f, "{class} {desc:?}"),
            Reply::Dead => f.write_str("dead"),
            Reply::Refused { reason } => write!(f, "refused ({reason})"),
            Reply::Timeout => f.write_str("timeout"),
            Reply::Unreachable { status } => write!(f, "unreachable (status {status})"),
            Reply::CheckFailed { reason } => write!(f, "check failed ({reason})"),
        }
    }
}

/// Everything the executor reports after performing one op and letting it settle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Observation {
    /// How the op ended.
    pub reply: Reply,
    /// The source afterwards.
    pub source: SideObservation,
    /// The destination afterwards.
    pub destination: SideObservation,
}

impl Observation {
    /// The observation of `side`.
    pub fn side(&self, side: crate::scenario::Side) -> &SideObservation {
        match side {
            crate::scenario::Side::Source => &self.source,
            crate::scenario::Side::Destination => &self.destination,
        }
    }

    /// Mutable access to the observation of `side`.
    pub fn side_mut(&mut self, side: crate::scenario::Side) -> &mut SideObservation {
        match side {
            crate::scenario::Side::Source => &mut self.source,
            crate::scenario::Side::Destination => &mut self.destination,
        }
    }
}
