//! Performing one op on the live pair: the QMP commands behind each [`Op`], migrating over a
//! transport, waits with deadlines, and the memory and destination checks.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::model::{wait_gives_up, Reply};
use crate::pair::Leave;

use super::super::{MigrationStatus, Op, Side, Transport};
use super::Executor;

impl Executor {
    pub(super) fn perform(&mut self, op: &Op) -> anyhow::Result<Reply> {
        match op {
            Op::SetParameters { side, .. } => {
                let args = Value::Object(op.parameter_arguments());
                self.qmp(*side, "migrate-set-parameters", args)
            }
            Op::Hold {} => self.perform(&Op::set_hold(Side::Source, true)),
            Op::Release {} => self.perform(&Op::set_hold(Side::Source, false)),
            Op::SetCapabilities { side, .. } => self.qmp(
                *side,
                "migrate-set-capabilities",
                json!({ "capabilities": op.capability_list() }),
            ),
            Op::Migrate { transport } => {
                self.migrate(transport.unwrap_or(self.pair.spec.pair.transport))
            }
            Op::WaitPasses { n } => self.wait(op, Side::Source, |s, count| {
                if count >= *n {
                    Some(Reply::Ok)
                } else if wait_gives_up(op, s) {
                    Some(Reply::Unreachable { status: s })
                } else {
                    None
                }
            }),
            Op::SetAutoConverge { .. } | Op::SetThrottle { .. } | Op::WaitThrottled {} => {
                self.perform_auto_converge(op)
            }
            Op::Cancel {} => self.qmp(Side::Source, "migrate_cancel", Value::Null),
            Op::StartPostcopy {} => self.qmp(Side::Source, "migrate-start-postcopy", Value::Null),
            Op::Continue { state } => self.qmp(
                Side::Source,
                "migrate-continue",
                json!({ "state": state.as_str() }),
            ),
            Op::Stop { side } => self.qmp(*side, "stop", Value::Null),
            Op::Cont { side } => self.qmp(*side, "cont", Value::Null),
            Op::WaitStatus { side, status } => self.wait(op, *side, |s, _| {
                if s == *status {
                    Some(Reply::Ok)
                } else if wait_gives_up(op, s) {
                    Some(Reply::Unreachable { status: s })
                } else {
                    None
                }
            }),
            Op::WaitCompleted {} => {
                let r = self.wait(op, Side::Source, |s, _| {
                    if s == MigrationStatus::Completed {
                        Some(Reply::Ok)
                    } else if wait_gives_up(op, s) {
                        Some(Reply::Unreachable { status: s })
                    } else {
                        None
                    }
                })?;
                if r != Reply::Ok || !self.vm(Side::Destination)?.is_alive() || !self.dst_used {
                    return Ok(r);
                }
                // Then the destination that took the stream (not a fresh one started after
                // the migration): completed (or failed / gone).
                let d = self.wait(op, Side::Destination, |s, _| {
                    matches!(s, MigrationStatus::Completed | MigrationStatus::Failed)
                        .then_some(Reply::Ok)
                })?;
                Ok(match d {
                    Reply::Dead => Reply::Ok,
                    other => other,
                })
            }
            Op::Kill { side } => {
                let vm = self.vm(*side)?;
                if vm.is_alive() {
                    vm.kill();
                }
                Ok(Reply::Ok)
            }
            Op::RestartDestination {} => {
                let old = self.vm(Side::Destination)?;
                if old.is_alive() {
                    old.kill();
                }
                self.pair
                    .restart_destination_deferred()
                    .context("launching a fresh destination")?;
                self.dst_events = self.vm(Side::Destination)?.qmp().events_seen().len();
                self.dst_used = false;
                Ok(Reply::Ok)
            }
            Op::CheckMemory {} => Ok(match self.check_memory() {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::CheckFailed {
                    reason: format!("{e:#}"),
                },
            }),
            Op::CheckDestinationRuns {} => Ok(match self.check_destination_runs() {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::CheckFailed {
                    reason: format!("{e:#}"),
                },
            }),
        }
    }

    /// `migrate-incoming` on a fresh destination (unless the source is busy or postmigrate,
    /// in which case `migrate` is refused anyway), then `migrate` on the source. A destination that is not
    /// waiting for incoming leaves the source pointed at the last address, where nothing
    /// listens.
    fn migrate(&mut self, transport: Transport) -> anyhow::Result<Reply> {
        let src = &self.pair.src;
        if !src.is_alive() {
            return Ok(Reply::Dead);
        }
        let busy = src
            .query_migrate()
            .ok()
            .and_then(|i| i.status)
            .is_some_and(|s| s.is_running())
            // QEMU refuses `migrate` from a source still postmigrate.
            || src
                .query_status()
                .is_ok_and(|st| st.status.as_str() == "postmigrate");
        if !busy && !self.dst_used && self.vm(Side::Destination)?.is_alive() {
            self.dst_used = true;
            let listen = self.pair.listen_uri(transport)?;
            if self.qmp(
                Side::Destination,
                "migrate-incoming",
                json!({ "uri": listen }),
            )? == Reply::Ok
            {
                self.last_uri = self.pair.connect_uri().ok();
            }
        }
        let uri = match &self.last_uri {
            Some(u) => u.clone(),
            None => match transport {
                Transport::Unix => format!(
                    "unix:{}",
                    self.scratch.path().join("nobody-listens").display()
                ),
                Transport::Tcp => "tcp:127.0.0.1:1".to_string(),
            },
        };
        self.pair
            .src
            .await_migration_cleanup(self.opts.wait_timeout)?;
        self.qmp(Side::Source, "migrate", json!({ "uri": uri }))
    }

    /// Polls `side`'s `query-migrate` every 5 ms until `done` says how the wait ends (from the
    /// status and `dirty-sync-count`), the side dies (`Dead`) or the deadline passes (`Timeout`).
    fn wait(
        &self,
        op: &Op,
        side: Side,
        done: impl Fn(MigrationStatus, u64) -> Option<Reply>,
    ) -> anyhow::Result<Reply> {
        self.wait_info(op, side, |info| {
            let status = info.status.unwrap_or(MigrationStatus::None);
            done(status, info.ram.as_ref().map_or(0, |r| r.dirty_sync_count))
        })
    }

    /// [`Executor::wait`] judging the whole `query-migrate` reply.
    pub(super) fn wait_info(
        &self,
        op: &Op,
        side: Side,
        done: impl Fn(&migtest_qmp::schema::MigrationInfo) -> Option<Reply>,
    ) -> anyhow::Result<Reply> {
        let vm = self.vm(side)?;
        let deadline = Instant::now() + self.opts.wait_timeout;
        loop {
            if !vm.is_alive() {
                return Ok(Reply::Dead);
            }
            let info = match vm.query_migrate() {
                Ok(i) => i,
                Err(_) if vm.wait_exit(Duration::from_millis(500)).is_some() => {
                    return Ok(Reply::Dead)
                }
                Err(e) => return Err(e.context(format!("{side}: waiting ({op})"))),
            };
            if let Some(r) = done(&info) {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                return Ok(Reply::Timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Byte-compares all guest RAM of the source and the destination.
    fn check_memory(&self) -> anyhow::Result<()> {
        self.settle_destination()?;
        // On QEMU's PC machines the first MiB holds BIOS/option-ROM shadows (PAM) that
        // pmemsave reads differently on the two sides: compare from 1 MiB there.
        let start = if self.pair.spec.dst_backend.is_qemu() {
            1 << 20
        } else {
            0
        };
        let range = (start, self.pair.spec.memory_bytes());
        self.pair
            .compare_range(self.pair.dst()?, range)?
            .map(|_pages| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Waits (bounded) until the destination's incoming migration has ended: the source
    /// may report `completed` while the destination still loads.
    fn settle_destination(&self) -> anyhow::Result<()> {
        let r = self.wait(&Op::WaitCompleted {}, Side::Destination, |s, _| {
            s.is_settled().then_some(Reply::Ok)
        })?;
        anyhow::ensure!(
            r == Reply::Ok,
            "destination did not finish loading the migration: {r}"
        );
        Ok(())
    }

    /// [`crate::pair::Pair::destination_runs`] (the catalog's
    /// `Pair::assert_destination_runs`), leaving the destination running.
    fn check_destination_runs(&self) -> anyhow::Result<()> {
        self.settle_destination()?;
        self.pair.destination_runs(Leave::Running)
    }
}
