//! The migration-related part of QEMU's QAPI schema, as plain serde types.
//!
//! Optional members are `Option`s skipped when absent, so the same types
//! serialize the server's replies and deserialize QEMU's (unknown members
//! are ignored when deserializing).

use serde::{Deserialize, Serialize};

/// `MigrationStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    /// No migration has run.
    None,
    /// Setting up the connection.
    Setup,
    /// Cancel requested, cleaning up.
    Cancelling,
    /// Cancelled by the user.
    Cancelled,
    /// Precopy in progress.
    Active,
    /// Postcopy in progress.
    PostcopyActive,
    /// Postcopy paused (the channel broke during postcopy).
    PostcopyPaused,
    /// Postcopy recovery (not implemented by migtest-vmm).
    PostcopyRecover,
    /// Finished successfully.
    Completed,
    /// Failed; see `error-desc`.
    Failed,
    /// COLO mode (not implemented by migtest-vmm).
    Colo,
    /// Paused before device serialisation (`pause-before-switchover`).
    PreSwitchover,
    /// Serialising devices after `pre-switchover`.
    Device,
    /// Waiting for a guest unplug (not implemented by migtest-vmm).
    WaitUnplug,
}

impl MigrationStatus {
    /// Precopy's statuses.
    pub const PRECOPY: [MigrationStatus; 9] = [
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

    /// Precopy's statuses plus `postcopy-active` and `postcopy-paused`: the
    /// ones the harness's model and op language know.
    pub const MODELLED: [MigrationStatus; 11] = [
        MigrationStatus::None,
        MigrationStatus::Setup,
        MigrationStatus::Active,
        MigrationStatus::PreSwitchover,
        MigrationStatus::Device,
        MigrationStatus::PostcopyActive,
        MigrationStatus::PostcopyPaused,
        MigrationStatus::Completed,
        MigrationStatus::Failed,
        MigrationStatus::Cancelling,
        MigrationStatus::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            MigrationStatus::None => "none",
            MigrationStatus::Setup => "setup",
            MigrationStatus::Cancelling => "cancelling",
            MigrationStatus::Cancelled => "cancelled",
            MigrationStatus::Active => "active",
            MigrationStatus::PostcopyActive => "postcopy-active",
            MigrationStatus::PostcopyPaused => "postcopy-paused",
            MigrationStatus::PostcopyRecover => "postcopy-recover",
            MigrationStatus::Completed => "completed",
            MigrationStatus::Failed => "failed",
            MigrationStatus::Colo => "colo",
            MigrationStatus::PreSwitchover => "pre-switchover",
            MigrationStatus::Device => "device",
            MigrationStatus::WaitUnplug => "wait-unplug",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<MigrationStatus> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    /// Whether a migration in this status is still running (QEMU's `migration_is_running`).
    pub fn is_running(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Setup
                | MigrationStatus::Active
                | MigrationStatus::PreSwitchover
                | MigrationStatus::Device
                | MigrationStatus::Cancelling
                | MigrationStatus::PostcopyActive
                | MigrationStatus::PostcopyPaused
                | MigrationStatus::PostcopyRecover
                | MigrationStatus::Colo
                | MigrationStatus::WaitUnplug
        )
    }

    /// Whether the status is final for one migration.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }

    /// A status that no longer changes without a new command: a final one, or `none`.
    pub fn is_settled(&self) -> bool {
        *self == MigrationStatus::None || self.is_terminal()
    }
}

impl std::fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `RunState`, as reported by `query-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Stopped by the debugger.
    Debug,
    /// Waiting for an incoming migration.
    Inmigrate,
    /// Internal error.
    InternalError,
    /// I/O error.
    IoError,
    /// Paused by `stop`, or after an incoming migration with `-S`.
    Paused,
    /// Source after a successful migration.
    Postmigrate,
    /// Started with `-S`, never run.
    Prelaunch,
    /// Stopped for the final stage of a migration.
    FinishMigrate,
    /// Restoring a snapshot.
    RestoreVm,
    /// Running.
    Running,
    /// Saving a snapshot.
    SaveVm,
    /// Shut down.
    Shutdown,
    /// Suspended.
    Suspended,
    /// Watchdog fired.
    Watchdog,
    /// Guest panicked.
    GuestPanicked,
    /// COLO.
    Colo,
}

impl RunState {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunState::Debug => "debug",
            RunState::Inmigrate => "inmigrate",
            RunState::InternalError => "internal-error",
            RunState::IoError => "io-error",
            RunState::Paused => "paused",
            RunState::Postmigrate => "postmigrate",
            RunState::Prelaunch => "prelaunch",
            RunState::FinishMigrate => "finish-migrate",
            RunState::RestoreVm => "restore-vm",
            RunState::Running => "running",
            RunState::SaveVm => "save-vm",
            RunState::Shutdown => "shutdown",
            RunState::Suspended => "suspended",
            RunState::Watchdog => "watchdog",
            RunState::GuestPanicked => "guest-panicked",
            RunState::Colo => "colo",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<RunState> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs run.
    pub running: bool,
    /// Deprecated single-step flag (QEMU 7.2 still sends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub singlestep: Option<bool>,
    /// The run state.
    pub status: RunState,
}

/// `MigrationStats`, the `ram` member of `query-migrate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationStats {
    /// Bytes sent.
    pub transferred: u64,
    /// Bytes still to send.
    pub remaining: u64,
    /// Guest RAM size.
    pub total: u64,
    /// Zero pages sent.
    pub duplicate: u64,
    /// Obsolete counter, always 0.
    #[serde(default)]
    pub skipped: u64,
    /// Normal pages sent.
    pub normal: u64,
    /// Bytes of normal pages sent.
    pub normal_bytes: u64,
    /// Pages dirtied per second.
    pub dirty_pages_rate: u64,
    /// Throughput in megabits per second.
    pub mbps: f64,
    /// Number of dirty-bitmap syncs: the pass counter.
    pub dirty_sync_count: u64,
    /// Postcopy page requests.
    #[serde(default)]
    pub postcopy_requests: u64,
    /// Target page size.
    pub page_size: u64,
    /// Bytes sent over multifd channels.
    #[serde(default)]
    pub multifd_bytes: u64,
    /// Pages sent per second.
    pub pages_per_second: u64,
    /// Bytes sent during precopy.
    #[serde(default)]
    pub precopy_bytes: u64,
    /// Bytes sent while the guest was stopped.
    #[serde(default)]
    pub downtime_bytes: u64,
    /// Bytes sent during postcopy.
    #[serde(default)]
    pub postcopy_bytes: u64,
    /// Zero-copy sync misses.
    #[serde(default)]
    pub dirty_sync_missed_zero_copy: u64,
}

/// A `SocketAddress` as reported in `socket-address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SocketAddress {
    /// A TCP address (`port` is a string in QAPI).
    Inet {
        /// Host name or address.
        host: String,
        /// Port number, as a string.
        port: String,
    },
    /// A unix socket path.
    Unix {
        /// Socket path.
        path: String,
    },
}

impl SocketAddress {
    /// The migration URI that reaches this address.
    pub fn to_uri(&self) -> String {
        match self {
            SocketAddress::Inet { host, port } => format!("tcp:{host}:{port}"),
            SocketAddress::Unix { path } => format!("unix:{path}"),
        }
    }
}

/// The reply of `query-migrate` (`MigrationInfo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// Absent before any migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MigrationStatus>,
    /// RAM statistics, when active or completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<MigrationStats>,
    /// Milliseconds since start (or total when finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time: Option<u64>,
    /// Estimated downtime in ms, while active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_downtime: Option<u64>,
    /// Measured downtime in ms, after completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<u64>,
    /// Setup time in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_time: Option<u64>,
    /// Why a migration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_desc: Option<String>,
    /// Addresses an incoming migration listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_address: Option<Vec<SocketAddress>>,
    /// Total time vCPUs were blocked on postcopy page faults, ms
    /// (destination, with the `postcopy-blocktime` capability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcopy_blocktime: Option<u64>,
    /// Blockers (QEMU 7.2 sends an empty list flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_reasons: Option<Vec<String>>,
    /// auto-converge's vCPU throttle, %, while the source is throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_percentage: Option<u64>,
    /// XBZRLE statistics, while the source has the `xbzrle` capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xbzrle_cache: Option<XbzrleCacheStats>,
}

/// `XBZRLECacheStats`, the `xbzrle-cache` member of `query-migrate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct XbzrleCacheStats {
    /// `xbzrle-cache-size` in bytes.
    pub cache_size: u64,
    /// Bytes of XBZRLE-encoded pages sent (headers included, as QEMU counts).
    pub bytes: u64,
    /// Pages that hit the cache (encoded, skipped as unchanged, or overflowed).
    pub pages: u64,
    /// Pages not in the cache when sent.
    pub cache_miss: u64,
    /// Cache misses per page sent over the last rate period.
    pub cache_miss_rate: f64,
    /// Bytes of the pages encoded per byte of encoding, last rate period.
    pub encoding_rate: f64,
    /// Pages whose encoding would not fit in a page (sent whole).
    pub overflow: u64,
}

/// The reply of `query-migrate-parameters` (the subset migtest uses; other
/// members QEMU sends are ignored when reading).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationParameters {
    /// Maximum tolerated downtime in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_limit: Option<u64>,
    /// Bandwidth cap in bytes/s; 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
    /// Bandwidth assumed for the switchover decision (8.2+); 0 = measure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avail_switchover_bandwidth: Option<u64>,
    /// The proposed hold on precopy switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover_hold: Option<bool>,
    /// Page channels per migration with the `multifd` capability (1..=255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multifd_channels: Option<u8>,
    /// auto-converge's first throttle, %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_initial: Option<u8>,
    /// auto-converge's throttle step, %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_increment: Option<u8>,
    /// auto-converge: smaller steps near the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_tailslow: Option<bool>,
    /// auto-converge's ceiling, %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_throttle: Option<u8>,
    /// Bandwidth cap of postcopy's background pages in bytes/s; 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_postcopy_bandwidth: Option<u64>,
    /// Size of the source's XBZRLE page cache, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xbzrle_cache_size: Option<u64>,
}

/// One entry of `query-migrate-capabilities` / `migrate-set-capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCapabilityStatus {
    /// Capability name.
    pub capability: String,
    /// Whether it is on.
    pub state: bool,
}

/// The JSON type of `v` as QAPI shape comparisons name it (`null`, `bool`, `number`,
/// `string`, `array`, `object`).
pub fn json_type_name(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in MigrationStatus::PRECOPY {
            assert_eq!(MigrationStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(RunState::FinishMigrate.as_str(), "finish-migrate");
    }

    #[test]
    fn migration_info_tolerates_unknown_members() {
        let v = serde_json::json!({"status": "active", "new-thing": 1,
            "ram": {"transferred": 1, "remaining": 2, "total": 3, "duplicate": 0, "normal": 0,
                    "normal-bytes": 0, "dirty-pages-rate": 0, "mbps": 0.5, "dirty-sync-count": 2,
                    "page-size": 4096, "pages-per-second": 9, "future": true}});
        let info: MigrationInfo = serde_json::from_value(v).unwrap();
        assert_eq!(info.status, Some(MigrationStatus::Active));
        assert_eq!(info.ram.unwrap().dirty_sync_count, 2);
    }

    #[test]
    fn empty_info_is_empty_object() {
        assert_eq!(
            serde_json::to_value(MigrationInfo::default()).unwrap(),
            serde_json::json!({})
        );
    }
}
