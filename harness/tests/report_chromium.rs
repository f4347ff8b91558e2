//! `migtest run --report DIR` writes a page that headless Chromium renders:
//! it loads without errors, has the result table and one plot per
//! migrating scenario, and a screenshot is taken.
//!
//! Needs Debian's `chromium` (`ci/test` installs it). Without it the test
//! fails, unless `MIGTEST_SKIP_CHROMIUM=1`: then it reports NOT RUN.

use std::path::{Path, PathBuf};
use std::process::Command;

use migtest::telemetry::{read_jsonl, Record};

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MIGTEST_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// Runs headless Chromium on `page` with `extra` options; (stdout, stderr).
fn headless(bin: &Path, profile: &Path, page: &Path, extra: &[String]) -> (String, String) {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Scenarios whose telemetry shows a migration moving RAM (those get a plot).
fn migrating_scenarios(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("telemetry"))
        .unwrap()
        .filter(|f| {
            let records = read_jsonl(&f.as_ref().unwrap().path()).unwrap();
            records
                .iter()
                .any(|r| matches!(r, Record::Sample(s) if s.remaining.is_some()))
        })
        .count()
}

#[test]
fn report_renders_in_headless_chromium() {
    let Some(bin) = chromium() else {
        if std::env::var("MIGTEST_SKIP_CHROMIUM").is_ok_and(|v| v == "1") {
            println!("NOT RUN: report_renders_in_headless_chromium: no chromium (MIGTEST_SKIP_CHROMIUM=1)");
            return;
        }
        panic!("chromium not found in PATH (apt-get install chromium, or MIGTEST_CHROMIUM=PATH; MIGTEST_SKIP_CHROMIUM=1 to skip)");
    };
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let out = Command::new(env!("CARGO_BIN_EXE_migtest"))
        .args([
            "run",
            "--filter",
            "cancel/src/after/",
            "--memory",
            "32M",
            "--report",
        ])
        .arg(&report)
        .env_remove("MIGTEST_KEEP_LOGS")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = report.join("index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("src=") && !html.contains("href=\"http") && !html.contains("url("),
        "the page must not load anything"
    );
    assert!(!html.contains("<script"), "no scripts");
    // Which of these scenarios shows RAM moving in a sample depends on timing (a cancel can end
    // a migration before the first sample); the check is that each one that does gets a plot.
    let expected = migrating_scenarios(&report);
    assert!(
        expected >= 1,
        "no scenario's telemetry shows a migration moving RAM in {text}"
    );

    let profile = dir.path().join("profile");
    let shot = dir.path().join("shot.png");
    let (_, err) = headless(
        &bin,
        &profile,
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1000,4000".into(),
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {err}"));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    for bad in ["CONSOLE", "net::ERR_", "Failed to load", "Uncaught"] {
        assert!(!err.contains(bad), "chromium reported '{bad}':\n{err}");
    }

    let (dom, err) = headless(&bin, &profile, &page, &["--dump-dom".to_string()]);
    assert!(dom.contains("<table id=\"results\">"), "{dom:.2000}\n{err}");
    assert!(
        dom.trim_end().ends_with("</html>"),
        "page did not load completely"
    );
    let plots = dom.matches("<figure class=\"plot\"").count();
    assert_eq!(plots, expected, "plots in the rendered page");
    assert_eq!(
        plots,
        dom.matches("<svg").count(),
        "each plot is one inline SVG"
    );
    assert!(!dom.contains("plot failed"), "{dom:.3000}");
}

/// `migtest replay FILE --report DIR` (a planted fault makes it fail): the
/// page has the one case's row, its plot, the failure report and QMP
/// transcript it links, and the telemetry file; Chromium renders it.
#[test]
fn replay_report_has_the_case_plot_and_failure_links() {
    if !migtest_vmm::FAULT_INJECTION {
        println!("NOT RUN: needs migtest-vmm's fault-injection feature (ci/test builds with it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/mission-flow.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_migtest"))
        .arg("replay")
        .arg(&file)
        .args(["--x-fault", "skip-one-dirty-page", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("report: "), "{text}");
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert_eq!(
        html.matches("<figure class=\"plot\"").count(),
        1,
        "{html:.3000}"
    );
    assert!(html.contains("class=\"fail\">FAIL<"), "{html:.3000}");
    for link in [
        "failures/mission-flow.txt",
        "failures/mission-flow-qmp.txt",
        "telemetry/mission-flow.jsonl",
    ] {
        assert!(
            html.contains(&format!("href=\"{link}\"")),
            "no link to {link}"
        );
        assert!(report.join(link).is_file(), "{link} not written");
    }
    let records = read_jsonl(&report.join("telemetry/mission-flow.jsonl")).unwrap();
    assert!(matches!(records.last(), Some(Record::End { result, .. }) if result == "fail"));
    if let Some(bin) = chromium() {
        let profile = dir.path().join("profile");
        let (dom, err) = headless(
            &bin,
            &profile,
            &report.join("index.html"),
            &["--dump-dom".to_string()],
        );
        assert_eq!(dom.matches("<svg").count(), 1, "{err}");
    }
}
