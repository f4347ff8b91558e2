//! Per-scenario telemetry: `query-migrate` samples of the source (with the
//! destination's status) at a fixed interval and at every `MIGRATION` /
//! `MIGRATION_PASS` event, the events themselves, and the ops the scenario
//! sent (hold set/cleared, cancel, kill, ...), as JSON Lines
//! (`docs/telemetry.md`).
//!
//! A [`Recorder`] watches the thread it is started on through
//! [`crate::observe`]: every VMM launched there gets a second QMP connection
//! (its `telemetry.sock` monitor), so sampling never touches the test's own
//! connection, its transcript or its event queue. This works the same for
//! migtest-vmm and QEMU (both take several `-qmp` monitors).
//!
//! ```no_run
//! # use migtest::telemetry::Recorder;
//! let rec = Recorder::new("mission");
//! {
//!     let _on = rec.start();
//!     // ... launch VMs and migrate on this thread ...
//! }
//! rec.finish(Ok(()));
//! rec.write_jsonl(std::path::Path::new("/tmp/mission.jsonl")).unwrap();
//! ```

pub mod record;
mod sampler;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::observe::{self, LaunchedVm, Observer};
use crate::process::TELEMETRY_SOCKET;
use crate::qmp_client::QmpClient;
pub use record::{Record, Sample, SCHEMA_VERSION};

/// Default sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(50);

/// Records kept per scenario; later ones are counted in `End.dropped`.
pub const MAX_RECORDS: usize = 200_000;

/// Environment variable: sampling interval in ms; `0` switches sampling off
/// (ops are still recorded).
pub const ENV_INTERVAL_MS: &str = "MIGTEST_TELEMETRY_MS";

/// How long connecting to a VMM's telemetry monitor may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// File name of a scenario's telemetry in its kept log directory.
pub const FILE_NAME: &str = "telemetry.jsonl";

/// File name of a failing catalog scenario's QMP transcripts, next to
/// [`FILE_NAME`].
pub const TRANSCRIPT_FILE: &str = "qmp-transcript.txt";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sampling interval from [`ENV_INTERVAL_MS`], else [`DEFAULT_INTERVAL`];
/// `None`: off.
pub fn interval_from_env() -> Option<Duration> {
    match std::env::var(ENV_INTERVAL_MS)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
        None => Some(DEFAULT_INTERVAL),
    }
}

#[derive(Default)]
struct Targets {
    source: Option<Arc<QmpClient>>,
    destination: Option<Arc<QmpClient>>,
}

/// State shared by the recorder, its observer hook and the sampler thread.
pub(crate) struct Shared {
    start: Instant,
    interval: Option<Duration>,
    records: Mutex<Vec<Record>>,
    dropped: AtomicU64,
    targets: Mutex<Targets>,
    stop: Mutex<bool>,
    wake: Condvar,
    log_dirs: Mutex<Vec<PathBuf>>,
}

impl Shared {
    fn t(&self) -> f64 {
        self.t_of(Instant::now())
    }

    fn t_of(&self, at: Instant) -> f64 {
        (at.saturating_duration_since(self.start).as_micros() as f64) / 1e6
    }

    fn push(&self, r: Record) {
        let mut v = lock(&self.records);
        if v.len() < MAX_RECORDS {
            v.push(r);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn stopped(&self) -> bool {
        *lock(&self.stop)
    }

    /// Sleeps up to `d` or until stopped.
    fn pause(&self, d: Duration) {
        let g = lock(&self.stop);
        if !*g {
            let _ = self.wake.wait_timeout(g, d);
        }
    }

    fn source(&self) -> Option<Arc<QmpClient>> {
        lock(&self.targets).source.clone()
    }

    fn destination(&self) -> Option<Arc<QmpClient>> {
        lock(&self.targets).destination.clone()
    }

    /// Stops following a source whose connection is gone.
    fn forget(&self, client: &Arc<QmpClient>) {
        let mut t = lock(&self.targets);
        if t.source.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            t.source = None;
        }
    }

    fn op(&self, vm: &str, op: &str, detail: Value) {
        self.push(Record::Op {
            t: self.t(),
            vm: vm.to_string(),
            op: op.to_string(),
            detail,
        });
    }
}

impl Observer for Shared {
    fn vm_launched(&self, vm: &LaunchedVm<'_>) {
        let t = self.t();
        lock(&self.log_dirs).push(vm.log_dir.to_path_buf());
        let followed = matches!(vm.role, "source" | "destination");
        let client = match (self.interval, followed) {
            (None, _) => Err("sampling is off".to_string()),
            (_, false) => Err(format!("role '{}' is not sampled", vm.role)),
            _ => QmpClient::connect(
                &vm.log_dir.join(TELEMETRY_SOCKET),
                &format!("{} telemetry", vm.role),
                CONNECT_TIMEOUT,
                || None,
            )
            .map_err(|e| e.to_string()),
        };
        self.push(Record::Vm {
            t,
            role: vm.role.to_string(),
            name: vm.name.to_string(),
            backend: vm.backend.to_string(),
            pid: vm.pid,
            log_dir: vm.log_dir.display().to_string(),
            sampled: client.is_ok(),
            note: client.as_ref().err().cloned(),
        });
        if let Ok(c) = client {
            let mut targets = lock(&self.targets);
            let slot = if vm.role == "source" {
                &mut targets.source
            } else {
                &mut targets.destination
            };
            *slot = Some(Arc::new(c));
        }
    }

    fn command(&self, role: &str, name: &str, args: &Value) {
        for (op, detail) in record::ops_of_command(name, args) {
            self.op(role, op, detail);
        }
    }

    fn killed(&self, role: &str, pid: u32) {
        self.op(role, record::op::KILL, json!({ "pid": pid }));
    }

    fn mark(&self, role: &str, what: &str, detail: &Value) {
        self.op(role, what, detail.clone());
    }
}

/// The telemetry of one scenario run. Clones share it.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
    finished: Arc<AtomicBool>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("records", &lock(&self.shared.records).len())
            .finish()
    }
}

/// A running recording; stops the sampler and the thread's hook on drop.
pub struct Recording {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    _installed: observe::Installed,
}

impl Drop for Recording {
    fn drop(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *lock(&self.shared.targets) = Targets::default();
    }
}

impl Recorder {
    /// A recorder for `scenario` sampling at [`interval_from_env`].
    pub fn new(scenario: &str) -> Recorder {
        Recorder::with_interval(scenario, interval_from_env())
    }

    /// A recorder sampling every `interval` (`None`: ops and launches only).
    pub fn with_interval(scenario: &str, interval: Option<Duration>) -> Recorder {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let shared = Shared {
            start: Instant::now(),
            interval,
            records: Mutex::new(vec![Record::Start {
                schema: SCHEMA_VERSION,
                scenario: scenario.to_string(),
                interval_ms: interval.map_or(0, |d| d.as_millis() as u64),
                unix_ms,
            }]),
            dropped: AtomicU64::new(0),
            targets: Mutex::new(Targets::default()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            log_dirs: Mutex::new(Vec::new()),
        };
        Recorder {
            shared: Arc::new(shared),
            finished: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts watching this thread (VMMs launched, commands sent) and the
    /// sampler thread, until the returned guard drops.
    pub fn start(&self) -> Recording {
        *lock(&self.shared.stop) = false;
        let installed = observe::install(self.shared.clone());
        let thread = self.shared.interval.and_then(|interval| {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("migtest-telemetry".into())
                .spawn(move || sampler::run(shared, interval))
                .ok()
        });
        Recording {
            shared: self.shared.clone(),
            thread,
            _installed: installed,
        }
    }

    /// Appends the `end` record (once): `Ok(true)` pass, `Ok(false)` skip,
    /// `Err(first line of the error)` fail.
    pub fn finish(&self, result: Result<bool, &str>) {
        if self.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        let (result, error) = match result {
            Ok(true) => ("pass", None),
            Ok(false) => ("skip", None),
            Err(e) => ("fail", Some(e.lines().next().unwrap_or("").to_string())),
        };
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        lock(&self.shared.records).push(Record::End {
            t: self.shared.t(),
            result: result.to_string(),
            error,
            dropped,
        });
    }

    /// The records so far, ordered by `t` (`start` first, `end` last).
    pub fn records(&self) -> Vec<Record> {
        let mut v = lock(&self.shared.records).clone();
        // Events are recorded when drained, stamped when received.
        v.sort_by(|a, b| a.t().total_cmp(&b.t()));
        if let Some(i) = v.iter().position(|r| matches!(r, Record::End { .. })) {
            let end = v.remove(i);
            v.push(end);
        }
        v
    }

    /// The log directories of the VMMs launched, in launch order.
    pub fn log_dirs(&self) -> Vec<PathBuf> {
        lock(&self.shared.log_dirs).clone()
    }

    /// Writes the records as JSON Lines to `path`.
    pub fn write_jsonl(&self, path: &Path) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for r in &self.records() {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// Writes the records into the first VMM's log directory (the source's)
    /// as [`FILE_NAME`]; returns the path.
    pub fn write_into_log_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self
            .log_dirs()
            .into_iter()
            .find(|d| d.is_dir())
            .ok_or_else(|| std::io::Error::other("no VMM log directory is left"))?;
        let path = dir.join(FILE_NAME);
        self.write_jsonl(&path)?;
        Ok(path)
    }
}

/// Reads a telemetry file back; an error names the line that does not parse.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}
