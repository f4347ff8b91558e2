//! Helpers shared by the process-level tests.
#![allow(dead_code)]

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
