//! A guarded child VMM process.
//!
//! [`VmmProcess`] owns one spawned VMM (migtest-vmm or QEMU) and a short
//! temporary directory under `/tmp` that holds everything the process
//! touches: `qmp.sock`, `serial.log`, `stdout.log`, `stderr.log` and
//! migration sockets. Unix socket paths are limited to 108 bytes
//! (`sun_path`), which is why the directory is not under `target/`.
//!
//! Cleanup is layered so that no VMM outlives its test:
//!
//! - `Drop` asks the VMM to `quit` over QMP (if a [`QmpClient`] was attached
//!   with [`VmmProcess::attach_qmp`]), or sends `SIGTERM` when none is,
//!   waits up to 3 s, then sends `SIGKILL` and reaps it.
//! - The child is spawned with `prctl(PR_SET_PDEATHSIG, SIGKILL)`, so it is
//!   killed when the test process dies without unwinding (abort, `SIGKILL`
//!   from a test-runner timeout).
//! - The child stays in the test's process group, so signals a runner sends
//!   to the group reach the VMM too.
//!
//! **PDEATHSIG caveat:** Linux delivers the parent-death signal when the
//! *thread* that spawned the child exits, not when the process does. Spawn
//! VMMs from a thread that lives at least as long as the guard — the test
//! thread itself is fine; a short-lived helper thread is not (its exit kills
//! the VMM).
//!
//! The log directory is removed on drop unless logs are to be kept:
//! [`VmmProcess::set_keep_logs`], the environment variable
//! `MIGTEST_KEEP_LOGS=1`, or a panicking thread (then its path is printed),
//! or it is held by a diagnostics context ([`ProcessProbe::hold_logs`]),
//! which removes it when the test passes and reports it when it fails.
//!
//! [`QmpClient`]: crate::qmp_client::QmpClient

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::qmp_client::QmpHandle;

/// File name of the QMP socket inside the log directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// File name of the second QMP socket, the telemetry sampler's monitor.
pub const TELEMETRY_SOCKET: &str = "telemetry.sock";
/// File name of the serial log inside the log directory.
pub const SERIAL_LOG: &str = "serial.log";
/// File name of the captured stderr inside the log directory.
pub const STDERR_LOG: &str = "stderr.log";
/// File name of the captured stdout inside the log directory.
pub const STDOUT_LOG: &str = "stdout.log";

/// How long `Drop` waits for a graceful exit before `SIGKILL`.
pub const DROP_GRACE: Duration = Duration::from_secs(3);

/// Whether `MIGTEST_KEEP_LOGS` asks to keep every log directory.
pub fn keep_logs_from_env() -> bool {
    std::env::var("MIGTEST_KEEP_LOGS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Creates a fresh short log directory, `/tmp/migtest-XXXXXX`.
pub fn new_log_dir() -> io::Result<TempDir> {
    tempfile::Builder::new()
        .prefix("migtest-")
        .tempdir_in("/tmp")
}

struct ChildState {
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildState {
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }
}

/// A cheap, cloneable view of a process for diagnostics: it stays usable
/// after the [`VmmProcess`] is gone (then it reports the exit status).
#[derive(Clone)]
pub struct ProcessProbe {
    state: Arc<Mutex<ChildState>>,
    pid: u32,
    dir: PathBuf,
    keep_logs: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    command_line: String,
}

impl ProcessProbe {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `None` while running, else its exit status.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        lock(&self.state).poll()
    }

    /// The log directory (it may be gone if the process was dropped without
    /// keeping logs).
    pub fn log_dir(&self) -> &Path {
        &self.dir
    }

    /// Marks the log directory to be kept when the process is dropped.
    pub fn keep_logs(&self) {
        self.keep_logs.store(true, Ordering::SeqCst);
    }

    /// Hands the log directory to a holder (a diagnostics context): drop
    /// leaves it in place without a word, and the holder removes it or
    /// reports it.
    pub fn hold_logs(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Whether the log directory will be kept on drop (flag, environment
    /// or a panicking thread).
    pub fn keeps_logs(&self) -> bool {
        self.keep_logs.load(Ordering::SeqCst) || keep_logs_from_env() || std::thread::panicking()
    }

    /// The command line, shell-quoted for copy and paste.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// The last `n` lines of stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        tail_lines(&self.dir.join(STDERR_LOG), n)
    }

    /// The last `n` bytes of the serial log (lossy UTF-8).
    pub fn serial_tail(&self, n: usize) -> String {
        tail_bytes(&self.dir.join(SERIAL_LOG), n)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A spawned VMM process with its log directory; killed on drop.
pub struct VmmProcess {
    label: String,
    program: PathBuf,
    args: Vec<String>,
    probe: ProcessProbe,
    dir: Option<TempDir>,
    qmp: Mutex<Option<QmpHandle>>,
}

impl std::fmt::Debug for VmmProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmProcess")
            .field("label", &self.label)
            .field("pid", &self.probe.pid)
            .field("program", &self.program)
            .field("dir", &self.probe.dir)
            .finish()
    }
}

impl VmmProcess {
    /// Creates a log directory, lets `build_args` produce the command line
    /// (it gets the directory, to place sockets and logs there) and spawns
    /// `program`. `label` names the process in messages ("source", ...).
    ///
    /// See the module docs for the PDEATHSIG caveat: call this from a thread
    /// that outlives the returned guard.
    pub fn spawn(
        label: &str,
        program: &Path,
        build_args: impl FnOnce(&Path) -> Vec<String>,
    ) -> io::Result<VmmProcess> {
        let dir = new_log_dir()?;
        let args = build_args(dir.path());
        VmmProcess::spawn_in(dir, label, program, args)
    }

    /// Spawns `program args` with its output captured in `dir` (which the
    /// guard then owns).
    pub fn spawn_in(
        dir: TempDir,
        label: &str,
        program: &Path,
        args: Vec<String>,
    ) -> io::Result<VmmProcess> {
        let path = dir.path().to_path_buf();
        let stdout = File::create(path.join(STDOUT_LOG))?;
        let stderr = File::create(path.join(STDERR_LOG))?;
        let mut cmd = Command::new(program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .current_dir(&path);
        // SAFETY: the closure runs between fork and exec; it only calls prctl
        // and getppid (async-signal-safe) and allocates nothing.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then the
                // signal will never come, so do not start at all. (No
                // allocation here: the parent is multi-threaded.)
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot spawn {label} VMM {}: {e}", program.display()),
            )
        })?;
        let pid = child.id();
        let command_line = shell_line(program, &args);
        Ok(VmmProcess {
            label: label.to_string(),
            program: program.to_path_buf(),
            args,
            probe: ProcessProbe {
                state: Arc::new(Mutex::new(ChildState {
                    child,
                    status: None,
                })),
                pid,
                dir: path,
                keep_logs: Arc::new(AtomicBool::new(false)),
                held: Arc::new(AtomicBool::new(false)),
                command_line,
            },
            dir: Some(dir),
            qmp: Mutex::new(None),
        })
    }

    /// The role label given at spawn.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.probe.pid
    }

    /// The program that was spawned.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The arguments it was spawned with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The command line, shell-quoted.
    pub fn command_line(&self) -> &str {
        &self.probe.command_line
    }

    /// A diagnostics view that outlives this guard.
    pub fn probe(&self) -> ProcessProbe {
        self.probe.clone()
    }

    /// The log directory.
    pub fn log_dir(&self) -> &Path {
        &self.probe.dir
    }

    /// `log_dir()/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.probe.dir.join(name)
    }

    /// The QMP socket path (`log_dir()/qmp.sock`).
    pub fn qmp_socket(&self) -> PathBuf {
        self.path(QMP_SOCKET)
    }

    /// The serial log path.
    pub fn serial_path(&self) -> PathBuf {
        self.path(SERIAL_LOG)
    }

    /// The stderr log path.
    pub fn stderr_path(&self) -> PathBuf {
        self.path(STDERR_LOG)
    }

    /// Keep (or not) the log directory when this guard is dropped.
    pub fn set_keep_logs(&self, keep: bool) {
        self.probe.keep_logs.store(keep, Ordering::SeqCst);
    }

    /// Lets `Drop` end the process with QMP `quit` instead of a signal.
    pub fn attach_qmp(&self, handle: QmpHandle) {
        *lock(&self.qmp) = Some(handle);
    }

    /// Whether the process still runs (reaps it if it exited).
    pub fn is_alive(&self) -> bool {
        self.exit_status().is_none()
    }

    /// The exit status, if it exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.probe.exit_status()
    }

    /// Waits up to `timeout` for the process to exit (polling `try_wait`).
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(st) = self.exit_status() {
                return Some(st);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Sends `SIGKILL` now and reaps the process. Returns its exit status.
    pub fn kill(&self) -> ExitStatus {
        let mut st = lock(&self.probe.state);
        if let Some(status) = st.poll() {
            return status;
        }
        let _ = st.child.kill();
        let status = match st.child.wait() {
            Ok(s) => s,
            // Cannot happen for our own un-reaped child; report as killed.
            Err(_) => std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL),
        };
        st.status = Some(status);
        status
    }

    /// Sends a signal (e.g. `libc::SIGSTOP`) if the process is still running.
    pub fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        let st = lock(&self.probe.state);
        if st.status.is_some() {
            return Err(io::Error::other("process already exited"));
        }
        // SAFETY: plain syscall on our own un-reaped child's pid.
        if unsafe { libc::kill(self.probe.pid as libc::pid_t, sig) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The last `n` lines of stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        self.probe.stderr_tail(n)
    }

    /// The last `n` bytes of the serial log (lossy UTF-8).
    pub fn serial_tail(&self, n: usize) -> String {
        self.probe.serial_tail(n)
    }

    /// A one-line description: label, pid, state.
    pub fn describe(&self) -> String {
        let state = match self.exit_status() {
            None => "running".to_string(),
            Some(st) => format!("exited: {st}"),
        };
        format!("{} VMM (pid {}, {state})", self.label, self.pid())
    }

    fn shut_down(&self) {
        if self.exit_status().is_some() {
            return;
        }
        let handle = lock(&self.qmp).take();
        let asked = handle.is_some_and(|h| h.quit(Duration::from_millis(500)));
        if !asked {
            let _ = self.signal(libc::SIGTERM);
        }
        if self.wait_exit(DROP_GRACE).is_none() {
            self.kill();
        }
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        self.shut_down();
        let panicking = std::thread::panicking();
        let held = self.probe.held.load(Ordering::SeqCst);
        let asked = self.probe.keep_logs.load(Ordering::SeqCst);
        let keep = panicking || held || asked || keep_logs_from_env();
        if let Some(dir) = self.dir.take() {
            if keep {
                let path = dir.keep();
                // A held directory is the holder's to report (once, and only
                // if it stays); with MIGTEST_KEEP_LOGS the user knows.
                if panicking || (asked && !held && !keep_logs_from_env()) {
                    eprintln!(
                        "migtest: kept logs of {} VMM (pid {}) in {}",
                        self.label,
                        self.probe.pid,
                        path.display()
                    );
                }
            }
        }
    }
}

/// Shell-quotes a command line for messages.
pub fn shell_line(program: &Path, args: &[String]) -> String {
    let mut out = quote(&program.to_string_lossy());
    for a in args {
        out.push(' ');
        out.push_str(&quote(a));
    }
    out
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The last `n_bytes` of a file as lossy UTF-8 (empty if unreadable).
pub fn tail_bytes(path: &Path, n_bytes: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(n_bytes as u64);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(n_bytes as u64).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` lines of a file (reads at most its last 64 KiB).
pub fn tail_lines(path: &Path, n: usize) -> String {
    let text = tail_bytes(path, 64 * 1024);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let s = shell_line(
            Path::new("/bin/qemu"),
            &["-m".into(), "1G".into(), "a b".into(), "it's".into()],
        );
        assert_eq!(s, r"/bin/qemu -m 1G 'a b' 'it'\''s'");
    }

    #[test]
    fn tails() {
        let dir = new_log_dir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "one\ntwo\nthree\n").unwrap();
        assert_eq!(tail_lines(&p, 2), "two\nthree");
        assert_eq!(tail_bytes(&p, 6), "three\n");
        assert_eq!(tail_bytes(&dir.path().join("missing"), 6), "");
        assert!(dir.path().to_str().unwrap().len() < 40);
    }
}
