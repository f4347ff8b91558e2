//! The process guard: kill on drop, logs, exit statuses, and the
//! parent-death signal when the test process itself dies.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{launch_qemu_none, pid_gone};
use migtest::process::VmmProcess;

fn sh(script: &str) -> VmmProcess {
    let script = script.to_string();
    VmmProcess::spawn("helper", Path::new("/bin/sh"), move |_| {
        vec!["-c".into(), script]
    })
    .unwrap()
}

fn wait_for_stderr(p: &VmmProcess, last_line: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.stderr_tail(1) != last_line {
        assert!(Instant::now() < deadline, "no {last_line:?} on stderr");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn drop_kills_a_process_without_qmp() {
    // Ignores SIGTERM: Drop must escalate to SIGKILL after its grace period.
    let p = sh("trap '' TERM; echo ready >&2; while :; do sleep 0.05; done");
    let pid = p.pid();
    wait_for_stderr(&p, "ready");
    let dir = p.log_dir().to_path_buf();
    assert!(p.is_alive());
    let start = Instant::now();
    drop(p);
    assert!(pid_gone(pid));
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(!dir.exists());
}

#[test]
fn drop_terms_a_cooperative_process_quickly() {
    let p = sh("exec sleep 60");
    let pid = p.pid();
    let start = Instant::now();
    drop(p);
    assert!(pid_gone(pid));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn kill_wait_exit_and_tails() {
    let p = sh("printf AB > serial.log; echo out; echo one >&2; echo two >&2; echo three >&2; exec sleep 60");
    // Output reaches the files (the shell writes them in order: "three" comes last).
    wait_for_stderr(&p, "three");
    assert_eq!(p.stderr_tail(2), "two\nthree");
    assert_eq!(p.serial_tail(1), "B");
    assert_eq!(
        std::fs::read_to_string(p.path("stdout.log")).unwrap(),
        "out\n"
    );
    assert!(p.wait_exit(Duration::from_millis(50)).is_none());
    let st = p.kill();
    assert!(!st.success());
    assert_eq!(p.exit_status(), Some(st));
    assert!(!p.is_alive());
    assert!(pid_gone(p.pid()));
    assert!(p.describe().contains("exited"), "{}", p.describe());
}

#[test]
fn exit_status_of_a_process_that_exits() {
    let p = sh("exit 3");
    let st = p.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(st.code(), Some(3));
}

#[test]
fn keep_logs_keeps_the_directory() {
    let p = sh("echo kept >&2");
    p.set_keep_logs(true);
    let dir = p.log_dir().to_path_buf();
    p.wait_exit(Duration::from_secs(5));
    drop(p);
    assert_eq!(
        std::fs::read_to_string(dir.join("stderr.log")).unwrap(),
        "kept\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn log_dirs_are_short() {
    let p = sh("exit 0");
    let sock = p.qmp_socket();
    assert!(sock.as_os_str().len() < 60, "{}", sock.display());
}

const CHILD_ENV: &str = "MIGTEST_PDEATHSIG_CHILD";

/// Not a test on its own: run by `vmm_dies_when_the_test_process_aborts`
/// in a child copy of this binary (ignored, so a test run lists it as not
/// run rather than passed).
#[test]
#[ignore = "child process of vmm_dies_when_the_test_process_aborts"]
fn pdeathsig_child_helper() {
    let out = std::env::var_os(CHILD_ENV).unwrap_or_else(|| {
        panic!("run by vmm_dies_when_the_test_process_aborts, which sets {CHILD_ENV}")
    });
    let vm = launch_qemu_none("orphan");
    std::fs::write(
        &out,
        format!("{} {}", vm.pid(), vm.process().log_dir().display()),
    )
    .unwrap();
    std::process::abort();
}

#[test]
fn vmm_dies_when_the_test_process_aborts() {
    common::assert_vmm_dies_with_aborted_parent("pdeathsig_child_helper", CHILD_ENV);
}
