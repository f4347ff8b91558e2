//! One-screen failure reports.
//!
//! A [`Context`] knows the VMs of a test (as [`VmDiag`] views, which stay
//! readable after the VMs are gone) and the step the test is in. If the
//! thread panics while a [`Step`] guard (or the context) is alive, the
//! report is printed to stderr and the VMs' log directories are kept.
//! Errors returned instead of panics get the report attached with
//! [`Context::fail`] / [`Context::check`].
//!
//! ```no_run
//! # use migtest::{diagnostics::Context, vm::Vm, backend::{Backend, LaunchSpec}};
//! # fn t() -> anyhow::Result<()> {
//! let ctx = Context::new("precopy_unix");
//! let src = Vm::launch_as("source", &Backend::Builtin, &LaunchSpec::new("source", 64 << 20, "sweep"))?;
//! ctx.add_vm(&src);
//! let _s = ctx.step("wait for 3 passes");
//! // ... a panic here prints the report
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::process::ProcessProbe;
use crate::qmp_client::Transcript;

/// Width lines are cut to in reports.
pub const WIDTH: usize = 160;
/// QMP transcript lines per VM in a report.
pub const QMP_LINES: usize = 8;
/// Stderr lines per VM in a report.
pub const STDERR_LINES: usize = 5;
/// Serial bytes per VM in a report.
pub const SERIAL_BYTES: usize = 64;

/// Anything a report can show as a VM: [`crate::vm::Vm`] implements it, so
/// this layer needs nothing of the VM handle above it.
pub trait Diagnosable {
    /// A diagnostics view that outlives the VM.
    fn diag(&self) -> VmDiag;
}

/// What a report shows about one VM; outlives the VM.
#[derive(Clone)]
pub struct VmDiag {
    /// Role label.
    pub role: String,
    /// Backend name.
    pub backend: String,
    /// The binary.
    pub binary: PathBuf,
    /// The process.
    pub process: ProcessProbe,
    /// Its QMP transcript.
    pub transcript: Transcript,
}

impl VmDiag {
    /// The report section for this VM.
    pub fn report(&self) -> String {
        let p = &self.process;
        let state = match p.exit_status() {
            None => "running".to_string(),
            Some(st) => format!("exited: {st}"),
        };
        let mut out = format!(
            "[{}] {} pid {} ({state}) {}\n",
            self.role,
            self.backend,
            p.pid(),
            self.binary.display()
        );
        out.push_str(&cut(&format!("  command: {}", p.command_line())));
        out.push('\n');
        let logs = if !p.log_dir().exists() {
            "removed"
        } else if p.keeps_logs() {
            "kept"
        } else {
            "removed on drop"
        };
        out.push_str(&format!("  logs: {} ({logs})\n", p.log_dir().display()));
        let qmp = self.transcript.tail_truncated(QMP_LINES, WIDTH - 4);
        if !qmp.is_empty() {
            out.push_str(&format!("  QMP (last {QMP_LINES}):\n"));
            for l in qmp.lines() {
                out.push_str(&format!("    {l}\n"));
            }
        }
        let err = p.stderr_tail(STDERR_LINES);
        if !err.trim().is_empty() {
            out.push_str(&format!("  stderr (last {STDERR_LINES} lines):\n"));
            for l in err.lines() {
                out.push_str(&cut(&format!("    {l}")));
                out.push('\n');
            }
        }
        let serial = p.serial_tail(SERIAL_BYTES);
        if !serial.is_empty() {
            out.push_str(&cut(&format!(
                "  serial (last {SERIAL_BYTES} bytes): {serial:?}"
            )));
            out.push('\n');
        }
        out
    }
}

fn cut(s: &str) -> String {
    if s.chars().count() <= WIDTH {
        return s.to_string();
    }
    let mut t: String = s.chars().take(WIDTH - 3).collect();
    t.push_str("...");
    t
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A test's diagnostic context: its VMs and current step.
pub struct Context {
    name: String,
    vms: Mutex<Vec<VmDiag>>,
    steps: Mutex<Vec<String>>,
    notes: Mutex<Vec<String>>,
    reported: AtomicBool,
}

impl Context {
    /// A context for the test `name`.
    pub fn new(name: &str) -> Context {
        Context {
            name: name.to_string(),
            vms: Mutex::new(Vec::new()),
            steps: Mutex::new(Vec::new()),
            notes: Mutex::new(Vec::new()),
            reported: AtomicBool::new(false),
        }
    }

    /// Registers a VM for reports.
    pub fn add_vm(&self, vm: &impl Diagnosable) {
        self.add(vm.diag());
    }

    /// Adds a line to the report, after the error (e.g. where the
    /// telemetry was written).
    pub fn add_note(&self, note: &str) {
        lock(&self.notes).push(note.to_string());
    }

    /// Registers a VM view for reports.
    pub fn add(&self, diag: VmDiag) {
        lock(&self.vms).push(diag);
    }

    /// Enters a step; the returned guard leaves it when dropped.
    pub fn step(&self, what: &str) -> Step<'_> {
        let mut steps = lock(&self.steps);
        steps.push(what.to_string());
        Step {
            ctx: self,
            depth: steps.len(),
        }
    }

    /// The current step path ("a > b"), or "(no step)".
    pub fn current_step(&self) -> String {
        let steps = lock(&self.steps);
        if steps.is_empty() {
            "(no step)".into()
        } else {
            steps.join(" > ")
        }
    }

    /// Replaces the step path with one top-level step (for code that names
    /// its steps in sequence rather than with guards).
    pub fn set_step(&self, what: &str) {
        let mut steps = lock(&self.steps);
        steps.clear();
        steps.push(what.to_string());
    }

    /// Defers removal of the registered VMs' log directories to
    /// [`Context::finish`], so they survive the VMs when the test fails.
    /// Held directories are not announced when their VMs drop: the failure
    /// report names them, once.
    pub fn hold_logs(&self) {
        for v in lock(&self.vms).iter() {
            v.process.hold_logs();
        }
    }

    /// The registered VMs' log directories that exist and are kept (after a
    /// failure, or with `MIGTEST_KEEP_LOGS`), each once, in registration order.
    pub fn kept_log_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for v in lock(&self.vms).iter() {
            let dir = v.process.log_dir();
            if dir.exists() && v.process.keeps_logs() && !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
        dirs
    }

    /// Ends a test that held its logs: on success the log directories are
    /// removed (unless `MIGTEST_KEEP_LOGS` is set); on failure they stay and
    /// the error gets the report.
    pub fn finish<T>(&self, r: anyhow::Result<T>) -> anyhow::Result<T> {
        match r {
            Ok(v) => {
                if !crate::process::keep_logs_from_env() {
                    for vm in lock(&self.vms).iter() {
                        if vm.process.exit_status().is_some()
                            || !vm.process.log_dir().join("qmp.sock").exists()
                        {
                            let _ = std::fs::remove_dir_all(vm.process.log_dir());
                        }
                    }
                }
                Ok(v)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Every registered VM's QMP transcript (as kept: the last
    /// [`crate::qmp_client::TRANSCRIPT_LINES`] lines), headed by role and pid.
    pub fn transcripts(&self) -> String {
        let mut out = String::new();
        for v in lock(&self.vms).iter() {
            out.push_str(&format!(
                "==== [{}] {} pid {}\n",
                v.role,
                v.backend,
                v.process.pid()
            ));
            out.push_str(&v.transcript.tail(usize::MAX));
        }
        out
    }

    /// Keeps the log directories of all registered VMs.
    pub fn keep_logs(&self) {
        for v in lock(&self.vms).iter() {
            v.process.keep_logs();
        }
    }

    /// The report, headed by `error` if given.
    pub fn report(&self, error: Option<&str>) -> String {
        let mut out = format!(
            "==== migtest failure in {}, step: {} ====\n",
            self.name,
            self.current_step()
        );
        if let Some(e) = error {
            for l in e.lines().take(8) {
                out.push_str(&cut(&format!("error: {l}")));
                out.push('\n');
            }
        }
        for n in lock(&self.notes).iter() {
            out.push_str(&cut(n));
            out.push('\n');
        }
        for v in lock(&self.vms).iter() {
            out.push_str(&v.report());
        }
        out.push_str("====\n");
        out
    }

    /// Turns an error into one carrying the report as its outer context
    /// (the error itself follows it: `{:#}` or "Caused by"); keeps the logs.
    pub fn fail(&self, err: anyhow::Error) -> anyhow::Error {
        self.keep_logs();
        self.reported.store(true, Ordering::SeqCst);
        let report = self.report(None);
        err.context(report)
    }

    /// [`Context::fail`] on the error of `r`.
    pub fn check<T>(&self, r: anyhow::Result<T>) -> anyhow::Result<T> {
        r.map_err(|e| self.fail(e))
    }

    fn print_if_panicking(&self) {
        if std::thread::panicking() && !self.reported.swap(true, Ordering::SeqCst) {
            self.keep_logs();
            eprintln!("{}", self.report(None));
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        self.print_if_panicking();
    }
}

/// A step of a test; see [`Context::step`].
pub struct Step<'a> {
    ctx: &'a Context,
    depth: usize,
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        self.ctx.print_if_panicking();
        lock(&self.ctx.steps).truncate(self.depth - 1);
    }
}
