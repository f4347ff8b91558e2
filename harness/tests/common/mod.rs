//! Helpers shared by the process-level tests.
#![allow(dead_code)]

pub mod suite;

use std::time::{Duration, Instant};

use migtest::backend::{Backend, LaunchSpec};
use migtest::vm::Vm;

/// Whether a pid no longer names a live process (gone, or a zombie).
pub fn pid_gone(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
        return true;
    }
    // A zombie still answers kill(0); it runs no code.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// Polls until `pid` is gone or `timeout` passes.
pub fn wait_pid_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if pid_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    pid_gone(pid)
}

/// Real QEMU with no machine: cheap, QMP only.
pub fn qemu_none() -> Backend {
    Backend::qemu("none")
}

/// Launches QEMU `-machine none` under `role`.
pub fn launch_qemu_none(role: &str) -> Vm {
    Vm::launch_as(role, &qemu_none(), &LaunchSpec::new(role, 0, "none"))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Builds `migtest-vmm` (so `-p migtest` runs test the current source, not
/// a stale binary) unless `MIGTEST_VMM` names one, with `fault-injection` when
/// this build has it. Cargo is quick when it is
/// up to date; the target directory and profile are those of this test
/// binary (`target/<profile>/deps/<test>`).
pub fn ensure_vmm_built() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("MIGTEST_VMM").is_some() {
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let deps = exe.parent().unwrap();
        let profile_dir = deps.parent().unwrap();
        let target_dir = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => "dev".to_string(),
            other => other.to_string(),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "migtest-vmm",
            "--bin",
            "migtest-vmm",
            "--profile",
        ])
        .arg(&profile);
        // Same features as the build that made this test (the planted-bug tests of the
        // whole-workspace run need `-x-fault` in the binary this would overwrite).
        if migtest_vmm::FAULT_INJECTION {
            cmd.args(["--features", "fault-injection"]);
        }
        let stderr = tempfile::tempfile().expect("a temp file for cargo's stderr");
        let mut child = cmd
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::null())
            .stderr(stderr.try_clone().expect("cloning the stderr file"))
            .spawn()
            .expect("running cargo build -p migtest-vmm");
        let status = wait_child(&mut child, BUILD_DEADLINE).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cargo build -p migtest-vmm did not finish within {} s (another cargo holding \
                 the build lock of {}?)",
                BUILD_DEADLINE.as_secs(),
                target_dir.display()
            )
        });
        assert!(
            status.success(),
            "cargo build -p migtest-vmm failed ({status}):\n{}",
            read_all(stderr)
        );
    });
}

/// How long [`ensure_vmm_built`] waits for cargo (a cold debug build of the VMM takes about
/// a minute on 2 cores; cargo also waits for any other cargo on the same target directory).
const BUILD_DEADLINE: Duration = Duration::from_secs(900);

/// Polls `child` until it exits or `timeout` passes (`None`).
fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for cargo") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The whole content of `f` from its start, lossily as text.
fn read_all(mut f: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut buf = Vec::new();
    let _ = f.rewind().and_then(|_| f.read_to_end(&mut buf));
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs the test `helper` of this binary in a child process (with `env`
/// pointing to a file for the VMM's pid and log dir); the helper launches a
/// VMM and aborts. Asserts the VMM was SIGKILLed by its parent-death signal.
///
/// This process becomes a child subreaper first, so the orphaned VMM is
/// reparented here and can be reaped (and its signal checked) instead of
/// lingering as a zombie.
pub fn assert_vmm_dies_with_aborted_parent(helper: &str, env: &str) {
    // SAFETY: plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let tmp = tempfile::tempdir_in("/tmp").unwrap();
    let out = tmp.path().join("pid");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            helper,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env, &out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should abort: {status}");
    let text = std::fs::read_to_string(&out).expect("the child wrote the VMM pid");
    let (pid, dir) = text.split_once(' ').unwrap();
    let pid: u32 = pid.parse().unwrap();
    // The aborted child could not clean up its log directory.
    let _ = std::fs::remove_dir_all(dir);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut wstatus = 0;
    loop {
        // SAFETY: waitpid on a pid reparented to this subreaper.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut wstatus, libc::WNOHANG) };
        if r == pid as libc::pid_t {
            break;
        }
        if r < 0 {
            // Not our child after all (no subreaper support): fall back.
            assert!(
                wait_pid_gone(pid, Duration::from_secs(5)),
                "VMM pid {pid} survived its aborted parent"
            );
            return;
        }
        if Instant::now() >= deadline {
            // SAFETY: do not leave it behind even when the test fails.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("VMM pid {pid} survived its aborted parent");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        libc::WIFSIGNALED(wstatus) && libc::WTERMSIG(wstatus) == libc::SIGKILL,
        "VMM pid {pid} ended with wait status {wstatus:#x}, not SIGKILL"
    );
}
