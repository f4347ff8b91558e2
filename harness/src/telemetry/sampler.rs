//! The sampling thread: follows the current source and destination over
//! their second QMP monitors, takes a [`Sample`] every interval and at every
//! `MIGRATION` / `MIGRATION_PASS` event, and records every event it sees.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::record::{Record, Sample};
use super::Shared;
use crate::qmp_client::{QmpClient, ReceivedEvent};

/// Deadline of one sampling query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until `shared` says stop.
pub(super) fn run(shared: Arc<Shared>, interval: Duration) {
    let mut next = Instant::now();
    while !shared.stopped() {
        let Some(src) = shared.source() else {
            shared.pause(interval);
            next = Instant::now();
            continue;
        };
        let now = Instant::now();
        let event = src.next_event(next.saturating_duration_since(now));
        if let Some(e) = &event {
            record_event(&shared, "source", e);
        }
        let trigger = match &event {
            Some(e) if matches!(e.event.event.as_str(), "MIGRATION" | "MIGRATION_PASS") => {
                e.event.event.clone()
            }
            Some(_) => continue,
            None if src.disconnected().is_some() => {
                shared.forget(&src);
                continue;
            }
            None if Instant::now() >= next => {
                next += interval;
                if next < Instant::now() {
                    next = Instant::now() + interval;
                }
                "interval".to_string()
            }
            None => continue,
        };
        sample(&shared, &src, &trigger);
    }
}

fn record_event(shared: &Shared, role: &str, e: &ReceivedEvent) {
    let ts = &e.event.timestamp;
    shared.push(Record::Event {
        t: shared.t_of(e.received),
        vm: role.to_string(),
        event: e.event.event.clone(),
        data: e.event.data.clone(),
        server_time: ts.seconds as f64 + ts.microseconds as f64 / 1e6,
    });
}

fn sample(shared: &Shared, src: &QmpClient, trigger: &str) {
    let Ok(info) = src.execute_timeout("query-migrate", Value::Null, QUERY_TIMEOUT) else {
        return;
    };
    let mut s = Sample::from_query_migrate(shared.t(), trigger, &info);
    if let Some(dst) = shared.destination() {
        while let Some(e) = dst.next_event(Duration::ZERO) {
            record_event(shared, "destination", &e);
        }
        match dst.execute_timeout("query-migrate", Value::Null, QUERY_TIMEOUT) {
            Ok(v) => {
                s.dst_alive = Some(true);
                s.dst_status = v.get("status").and_then(Value::as_str).map(String::from);
            }
            Err(_) => s.dst_alive = Some(false),
        }
    }
    shared.push(Record::Sample(s));
}
