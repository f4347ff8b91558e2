//! The telemetry records, one JSON object per line (`docs/telemetry.md`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the JSON Lines schema written in [`Record::Start`].
pub const SCHEMA_VERSION: u32 = 1;

/// One line of a telemetry file. `t` is seconds since the recording
/// started (monotonic clock of the harness).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Record {
    /// First line: what was recorded and how.
    Start {
        /// [`SCHEMA_VERSION`].
        schema: u32,
        /// Scenario name.
        scenario: String,
        /// Fixed sampling interval in ms (0: sampling was off).
        interval_ms: u64,
        /// Wall-clock time of `t = 0`, ms since the Unix epoch.
        unix_ms: u64,
    },
    /// A VMM was launched.
    Vm {
        /// Seconds since start.
        t: f64,
        /// "source", "destination".
        role: String,
        /// Guest name (`-name`).
        name: String,
        /// "builtin" or "qemu".
        backend: String,
        /// Process id.
        pid: u32,
        /// Its log directory.
        log_dir: String,
        /// Whether the sampler watches it (over its second QMP monitor).
        sampled: bool,
        /// Why it is not sampled, if it is not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// One `query-migrate` of the source, with the destination's status.
    Sample(Sample),
    /// A QMP event seen on a sampled VMM.
    Event {
        /// Seconds since start (when the harness received it).
        t: f64,
        /// Role of the VMM that sent it.
        vm: String,
        /// Event name (`MIGRATION`, `MIGRATION_PASS`, `STOP`, ...).
        event: String,
        /// Its `data`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
        /// The VMM's own timestamp, seconds since the Unix epoch.
        server_time: f64,
    },
    /// Something the scenario did to a VMM.
    Op {
        /// Seconds since start (just before it was sent).
        t: f64,
        /// Role of the VMM it was sent to.
        vm: String,
        /// [`Op`] name: `hold-set`, `hold-cleared`, `cancel`, `kill`, ...
        op: String,
        /// Arguments or details.
        #[serde(default, skip_serializing_if = "Value::is_null")]
        detail: Value,
    },
    /// Last line.
    End {
        /// Seconds since start.
        t: f64,
        /// "pass", "fail" or "skip".
        result: String,
        /// First line of the error, when it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Records left out because the recording reached its bound.
        dropped: u64,
    },
}

impl Record {
    /// Seconds since start (`Start`: 0).
    pub fn t(&self) -> f64 {
        match self {
            Record::Start { .. } => 0.0,
            Record::Sample(s) => s.t,
            Record::Vm { t, .. }
            | Record::Event { t, .. }
            | Record::Op { t, .. }
            | Record::End { t, .. } => *t,
        }
    }
}

/// One sample: the source's `query-migrate` (QEMU's field names in
/// `ram`), the destination's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since start.
    pub t: f64,
    /// Why it was taken: `interval`, `MIGRATION` or `MIGRATION_PASS`.
    pub trigger: String,
    /// Source migration status (absent before any migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `ram.dirty-sync-count`: the pass number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<u64>,
    /// `ram.transferred`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred: Option<u64>,
    /// `ram.remaining`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// `ram.total`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// `ram.dirty-pages-rate`, pages per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_pages_rate: Option<u64>,
    /// `ram.mbps`, megabits per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbps: Option<f64>,
    /// `cpu-throttle-percentage` (auto-converge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<u64>,
    /// `total-time`, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time_ms: Option<u64>,
    /// `expected-downtime`, ms (while active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_downtime_ms: Option<u64>,
    /// `downtime`, ms (once completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// The destination's migration status (absent: none yet, or no destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_status: Option<String>,
    /// Whether a destination answered (absent: no destination was launched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_alive: Option<bool>,
}

impl Sample {
    /// Reads the fields of a `query-migrate` reply.
    pub fn from_query_migrate(t: f64, trigger: &str, v: &Value) -> Sample {
        let ram = v.get("ram");
        let u = |o: Option<&Value>, k: &str| o.and_then(|o| o.get(k)).and_then(Value::as_u64);
        Sample {
            t,
            trigger: trigger.to_string(),
            status: v.get("status").and_then(Value::as_str).map(String::from),
            pass: u(ram, "dirty-sync-count"),
            transferred: u(ram, "transferred"),
            remaining: u(ram, "remaining"),
            total: u(ram, "total"),
            dirty_pages_rate: u(ram, "dirty-pages-rate"),
            mbps: ram.and_then(|r| r.get("mbps")).and_then(Value::as_f64),
            throttle: u(Some(v), "cpu-throttle-percentage"),
            total_time_ms: u(Some(v), "total-time"),
            expected_downtime_ms: u(Some(v), "expected-downtime"),
            downtime_ms: u(Some(v), "downtime"),
            dst_status: None,
            dst_alive: None,
        }
    }
}

/// The ops a telemetry file names (the `op` of [`Record::Op`]).
pub mod op {
    /// Switchover held (`switchover-hold: true`, or the legacy throttle).
    pub const HOLD_SET: &str = "hold-set";
    /// Hold released.
    pub const HOLD_CLEARED: &str = "hold-cleared";
    /// `migrate_cancel`.
    pub const CANCEL: &str = "cancel";
    /// The VMM was SIGKILLed.
    pub const KILL: &str = "kill";
    /// `migrate`.
    pub const MIGRATE: &str = "migrate";
    /// `migrate-incoming`.
    pub const MIGRATE_INCOMING: &str = "migrate-incoming";
    /// `migrate-continue`.
    pub const CONTINUE: &str = "continue";
    /// `migrate-set-parameters` other than the hold.
    pub const SET_PARAMETERS: &str = "set-parameters";
    /// `migrate-set-capabilities`.
    pub const SET_CAPABILITIES: &str = "set-capabilities";
    /// `stop`.
    pub const STOP: &str = "stop";
    /// `cont`.
    pub const CONT: &str = "cont";
}

/// The ops a QMP command stands for (none for queries and the like).
pub fn ops_of_command(name: &str, args: &Value) -> Vec<(&'static str, Value)> {
    let plain = |op: &'static str| vec![(op, args.clone())];
    match name {
        "migrate-set-parameters" => {
            let mut v = Vec::new();
            let mut rest = args.as_object().cloned().unwrap_or_default();
            if let Some(h) = rest.remove("switchover-hold") {
                let op = if h.as_bool() == Some(true) {
                    op::HOLD_SET
                } else {
                    op::HOLD_CLEARED
                };
                v.push((op, Value::Null));
            }
            if !rest.is_empty() {
                v.push((op::SET_PARAMETERS, Value::Object(rest)));
            }
            v
        }
        "migrate_cancel" => plain(op::CANCEL),
        "migrate" => plain(op::MIGRATE),
        "migrate-incoming" => plain(op::MIGRATE_INCOMING),
        "migrate-continue" => plain(op::CONTINUE),
        "migrate-set-capabilities" => plain(op::SET_CAPABILITIES),
        "stop" => plain(op::STOP),
        "cont" => plain(op::CONT),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hold_is_split_from_other_parameters() {
        let ops = ops_of_command(
            "migrate-set-parameters",
            &json!({"switchover-hold": true, "max-bandwidth": 5}),
        );
        assert_eq!(
            ops,
            [
                (op::HOLD_SET, Value::Null),
                (op::SET_PARAMETERS, json!({"max-bandwidth": 5}))
            ]
        );
        assert!(ops_of_command("query-migrate", &Value::Null).is_empty());
    }

    #[test]
    fn records_round_trip() {
        let s = Sample::from_query_migrate(
            1.5,
            "interval",
            &json!({"status": "active", "ram": {"dirty-sync-count": 3, "remaining": 10,
                "mbps": 812.5, "dirty-pages-rate": 7}, "cpu-throttle-percentage": 20}),
        );
        assert_eq!(s.pass, Some(3));
        assert_eq!(s.throttle, Some(20));
        let line = serde_json::to_string(&Record::Sample(s.clone())).unwrap();
        assert!(line.starts_with(r#"{"type":"sample","t":1.5"#), "{line}");
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, Record::Sample(s));
    }

    /// Scenario groups beyond precopy (auto-converge, multifd, postcopy)
    /// make `query-migrate` carry more members and statuses: the sampler
    /// keeps what it knows and ignores the rest, and a reader of a file
    /// with members it does not know still reads it.
    #[test]
    fn extra_query_migrate_members_are_tolerated() {
        let s = Sample::from_query_migrate(
            2.0,
            "MIGRATION",
            &json!({"status": "postcopy-active", "cpu-throttle-percentage": 99,
                "postcopy-blocktime": 12, "postcopy-vcpu-blocktime": [1, 2],
                "blocked-reasons": ["x"], "xbzrle-cache": {"cache-size": 1},
                "ram": {"dirty-sync-count": 4, "postcopy-requests": 9, "multifd-bytes": 5,
                    "precopy-bytes": 6, "remaining": 4096, "mbps": 1.5, "new-field": {"a": 1}},
                "vfio": {"transferred": 0}}),
        );
        assert_eq!(s.status.as_deref(), Some("postcopy-active"));
        assert_eq!(s.throttle, Some(99));
        assert_eq!((s.pass, s.remaining), (Some(4), Some(4096)));
        // A malformed member is left out, not an error.
        let odd = Sample::from_query_migrate(0.0, "interval", &json!({"ram": {"remaining": "x"}}));
        assert_eq!(odd.remaining, None);
        let line = r#"{"type":"sample","t":1.0,"trigger":"interval","status":"device","later":3}"#;
        let back: Record = serde_json::from_str(line).unwrap();
        assert!(
            matches!(back, Record::Sample(Sample { status: Some(ref st), .. }) if st == "device")
        );
    }
}
