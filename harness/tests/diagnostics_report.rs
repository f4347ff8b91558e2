//! The failure report: printed once when a test panics inside a step, with
//! the VM's role, pid, transcript and kept log directory.

mod common;

use std::process::Command;

use migtest::diagnostics::Context;

const CHILD_ENV: &str = "MIGTEST_DIAG_CHILD";

/// Run by `panic_in_a_step_prints_the_report` in a child process (ignored,
/// so a test run lists it as not run rather than passed).
#[test]
#[ignore = "child process of panic_in_a_step_prints_the_report"]
fn panicking_child_helper() {
    assert!(
        std::env::var_os(CHILD_ENV).is_some(),
        "run by panic_in_a_step_prints_the_report, which sets {CHILD_ENV}"
    );
    let ctx = Context::new("panicking_child_helper");
    let vm = common::launch_qemu_none("source");
    ctx.add_vm(&vm);
    let _outer = ctx.step("outer");
    vm.query_status().unwrap();
    let _inner = ctx.step("inner");
    panic!("deliberate failure");
}

#[test]
fn panic_in_a_step_prints_the_report() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "panicking_child_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env_remove("MIGTEST_KEEP_LOGS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("==== migtest failure in panicking_child_helper, step: outer > inner ====")
            .count(),
        1,
        "{err}"
    );
    assert!(err.contains("[source] qemu pid"), "{err}");
    assert!(
        err.contains("> {\"execute\":\"query-status\",\"id\":2}"),
        "{err}"
    );
    // The log directory was kept and named; remove it.
    let kept = err
        .lines()
        .find_map(|l| {
            l.split_once("kept logs of source VMM ")
                .map(|(_, r)| r.to_string())
        })
        .unwrap_or_else(|| panic!("no kept-logs line in {err}"));
    let dir = kept.rsplit_once(" in ").unwrap().1.trim();
    assert!(
        std::path::Path::new(dir).join("stderr.log").exists(),
        "{dir}"
    );
    assert!(err.contains(&format!("logs: {dir} (kept)")), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn steps_nest_and_unwind() {
    let ctx = Context::new("t");
    assert_eq!(ctx.current_step(), "(no step)");
    {
        let _a = ctx.step("a");
        {
            let _b = ctx.step("b");
            assert_eq!(ctx.current_step(), "a > b");
        }
        assert_eq!(ctx.current_step(), "a");
    }
    assert_eq!(ctx.current_step(), "(no step)");
    let r: anyhow::Result<()> = Err(anyhow::anyhow!("boom"));
    let _s = ctx.step("check");
    let e = ctx.check(r).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.starts_with("==== migtest failure in t, step: check ===="),
        "{msg}"
    );
    assert!(msg.ends_with(": boom"), "{msg}");
}
