//! `migtest run` is quiet about log directories: a passing scenario prints
//! none, a failing one names each kept directory once (and it exists), and
//! `--keep-logs` names each kept directory once.

use std::path::PathBuf;
use std::process::Command;

/// Runs the `migtest` binary with `args`; returns (exit code, stdout + stderr).
fn migtest(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_migtest"))
        .args(args)
        .env_remove("MIGTEST_KEEP_LOGS")
        .output()
        .expect("running migtest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Lines that announce a log directory, and the directories they name.
fn log_lines(text: &str) -> Vec<(String, PathBuf)> {
    text.lines()
        .filter_map(|l| {
            let t = l.trim();
            let rest = t
                .strip_prefix("logs: ")
                .or_else(|| t.strip_prefix("kept logs: "))
                .or_else(|| t.split_once("kept logs of ").map(|(_, r)| r))?;
            let dir = rest
                .split_whitespace()
                .find(|w| w.starts_with("/tmp/migtest-"))?;
            Some((t.to_string(), PathBuf::from(dir)))
        })
        .collect()
}

fn assert_each_once_and_present(text: &str, lines: &[(String, PathBuf)]) {
    for (line, dir) in lines {
        assert_eq!(
            lines.iter().filter(|(_, d)| d == dir).count(),
            1,
            "{} named more than once:\n{text}",
            dir.display()
        );
        assert!(dir.is_dir(), "'{line}' names a directory that is gone");
    }
}

#[test]
fn passing_run_prints_no_log_directories() {
    let (code, text) = migtest(&["run", "--filter", "non-live", "--memory", "32M"]);
    assert_eq!(code, 0, "{text}");
    assert!(log_lines(&text).is_empty(), "{text}");
    assert!(!text.contains("/tmp/migtest-"), "{text}");
}

#[test]
fn keep_logs_names_each_kept_directory_once() {
    let (code, text) = migtest(&[
        "run",
        "--filter",
        "non-live",
        "--memory",
        "32M",
        "--keep-logs",
    ]);
    assert_eq!(code, 0, "{text}");
    let lines = log_lines(&text);
    assert_eq!(lines.len(), 2, "source and destination: {text}");
    assert_each_once_and_present(&text, &lines);
    for (_, dir) in lines {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn failing_run_names_each_kept_directory_once() {
    if !migtest_vmm::FAULT_INJECTION {
        println!("NOT RUN: needs migtest-vmm's fault-injection feature (ci/test builds with it)");
        return;
    }
    let (code, text) = migtest(&[
        "run",
        "--filter",
        "mission/tcp/smp1",
        "--memory",
        "32M",
        "--x-fault",
        "skip-one-dirty-page",
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL mission/tcp/smp1"), "{text}");
    let lines = log_lines(&text);
    assert_eq!(lines.len(), 2, "source and destination: {text}");
    assert_each_once_and_present(&text, &lines);
    assert!(!text.contains("kept logs of"), "{text}");
    for (_, dir) in lines {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
