//! A VM handle: a guarded VMM process, its QMP client and typed helpers.
//!
//! Every helper that waits has a deadline, and every error names the VM
//! (role and pid), the step and what was waited for.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use migtest_qmp::message::Event;
use migtest_qmp::schema::{MigrationInfo, MigrationParameters, MigrationStatus, StatusInfo};
use serde_json::{json, Value};

use crate::backend::{Backend, LaunchSpec};
use crate::checks::digest;
use crate::diagnostics::{Diagnosable, VmDiag};
use crate::process::VmmProcess;
use crate::qmp_client::{QmpClient, DEFAULT_TIMEOUT};

/// How long `launch` waits for the QMP socket and greeting.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`Vm::migrate`] waits for QEMU to clean up the previous migration.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Poll interval of [`Vm::wait_for_status`].
pub const STATUS_POLL: Duration = Duration::from_millis(5);

/// Sees every successful QMP reply of the VMs it is plugged into (with
/// [`Vm::set_observer`]); `migtest compare` records reply shapes and events
/// this way. The VM handle knows nothing of what the observer does.
pub trait ReplyObserver: Send + Sync + std::fmt::Debug {
    /// Called after `command` on `vm` returned `reply`.
    fn observe(&self, vm: &Vm, command: &str, reply: &Value);
}

/// A launched VM.
pub struct Vm {
    // Field order matters: the process guard drops first, while the QMP
    // client is still connected, so it can ask the VMM to `quit`.
    process: VmmProcess,
    qmp: QmpClient,
    role: String,
    backend: Backend,
    binary: PathBuf,
    spec: LaunchSpec,
    serial_cursor: Mutex<u64>,
    dumps: AtomicU64,
    observer: Option<Arc<dyn ReplyObserver>>,
}

impl Diagnosable for Vm {
    fn diag(&self) -> VmDiag {
        VmDiag {
            role: self.role.clone(),
            backend: self.backend.name().to_string(),
            binary: self.binary.clone(),
            process: self.process.probe(),
            transcript: self.qmp.transcript(),
        }
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("role", &self.role)
            .field("pid", &self.process.pid())
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Vm {
    /// Launches `spec` on `backend`; the role label is `spec.name`.
    pub fn launch(backend: &Backend, spec: &LaunchSpec) -> anyhow::Result<Vm> {
        Vm::launch_as(&spec.name, backend, spec)
    }

    /// Launches `spec` on `backend` with a role label ("source",
    /// "destination") used in messages. Spawn from a long-lived thread (see
    /// [`crate::process`] on PDEATHSIG).
    pub fn launch_as(role: &str, backend: &Backend, spec: &LaunchSpec) -> anyhow::Result<Vm> {
        let dir = crate::process::new_log_dir().context("creating a log directory")?;
        let (binary, args) = backend
            .launch_command(spec, dir.path())
            .with_context(|| format!("{role}: preparing the {} VMM", backend.name()))?;
        let process = VmmProcess::spawn_in(dir, role, &binary, args)
            .with_context(|| format!("{role}: launching {}", backend.name()))?;
        let probe = process.probe();
        let qmp = QmpClient::connect(&process.qmp_socket(), role, LAUNCH_TIMEOUT, || {
            probe.exit_status().map(|st| {
                let tail = probe.stderr_tail(5);
                if tail.is_empty() {
                    format!("{st}")
                } else {
                    format!("{st}; stderr: {tail}")
                }
            })
        })
        .map_err(|e| {
            anyhow!(
                "{role} VMM (pid {}): {e}\n  command: {}",
                process.pid(),
                process.command_line()
            )
        })?;
        process.attach_qmp(qmp.handle());
        crate::observe::vm_launched(&crate::observe::LaunchedVm {
            role,
            name: &spec.name,
            backend: backend.name(),
            pid: process.pid(),
            log_dir: process.log_dir(),
        });
        Ok(Vm {
            process,
            qmp,
            role: role.to_string(),
            backend: backend.clone(),
            binary,
            spec: spec.clone(),
            serial_cursor: Mutex::new(0),
            dumps: AtomicU64::new(0),
            observer: None,
        })
    }

    /// Plugs in (or, with `None`, removes) the observer of this VM's replies.
    pub fn set_observer(&mut self, observer: Option<Arc<dyn ReplyObserver>>) {
        self.observer = observer;
    }

    /// The role label.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The launch spec.
    pub fn spec(&self) -> &LaunchSpec {
        &self.spec
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The binary that runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The QMP client.
    pub fn qmp(&self) -> &QmpClient {
        &self.qmp
    }

    /// The QMP client, mutable (to change its default timeout).
    pub fn qmp_mut(&mut self) -> &mut QmpClient {
        &mut self.qmp
    }

    /// The process guard.
    pub fn process(&self) -> &VmmProcess {
        &self.process
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The VM's log directory (sockets, serial, stderr).
    pub fn log_dir(&self) -> &Path {
        self.process.log_dir()
    }

    /// Whether the VMM process still runs.
    pub fn is_alive(&self) -> bool {
        self.process.is_alive()
    }

    /// Waits up to `timeout` for the VMM process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// SIGKILLs the VMM process now and reaps it.
    pub fn kill(&self) -> std::process::ExitStatus {
        crate::observe::killed(&self.role, self.process.pid());
        self.process.kill()
    }

    fn who(&self) -> String {
        format!("{} VMM (pid {})", self.role, self.process.pid())
    }

    /// On QEMU, waits until the previous migration's cleanup has unregistered its yank
    /// instance (`query-yank` lists no `migration`): QEMU reports `failed`/`cancelled` before
    /// that cleanup ends, and a `migrate` in between fails with "duplicate yank instance".
    /// Nothing to wait for on the builtin VMM, which cleans up before it reports the status.
    pub fn await_migration_cleanup(&self, timeout: Duration) -> anyhow::Result<()> {
        if !self.backend.is_qemu() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let instances = self.execute("query-yank", json!({}))?;
            let held = instances
                .as_array()
                .is_some_and(|a| a.iter().any(|i| i["type"] == "migration"));
            if !held {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: the previous migration's yank instance was still registered after {timeout:?} (query-yank)",
                    self.who()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs a QMP command, errors naming this VM.
    pub fn execute(&self, name: &str, args: Value) -> anyhow::Result<Value> {
        let reply = self
            .qmp
            .execute(name, args)
            .map_err(|e| self.qmp_error(name, e))?;
        if let Some(o) = &self.observer {
            o.observe(self, name, &reply);
        }
        Ok(reply)
    }

    /// Wraps a QMP error with the VM and command; after a disconnect also
    /// with the process's exit status and last stderr line, if it died.
    fn qmp_error(&self, name: &str, e: crate::qmp_client::QmpError) -> anyhow::Error {
        let mut what = format!("{}: QMP '{name}'", self.who());
        if matches!(e, crate::qmp_client::QmpError::Disconnected { .. }) {
            if let Some(st) = self.process.wait_exit(Duration::from_millis(200)) {
                what.push_str(&format!(" (process {st}"));
                let tail = self.process.stderr_tail(1);
                if !tail.is_empty() {
                    what.push_str(&format!("; stderr: {tail}"));
                }
                what.push(')');
            }
        }
        anyhow::Error::new(e).context(what)
    }

    /// Runs a QMP command and deserializes its return value.
    pub fn execute_typed<R: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        args: Value,
    ) -> anyhow::Result<R> {
        if self.observer.is_some() {
            // The observer sees the raw reply.
            let reply = self.execute(name, args)?;
            return serde_json::from_value(reply)
                .with_context(|| format!("{}: decoding the '{name}' reply", self.who()));
        }
        self.qmp
            .execute_typed(name, args)
            .map_err(|e| self.qmp_error(name, e))
    }

    /// `query-status`.
    pub fn query_status(&self) -> anyhow::Result<StatusInfo> {
        self.execute_typed("query-status", Value::Null)
    }

    /// `stop`.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.execute("stop", Value::Null).map(drop)
    }

    /// `cont`.
    pub fn cont(&self) -> anyhow::Result<()> {
        self.execute("cont", Value::Null).map(drop)
    }

    /// `quit`, then waits (≤ 5 s) for the process to exit.
    pub fn quit(&self) -> anyhow::Result<std::process::ExitStatus> {
        self.qmp
            .quit()
            .with_context(|| format!("{}: QMP 'quit'", self.who()))?;
        self.process
            .wait_exit(Duration::from_secs(5))
            .ok_or_else(|| anyhow!("{}: still running 5 s after 'quit'", self.who()))
    }

    /// `query-migrate`.
    pub fn query_migrate(&self) -> anyhow::Result<MigrationInfo> {
        self.execute_typed("query-migrate", Value::Null)
    }

    /// `migrate-set-parameters` with an object of parameters.
    pub fn set_parameters(&self, params: Value) -> anyhow::Result<()> {
        self.execute("migrate-set-parameters", params).map(drop)
    }

    /// `query-migrate-parameters`, as JSON (backends differ in members).
    pub fn query_parameters(&self) -> anyhow::Result<Value> {
        self.execute("query-migrate-parameters", Value::Null)
    }

    /// `query-migrate-parameters`, the members migtest knows.
    pub fn query_parameters_typed(&self) -> anyhow::Result<MigrationParameters> {
        self.execute_typed("query-migrate-parameters", Value::Null)
    }

    /// Sets one migration parameter and reads it back, like QEMU's
    /// `migrate_set_parameter_*` helpers; a different read-back value is an
    /// error.
    pub fn set_parameter(&self, name: &str, value: Value) -> anyhow::Result<()> {
        let mut args = serde_json::Map::new();
        args.insert(name.to_string(), value.clone());
        self.set_parameters(Value::Object(args))?;
        let got = self.query_parameters()?;
        match got.get(name) {
            Some(v) if *v == value => Ok(()),
            other => bail!(
                "{}: migration parameter '{name}' reads back as {} after setting {value}",
                self.who(),
                other.map_or("(absent)".to_string(), Value::to_string)
            ),
        }
    }

    /// `migrate-set-capabilities`.
    pub fn set_capabilities(&self, caps: &[(&str, bool)]) -> anyhow::Result<()> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(c, s)| json!({"capability": c, "state": s}))
            .collect();
        self.execute("migrate-set-capabilities", json!({ "capabilities": list }))
            .map(drop)
    }

    /// `migrate` to `uri`, once the previous migration (if any) has been cleaned up
    /// ([`Vm::await_migration_cleanup`]; a failed multifd migration's cleanup joins its
    /// channel threads, which a loaded machine delays past the `failed` the harness saw).
    pub fn migrate(&self, uri: &str) -> anyhow::Result<()> {
        self.await_migration_cleanup(CLEANUP_TIMEOUT)
            .context("before migrate")?;
        self.execute("migrate", json!({ "uri": uri })).map(drop)
    }

    /// `migrate-incoming` on `uri`.
    pub fn migrate_incoming(&self, uri: &str) -> anyhow::Result<()> {
        let uri = crate::backend::resolve_incoming(uri, self.process.log_dir());
        self.execute("migrate-incoming", json!({ "uri": uri }))
            .map(drop)
    }

    /// `migrate_cancel`.
    pub fn migrate_cancel(&self) -> anyhow::Result<()> {
        self.execute("migrate_cancel", Value::Null).map(drop)
    }

    /// `migrate-continue` from `state` (e.g. `pre-switchover`).
    pub fn migrate_continue(&self, state: &str) -> anyhow::Result<()> {
        self.execute("migrate-continue", json!({ "state": state }))
            .map(drop)
    }

    /// Waits for (and consumes) an event named `name`.
    pub fn wait_event(&self, name: &str, timeout: Duration) -> anyhow::Result<Event> {
        self.wait_event_matching(name, |_| true, timeout)
    }

    /// Waits for (and consumes) an event named `name` satisfying `pred`.
    pub fn wait_event_matching(
        &self,
        name: &str,
        pred: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Event> {
        self.qmp
            .wait_event(name, pred, timeout)
            .with_context(|| format!("{}: waiting for event {name}", self.who()))
    }

    /// Waits for (and consumes) a `MIGRATION` event with `data.status ==
    /// status` (needs the `events` capability), like QEMU's
    /// `migration_event_wait`.
    pub fn wait_migration_event(&self, status: &str, timeout: Duration) -> anyhow::Result<Event> {
        self.qmp
            .wait_event(
                "MIGRATION",
                |e| {
                    e.data
                        .as_ref()
                        .and_then(|d| d.get("status"))
                        .and_then(Value::as_str)
                        == Some(status)
                },
                timeout,
            )
            .with_context(|| {
                format!(
                    "{}: waiting for MIGRATION event with status '{status}'",
                    self.who()
                )
            })
    }

    /// How many events named `name` arrived so far (consumed or not).
    pub fn events_seen(&self, name: &str) -> usize {
        self.qmp
            .events_seen()
            .iter()
            .filter(|e| e.event == name)
            .count()
    }

    /// The URI the destination listens on (from `socket-address`).
    pub fn incoming_uri(&self) -> anyhow::Result<String> {
        let info = self.query_migrate()?;
        info.socket_address
            .as_ref()
            .and_then(|a| a.first())
            .map(|a| a.to_uri())
            .ok_or_else(|| {
                anyhow!(
                    "{}: query-migrate has no socket-address (not listening?)",
                    self.who()
                )
            })
    }

    /// Polls `query-migrate` every 5 ms until its status is `expected`.
    /// `failed` (unless expected) ends the wait with the `error-desc`;
    /// `completed` too when something else is expected (as QEMU's
    /// `wait_for_migration_status`).
    pub fn wait_for_status(
        &self,
        expected: MigrationStatus,
        timeout: Duration,
    ) -> anyhow::Result<MigrationInfo> {
        let start = Instant::now();
        loop {
            let info = self
                .query_migrate()
                .with_context(|| format!("while waiting for migration status '{expected}'"))?;
            let status = info.status.unwrap_or(MigrationStatus::None);
            if status == expected {
                return Ok(info);
            }
            if status == MigrationStatus::Failed
                || (status == MigrationStatus::Completed && expected != MigrationStatus::Completed)
            {
                bail!(
                    "{}: waiting for migration status '{expected}': migration {status}{}",
                    self.who(),
                    info.error_desc
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                );
            }
            if start.elapsed() >= timeout {
                let passes = info.ram.as_ref().map(|r| r.dirty_sync_count).unwrap_or(0);
                bail!(
                    "{}: timed out after {timeout:?} waiting for migration status '{expected}' \
                     (last status '{status}', dirty-sync-count {passes})",
                    self.who()
                );
            }
            std::thread::sleep(STATUS_POLL);
        }
    }

    /// The serial log path.
    pub fn serial_path(&self) -> PathBuf {
        self.process.serial_path()
    }

    /// The offset up to which [`Vm::wait_serial`] has consumed the serial log.
    pub fn serial_offset(&self) -> u64 {
        *self.serial_cursor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Like QEMU's `wait_for_serial`, with a deadline: reads the serial log
    /// from where the last call stopped until `byte` appears ('A' and 'B'
    /// are skipped; any other byte is an error naming it).
    pub fn wait_serial(&self, byte: u8, timeout: Duration) -> anyhow::Result<()> {
        let mut cur = self.serial_cursor.lock().unwrap_or_else(|e| e.into_inner());
        *cur = self.wait_serial_from(*cur, byte, timeout)?;
        Ok(())
    }

    /// Waits for `byte` on the serial log after `offset`; returns the offset
    /// just past it.
    pub fn wait_serial_from(
        &self,
        offset: u64,
        byte: u8,
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        let path = self.serial_path();
        let mut pos = offset;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if let Ok(mut f) = File::open(&path) {
                if f.seek(SeekFrom::Start(pos)).is_ok() {
                    let _ = f.read_to_end(&mut buf);
                }
            }
            for &b in &buf {
                pos += 1;
                if b == byte {
                    return Ok(pos);
                }
                if b != b'A' && b != b'B' {
                    bail!(
                        "{}: unexpected byte {b:#04x} ({:?}) on serial at offset {} \
                         while waiting for {:?}",
                        self.who(),
                        b as char,
                        pos - 1,
                        byte as char
                    );
                }
            }
            if let Some(st) = self.process.exit_status() {
                bail!(
                    "{}: exited ({st}) while waiting for {:?} on serial (offset {pos})",
                    self.who(),
                    byte as char
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: timed out after {timeout:?} waiting for {:?} on serial \
                     (read up to offset {pos}; last bytes {:?})",
                    self.who(),
                    byte as char,
                    self.process.serial_tail(16)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Reads guest memory with QMP `pmemsave` into the VM's log directory,
    /// then deletes the file.
    pub fn pmemsave(&self, addr: u64, size: u64) -> anyhow::Result<Vec<u8>> {
        let n = self.dumps.fetch_add(1, Ordering::Relaxed);
        let path = self.process.path(&format!("pmem-{n}.bin"));
        let timeout = DEFAULT_TIMEOUT.max(Duration::from_secs(size >> 24)); // +1 s per 16 MiB
        self.qmp
            .execute_timeout(
                "pmemsave",
                json!({"val": addr, "size": size, "filename": path.to_string_lossy()}),
                timeout,
            )
            .with_context(|| format!("{}: pmemsave {addr:#x}+{size:#x}", self.who()))?;
        let data = std::fs::read(&path)
            .with_context(|| format!("{}: reading {}", self.who(), path.display()))?;
        let _ = std::fs::remove_file(&path);
        if data.len() as u64 != size {
            bail!(
                "{}: pmemsave {addr:#x}+{size:#x} wrote {} bytes",
                self.who(),
                data.len()
            );
        }
        Ok(data)
    }

    /// xxh3-64 digest of guest memory in `[start, end)`.
    pub fn memory_digest(&self, start: u64, end: u64) -> anyhow::Result<u64> {
        let data = self.pmemsave(start, end.saturating_sub(start))?;
        Ok(digest(&data))
    }

    /// [`Vm::memory_digest`] over a range.
    pub fn memory_digest_range(&self, range: Range<u64>) -> anyhow::Result<u64> {
        self.memory_digest(range.start, range.end)
    }
}
