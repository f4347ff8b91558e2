//! A source/destination pair of VMMs and the qtest-style steps of a
//! migration test: launch, hold switchover, count passes, release,
//! converge, compare memory, check that the destination runs on.

use crate::checks::{self, MemoryMismatch};
use crate::diagnostics::Context as Diagnostics;
use crate::vm::Vm;
use anyhow::{bail, Context, Result};
use migtest_qmp::schema::{MigrationInfo, MigrationStatus};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod spec;

pub use spec::{PairLaunch, PairSpec, Transport};

/// What [`Pair::assert_memory_equal`] compared.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryReport {
    /// The range that had to be byte-equal.
    pub strict: (u64, u64),
    /// Pages in it.
    pub strict_pages: u64,
    /// Ranges compared for information only (QEMU: RAM outside the test range).
    pub lenient: Vec<(u64, u64)>,
    /// Differences found in those ranges, one per range that differs.
    pub lenient_diffs: Vec<MemoryMismatch>,
}

impl MemoryReport {
    /// One line per lenient range that differed, e.g. `outside the test
    /// range, not a failure: 1 of 256 pages differ in [0x0, 0x100000)
    /// (first: page 0xe8000 +0xc20)`; empty when everything matched.
    pub fn notes(&self) -> Vec<String> {
        self.lenient_diffs
            .iter()
            .map(|d| {
                let first = d
                    .first
                    .first()
                    .map(|p| format!(" (first: page {:#x} +{:#x})", p.page, p.offset))
                    .unwrap_or_default();
                let range = d
                    .first
                    .first()
                    .and_then(|p| {
                        self.lenient
                            .iter()
                            .find(|(a, b)| (*a..*b).contains(&p.page))
                    })
                    .map(|(a, b)| format!(" in [{a:#x}, {b:#x})"))
                    .unwrap_or_default();
                format!(
                    "memory outside the test range, not compared strictly: \
                     {} of {} pages differ{range}{first}",
                    d.differing_pages, d.pages
                )
            })
            .collect()
    }
}

/// How switchover is being held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMethod {
    /// The proposed `switchover-hold` parameter.
    SwitchoverHold,
    /// QEMU's legacy trick: 3 MB/s and 1 ms downtime, so precopy cannot converge.
    LegacyThrottle,
}

impl std::fmt::Display for HoldMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HoldMethod::SwitchoverHold => "switchover-hold",
            HoldMethod::LegacyThrottle => "legacy throttle (3 MB/s, 1 ms)",
        })
    }
}

/// Expected end of a migration, as QEMU's `MigrateCommon.result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Completes.
    Succeed,
    /// The source fails; the destination process stays alive.
    FailDestinationAlive,
    /// The source fails and the destination exits with an error.
    DestinationQuitsWithError,
    /// The `migrate` command itself is refused.
    CommandError,
}

/// How [`Pair::destination_runs`] leaves the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// Stopped (the end of a catalog scenario).
    Stopped,
    /// Running again (an executor op, more ops may follow).
    Running,
}

/// Figures of one finished migration, for reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MigrationFigures {
    /// Final `dirty-sync-count`.
    pub passes: u64,
    /// `total-time` in ms.
    pub total_ms: u64,
    /// `downtime` in ms.
    pub downtime_ms: Option<u64>,
    /// Bytes transferred.
    pub transferred: u64,
    /// Mean throughput in MB/s over the total time.
    pub throughput_mbs: f64,
}

impl MigrationFigures {
    /// Figures from a final `query-migrate`.
    pub fn from_info(info: &MigrationInfo) -> MigrationFigures {
        let ram = info.ram.clone().unwrap_or_default();
        let total_ms = info.total_time.unwrap_or(0);
        MigrationFigures {
            passes: ram.dirty_sync_count,
            total_ms,
            downtime_ms: info.downtime,
            transferred: ram.transferred,
            throughput_mbs: if total_ms > 0 {
                ram.transferred as f64 / 1e6 / (total_ms as f64 / 1000.0)
            } else {
                0.0
            },
        }
    }
}

/// Receives each `query-migrate` a pair polls while it waits, with what it
/// waits for (the CLI prints a live line from it).
pub type Progress = Arc<dyn Fn(&str, &MigrationInfo) + Send + Sync>;

/// A progress sink that ignores everything.
pub fn no_progress() -> Progress {
    Arc::new(|_, _| {})
}

/// Default deadline for a migration status to be reached.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(60);

/// QEMU's qtest converge values (`migrate_ensure_converge`): ~unlimited
/// bandwidth and a 30 s downtime-limit, so any migration switches over.
pub fn converge_values() -> serde_json::Value {
    json!({"max-bandwidth": 1_000_000_000u64, "downtime-limit": 30_000})
}

/// Deadline for held passes under `switchover-hold` (see [`Pair::pass_timeout`]).
pub const PASS_TIMEOUT: Duration = Duration::from_secs(60);

/// The legacy hold's bandwidth, as QEMU's `migrate_ensure_non_converge`.
pub const LEGACY_HOLD_BANDWIDTH: u64 = 3_000_000;

/// [`PASS_TIMEOUT`] plus twice the time one pass over all of `memory`
/// takes at [`LEGACY_HOLD_BANDWIDTH`], per pass waited for.
pub fn legacy_pass_timeout(memory: u64, n: u64) -> Duration {
    let per_pass = Duration::from_secs_f64(memory as f64 / LEGACY_HOLD_BANDWIDTH as f64);
    PASS_TIMEOUT + per_pass * 2 * n.max(1) as u32
}

/// A source and (usually) a destination VMM.
pub struct Pair {
    /// The spec the pair was launched from.
    pub spec: PairLaunch,
    /// The source VM.
    pub src: Vm,
    /// The current destination, if one is up.
    pub dst: Option<Vm>,
    generation: u32,
    hold: Option<HoldMethod>,
    progress: Progress,
    diagnostics: Option<Arc<Diagnostics>>,
}

/// The `multifd` capability and `multifd-channels` (both sides use this).
fn set_multifd(vm: &Vm, channels: Option<u8>) -> Result<()> {
    if let Some(n) = channels {
        vm.set_capabilities(&[("multifd", true)])?;
        vm.set_parameters(json!({ "multifd-channels": n }))?;
    }
    Ok(())
}

impl Pair {
    /// Launches the source (running its workload, `events` on, full-speed
    /// precopy as QEMU's qtests set it) and a destination waiting with
    /// `-incoming defer`.
    pub fn launch(spec: PairLaunch) -> Result<Pair> {
        let mut pair = Pair::launch_source(spec)?;
        pair.restart_destination()?;
        Ok(pair)
    }

    /// Launches only the source, as [`PairLaunch`] says (`events`, full-speed
    /// `max-bandwidth`, multifd); no destination yet: the caller starts one
    /// with [`Pair::restart_destination`] or
    /// [`Pair::restart_destination_deferred`] (the executor waits for the
    /// guest to be up first).
    pub fn launch_source(spec: PairLaunch) -> Result<Pair> {
        let mut src =
            Vm::launch(&spec.src_backend, &spec.source_launch()).context("launching the source")?;
        src.set_observer(spec.observer.clone());
        if spec.pair.events {
            src.set_capabilities(&[("events", true)])
                .context("enabling events on the source")?;
        }
        if spec.full_speed {
            src.set_parameters(json!({"max-bandwidth": 0}))
                .context("setting full-speed precopy on the source")?;
        }
        set_multifd(&src, spec.multifd).context("enabling multifd on the source")?;
        Ok(Pair {
            spec,
            src,
            dst: None,
            generation: 0,
            hold: None,
            progress: no_progress(),
            diagnostics: None,
        })
    }

    /// Registers the pair's VMs (now and after each restart) with a failure
    /// report context, which also decides when their logs are removed.
    pub fn attach_diagnostics(&mut self, diag: Arc<Diagnostics>) {
        diag.add_vm(&self.src);
        if let Some(dst) = &self.dst {
            diag.add_vm(dst);
        }
        diag.hold_logs();
        self.diagnostics = Some(diag);
    }

    /// Routes wait progress to `p`.
    pub fn set_progress(&mut self, p: Progress) {
        self.progress = p;
    }

    /// The destination, or an error saying there is none.
    pub fn dst(&self) -> Result<&Vm> {
        self.dst.as_ref().context("no destination is running")
    }

    /// Replaces the destination with a fresh one waiting for an incoming
    /// migration (`-incoming defer`, `events` on, then `migrate-incoming`).
    pub fn restart_destination(&mut self) -> Result<()> {
        self.restart_destination_deferred()?;
        let listen = self.listen_uri(self.spec.pair.transport)?;
        self.dst()?
            .migrate_incoming(&listen)
            .context("starting the incoming migration")
    }

    /// Where the current destination listens over `transport`: a unix
    /// socket in its log directory named after its generation, or loopback
    /// TCP with the port left to the destination.
    pub fn listen_uri(&self, transport: Transport) -> Result<String> {
        Ok(match transport {
            Transport::Unix => format!(
                "unix:{}",
                self.dst()?
                    .log_dir()
                    .join(format!("migsocket-{}", self.generation))
                    .display()
            ),
            Transport::Tcp => "tcp:127.0.0.1:0".to_string(),
        })
    }

    /// Replaces the destination with a fresh one (`-name destination-N`,
    /// N counting from 1) that waits with `-incoming defer` (`events` on) for
    /// the caller's `migrate-incoming` (e.g. on a `file:` or `fd:` channel,
    /// or the executor's `migrate` op). The old one, if any, is dropped:
    /// asked to `quit`, then killed.
    pub fn restart_destination_deferred(&mut self) -> Result<()> {
        self.dst = None;
        self.generation += 1;
        let mut dst = Vm::launch_as(
            "destination",
            &self.spec.dst_backend,
            &self.spec.destination_launch(self.generation),
        )
        .context("launching the destination")?;
        dst.set_observer(self.spec.observer.clone());
        if self.spec.pair.events {
            dst.set_capabilities(&[("events", true)])
                .context("enabling events on the destination")?;
        }
        set_multifd(&dst, self.spec.multifd).context("enabling multifd on the destination")?;
        if let Some(diag) = &self.diagnostics {
            diag.add_vm(&dst);
            diag.hold_logs();
        }
        self.dst = Some(dst);
        Ok(())
    }

    /// The URI the source must connect to (the real TCP port for `tcp:…:0`).
    pub fn connect_uri(&self) -> Result<String> {
        self.dst()?.incoming_uri()
    }

    /// `migrate` from the source to the current destination.
    pub fn migrate(&mut self) -> Result<()> {
        let uri = self.connect_uri()?;
        self.src.migrate(&uri).context("migrate")
    }

    /// The source's migration throughput over `window`, in bytes per second: the growth of
    /// `ram.transferred` (bytes on the wire) or of `ram.normal-bytes` (page data sent, 4 KiB a
    /// page), whichever grew more. Both are within `max-bandwidth`: QEMU sends pages whole, and
    /// migtest-vmm charges a SPARSE page as the full page it stands for.
    pub fn measure_throughput(&self, window: Duration) -> Result<f64> {
        let sent = || -> Result<(u64, u64)> {
            let ram = self.src.query_migrate()?.ram.unwrap_or_default();
            Ok((ram.transferred, ram.normal_bytes))
        };
        let a = sent()?;
        let t = Instant::now();
        std::thread::sleep(window);
        let b = sent()?;
        let grown = b.0.saturating_sub(a.0).max(b.1.saturating_sub(a.1));
        Ok(grown as f64 / t.elapsed().as_secs_f64())
    }

    /// Whether the source VMM has the `switchover-hold` parameter.
    pub fn has_switchover_hold(&self) -> Result<bool> {
        let params = self.src.query_parameters()?;
        Ok(params.get("switchover-hold").is_some())
    }

    /// Holds switchover: `switchover-hold` where the VMM has it, otherwise
    /// QEMU's legacy 3 MB/s + 1 ms throttle. Says which.
    pub fn hold_switchover(&mut self) -> Result<HoldMethod> {
        let method = if self.has_switchover_hold()? {
            self.src.set_parameters(json!({"switchover-hold": true}))?;
            HoldMethod::SwitchoverHold
        } else {
            self.src.set_parameters(
                json!({"max-bandwidth": LEGACY_HOLD_BANDWIDTH, "downtime-limit": 1}),
            )?;
            crate::observe::mark("source", "hold-set", &json!({"method": "legacy"}));
            HoldMethod::LegacyThrottle
        };
        self.hold = Some(method);
        Ok(method)
    }

    /// Releases a hold set by [`Pair::hold_switchover`]: clears
    /// `switchover-hold`, or sets QEMU's converge values (1 GB/s, 30 s).
    pub fn release_switchover(&mut self) -> Result<()> {
        match self.hold.take() {
            Some(HoldMethod::LegacyThrottle) => {
                crate::observe::mark("source", "hold-cleared", &json!({"method": "legacy"}));
                self.src.set_parameters(converge_values())
            }
            _ => self.src.set_parameters(json!({"switchover-hold": false})),
        }
    }

    /// The hold in force, if any.
    pub fn hold_method(&self) -> Option<HoldMethod> {
        self.hold
    }

    /// How long waiting for `n` passes may take. Under `switchover-hold` a
    /// pass takes milliseconds: [`PASS_TIMEOUT`]. Under the legacy throttle
    /// each pass re-sends the dirty set at 3 MB/s (QEMU 7.2, TCG: 34.5 s a
    /// pass for 128 MiB, 10.5 s for 32 MiB), so the budget grows with RAM:
    /// [`PASS_TIMEOUT`] plus twice `memory / 3 MB/s` per pass.
    pub fn pass_timeout(&self, n: u64) -> Duration {
        match self.hold {
            Some(HoldMethod::LegacyThrottle) => legacy_pass_timeout(self.spec.memory_bytes(), n),
            _ => PASS_TIMEOUT,
        }
    }

    /// Polls the source until `dirty-sync-count` reaches `n`. Fails if the
    /// migration ends first.
    pub fn wait_for_passes(&mut self, n: u64, timeout: Duration) -> Result<MigrationInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.src.query_migrate()?;
            (self.progress)(&format!("waiting for {n} passes"), &info);
            let passes = info.ram.as_ref().map_or(0, |r| r.dirty_sync_count);
            if passes >= n {
                return Ok(info);
            }
            if let Some(s) = info.status {
                if s.is_terminal() {
                    bail!(
                        "source migration ended as '{s}' after {passes} passes while waiting for {n} passes{}",
                        info.error_desc.map(|d| format!(": {d}")).unwrap_or_default()
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {n} passes: source at {passes}, status {:?}", info.status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the source to reach `status`; `failed` when not expected is
    /// reported with its `error-desc`.
    pub fn wait_src_status(
        &mut self,
        status: MigrationStatus,
        timeout: Duration,
    ) -> Result<MigrationInfo> {
        wait_status(&self.src, status, timeout, &self.progress)
    }

    /// Waits for the destination to reach `status`.
    pub fn wait_dst_status(
        &mut self,
        status: MigrationStatus,
        timeout: Duration,
    ) -> Result<MigrationInfo> {
        let dst = self.dst.as_ref().context("no destination is running")?;
        wait_status(dst, status, timeout, &no_progress())
    }

    /// Waits for both sides to complete, the source to emit `STOP`, and (for
    /// a destination without `-S`) `RESUME`. Returns the source's figures.
    pub fn wait_completed(&mut self) -> Result<MigrationFigures> {
        let info = self.wait_src_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
        self.wait_dst_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
        self.src
            .wait_event("STOP", STATUS_TIMEOUT)
            .context("source STOP event at switchover")?;
        if !self.spec.pair.dst_paused {
            self.dst()?
                .wait_event("RESUME", STATUS_TIMEOUT)
                .context("destination RESUME event")?;
        }
        self.final_figures(info)
    }

    /// Figures of a completed migration from `info`, the first
    /// `query-migrate` that said `completed`. QEMU sets that status before it
    /// computes `total-time`, `downtime` and `mbps`
    /// (`migration_calculate_complete` runs after `migration_completion`),
    /// so a query in between reads 0 for them: re-query (up to 1 s) until
    /// `total-time` is set.
    pub fn final_figures(&self, mut info: MigrationInfo) -> Result<MigrationFigures> {
        let deadline = Instant::now() + Duration::from_secs(1);
        while info.total_time.unwrap_or(0) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            info = self.src.query_migrate()?;
        }
        Ok(MigrationFigures::from_info(&info))
    }

    /// `migrate_cancel` on the source.
    pub fn cancel(&self) -> Result<()> {
        self.src.migrate_cancel()
    }

    /// The guest's test range on this pair's backend.
    pub fn test_range(&self) -> Result<(u64, u64)> {
        self.spec
            .src_backend
            .test_range(&self.spec.pair.image, self.spec.memory_bytes())
    }

    /// Compares the stopped source with the destination held by `-S`.
    ///
    /// With `range`, byte for byte over that range. With `None`, over all
    /// RAM, by the backend's rules: the builtin VMM owns every byte, so all
    /// RAM must be equal; on QEMU only the guest's test range
    /// ([`crate::backend::Backend::test_range`]) must be, and differences elsewhere (BIOS
    /// shadow RAM, option ROMs, firmware data, which may legitimately differ
    /// between two QEMUs) are returned in the report instead of failing.
    pub fn assert_memory_equal(&self, range: Option<(u64, u64)>) -> Result<MemoryReport> {
        let dst = self.dst()?;
        let src_status = self.src.query_status()?;
        if src_status.running {
            bail!(
                "memory check needs a stopped source; it is {:?}",
                src_status.status
            );
        }
        let dst_status = dst.query_status()?;
        if dst_status.running {
            bail!(
                "memory check needs a paused destination (-S); it is {:?}",
                dst_status.status
            );
        }
        let qemu = self.spec.src_backend.is_qemu() || self.spec.dst_backend.is_qemu();
        let (strict, lenient) = match range {
            Some(r) => (r, Vec::new()),
            None if qemu => {
                let (start, end) = self.test_range()?;
                let outside = [(0, start), (end, self.spec.memory_bytes())]
                    .into_iter()
                    .filter(|(a, b)| a < b)
                    .collect();
                ((start, end), outside)
            }
            None => ((0, self.spec.memory_bytes()), Vec::new()),
        };
        let compare = |range| self.compare_range(dst, range);
        let strict_pages = compare(strict)?.map_err(|e| {
            anyhow::anyhow!(
                "guest memory differs in [{:#x}, {:#x}): {e}",
                strict.0,
                strict.1
            )
        })?;
        let mut report = MemoryReport {
            strict,
            strict_pages,
            lenient: lenient.clone(),
            lenient_diffs: Vec::new(),
        };
        for r in lenient {
            if let Err(e) = compare(r)? {
                report.lenient_diffs.push(e);
            }
        }
        Ok(report)
    }

    /// Byte-compares `[start, end)` of the source's and `dst`'s guest RAM:
    /// the pages compared, or where they first differ.
    pub fn compare_range(
        &self,
        dst: &Vm,
        (start, end): (u64, u64),
    ) -> Result<Result<u64, MemoryMismatch>> {
        let a = self
            .src
            .pmemsave(start, end - start)
            .context("source pmemsave")?;
        let b = dst
            .pmemsave(start, end - start)
            .context("destination pmemsave")?;
        Ok(checks::compare_memory(&a, &b, start).map(|()| (end - start).div_ceil(4096)))
    }

    /// QEMU's `check_guests_ram` on the destination (stopped).
    pub fn check_guest_ram(&self) -> Result<()> {
        let dst = self.dst()?;
        let (start, end) = self.test_range()?;
        let bytes = dst.pmemsave(start, end - start)?;
        checks::check_guests_ram(&bytes, start, end).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// After a completed migration: [`Pair::destination_runs`], leaving the
    /// destination stopped, as QEMU's `migrate_end` does.
    pub fn assert_destination_runs(&self) -> Result<()> {
        self.destination_runs(Leave::Stopped)
    }

    /// The one destination check after a completed migration, used by
    /// [`Pair::assert_destination_runs`] (the catalog) and the executor's
    /// `check-destination-runs` (leaving it running): `cont` the destination
    /// if paused, check it runs on (serial keeps printing, memory keeps
    /// changing), stop it, check its memory holds still while stopped and,
    /// for the A-B guest (`sweep`, and always on QEMU), QEMU's
    /// `check_guests_ram` over the test range.
    pub fn destination_runs(&self, leave: Leave) -> Result<()> {
        let check_ab = self.spec.pair.image == "sweep" || self.spec.src_backend.is_qemu();
        let (dst, image) = (self.dst()?, self.spec.pair.image.as_str());
        let (start, end) = self.test_range()?;
        if !dst.query_status()?.running {
            dst.cont().context("cont on the destination")?;
        }
        let status = dst.query_status()?;
        if !status.running {
            bail!("destination did not start running: {:?}", status.status);
        }
        if image != "idle" {
            dst.wait_serial(b'B', Duration::from_secs(30))
                .context("destination serial output after migration")?;
            let first = dst.memory_digest(start, end)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while dst.memory_digest(start, end)? == first {
                if Instant::now() >= deadline {
                    bail!("destination memory did not change within 30 s after cont");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        dst.stop().context("stop on the destination")?;
        // A stopped guest must not write: two digests 200 ms apart (no
        // condition to wait for: the check is that nothing happens).
        let a = dst.memory_digest(start, end)?;
        std::thread::sleep(Duration::from_millis(200));
        if dst.memory_digest(start, end)? != a {
            bail!("destination memory changed while stopped");
        }
        if check_ab {
            let bytes = dst.pmemsave(start, end - start)?;
            checks::check_guests_ram(&bytes, start, end).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if leave == Leave::Running {
            dst.cont().context("cont on the destination")?;
        }
        Ok(())
    }

    /// Asserts the source guest runs (after a cancelled or failed migration).
    pub fn assert_source_runs(&self) -> Result<()> {
        let status = self.src.query_status()?;
        if !status.running {
            bail!("source guest is not running: {:?}", status.status);
        }
        if self.spec.pair.image != "idle" {
            self.src
                .wait_serial(b'B', Duration::from_secs(30))
                .context("source serial output")?;
        }
        Ok(())
    }

    /// Kills the destination process (SIGKILL).
    pub fn kill_destination(&mut self) -> Result<()> {
        let dst = self.dst.as_ref().context("no destination to kill")?;
        dst.kill();
        Ok(())
    }

    /// Waits for the expected outcome of a migration already started.
    pub fn expect(&mut self, expected: Expected) -> Result<()> {
        match expected {
            Expected::Succeed => self.wait_completed().map(|_| ()),
            Expected::FailDestinationAlive => {
                self.wait_src_status(MigrationStatus::Failed, STATUS_TIMEOUT)?;
                self.assert_source_runs()?;
                if !self.dst()?.is_alive() {
                    bail!("destination exited; expected it to stay alive");
                }
                Ok(())
            }
            Expected::DestinationQuitsWithError => {
                self.wait_src_status(MigrationStatus::Failed, STATUS_TIMEOUT)?;
                self.assert_source_runs()?;
                let status = self
                    .dst()?
                    .wait_exit(Duration::from_secs(30))
                    .context("destination did not exit after the failed migration")?;
                if status.success() {
                    bail!("destination exited successfully; expected an error status");
                }
                Ok(())
            }
            Expected::CommandError => bail!("CommandError is checked at the migrate call"),
        }
    }
}

fn wait_status(
    vm: &Vm,
    status: MigrationStatus,
    timeout: Duration,
    progress: &Progress,
) -> Result<MigrationInfo> {
    let deadline = Instant::now() + timeout;
    loop {
        let info = vm.query_migrate()?;
        progress(&format!("waiting for '{status}'"), &info);
        if info.status == Some(status) {
            return Ok(info);
        }
        if let Some(s) = info.status {
            if s.is_terminal() && s != status {
                bail!(
                    "{}: migration ended as '{s}' while waiting for '{status}'{}",
                    vm.role(),
                    info.error_desc
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                );
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "{}: timed out after {timeout:?} waiting for migration status '{status}' (now {:?})",
                vm.role(),
                info.status
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_report_notes_name_the_range_and_first_page() {
        let mut src = vec![0u8; 256 * 4096];
        let dst = src.clone();
        src[0xe8000 + 0xc20] = 1;
        let diff = checks::compare_memory(&src, &dst, 0).unwrap_err();
        let report = MemoryReport {
            strict: (1 << 20, 31 << 20),
            strict_pages: 7680,
            lenient: vec![(0, 1 << 20), (31 << 20, 32 << 20)],
            lenient_diffs: vec![diff],
        };
        assert_eq!(
            report.notes(),
            [
                "memory outside the test range, not compared strictly: 1 of 256 pages \
              differ in [0x0, 0x100000) (first: page 0xe8000 +0xc20)"
            ]
        );
    }

    #[test]
    fn legacy_pass_timeout_grows_with_memory() {
        assert_eq!(
            legacy_pass_timeout(3_000_000, 3),
            PASS_TIMEOUT + Duration::from_secs(6)
        );
        assert!(legacy_pass_timeout(128 << 20, 3) > Duration::from_secs(260));
    }
}
