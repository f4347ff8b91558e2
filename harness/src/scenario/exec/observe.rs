//! Observing the pair after an op: `query-status`, `query-migrate` and the events up to that
//! reply, per side, as the model's [`Observation`].

use std::time::Duration;

use serde_json::Value;

use crate::model::{Event, Observation, Reply, SideObservation};
use crate::vm::Vm;

use super::super::MigrationStatus;
use super::Executor;

impl Executor {
    /// Observes the destination, then the source.
    pub(super) fn observe(&mut self, reply: Reply) -> anyhow::Result<Observation> {
        let destination = observe_side(self.pair.dst.as_ref(), &mut self.dst_events)?;
        let source = observe_side(Some(&self.pair.src), &mut self.src_events)?;
        Ok(Observation {
            reply,
            source,
            destination,
        })
    }
}

fn event(e: &migtest_qmp::message::Event) -> Option<Event> {
    let data = e.data.as_ref();
    match e.event.as_str() {
        "MIGRATION" => data
            .and_then(|d| d.get("status"))
            .and_then(Value::as_str)
            .and_then(MigrationStatus::parse)
            .map(|status| Event::Migration { status }),
        "MIGRATION_PASS" => data
            .and_then(|d| d.get("pass"))
            .and_then(Value::as_u64)
            .map(|pass| Event::MigrationPass { pass }),
        "STOP" => Some(Event::Stop),
        "RESUME" => Some(Event::Resume),
        _ => None,
    }
}

/// How many times a side is read again when its run state changed between the two
/// `query-status` of one reading.
const CONSISTENT_TRIES: usize = 5;

/// `query-status`, `query-migrate`, `query-status` again, then the events that arrived up to
/// the `query-migrate` reply; `cursor` counts the events of `vm` already reported. When the
/// two run states differ (the VM stopped or started between the queries, e.g. as the
/// migration thread ended), the side is read again, so that the migration status and the run
/// state reported are of one moment. No VM (after a failed `restart-destination`) is seen as
/// dead.
fn observe_side(vm: Option<&Vm>, cursor: &mut usize) -> anyhow::Result<SideObservation> {
    let Some(vm) = vm else {
        return Ok(SideObservation::dead());
    };
    let dead = |cursor: &mut usize| {
        *cursor = vm.qmp().events_seen().len();
        Ok(SideObservation::dead())
    };
    if !vm.is_alive() {
        return dead(cursor);
    }
    let mut tries = 0;
    let (st, info, upto) = loop {
        let Some(st) = query_or_dead(vm, Vm::query_status)? else {
            return dead(cursor);
        };
        let Some(info) = query_or_dead(vm, Vm::query_migrate)? else {
            return dead(cursor);
        };
        // Only the events written before the query-migrate reply (later ones belong to the
        // next observation).
        let upto = vm.qmp().events_seen_before_last_reply();
        let Some(again) = query_or_dead(vm, Vm::query_status)? else {
            return dead(cursor);
        };
        tries += 1;
        if again.status == st.status || tries == CONSISTENT_TRIES {
            break (st, info, upto);
        }
    };
    let seen = vm.qmp().events_seen();
    vm.qmp().drain_events();
    let upto = upto.min(seen.len());
    let from = (*cursor).min(upto);
    let events = seen[from..upto].iter().filter_map(event).collect();
    *cursor = upto;
    Ok(SideObservation {
        alive: true,
        status: Some(info.status.unwrap_or(MigrationStatus::None)),
        run_state: Some(st.status),
        dirty_sync_count: info.ram.as_ref().map(|r| r.dirty_sync_count),
        cpu_throttle: info.cpu_throttle_percentage,
        events,
    })
}

/// `query(vm)`, or `None` when it failed because the VM exited.
fn query_or_dead<T>(
    vm: &Vm,
    query: impl Fn(&Vm) -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    match query(vm) {
        Ok(v) => Ok(Some(v)),
        Err(_) if vm.wait_exit(Duration::from_millis(500)).is_some() => Ok(None),
        Err(e) => Err(e),
    }
}
