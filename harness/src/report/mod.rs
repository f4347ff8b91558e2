//! `--report DIR`: one self-contained `DIR/index.html` (inline SVG, inline
//! CSS, no scripts, no network) with the result table and, per migrating
//! scenario, a plot of remaining bytes and throughput over time
//! ([`plot`]); next to it `telemetry/*.jsonl` (`docs/telemetry.md`) and,
//! for failures, `failures/*.txt` (the one-screen report) and
//! `failures/*-qmp.txt` (the QMP transcripts), linked from the page.

mod html;
pub mod plot;

use std::path::{Path, PathBuf};

use crate::telemetry::Record;

/// How a scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passed.
    Pass,
    /// Failed.
    Fail,
    /// Not run on this backend.
    Skip,
}

/// One scenario of a report.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Scenario name.
    pub name: String,
    /// How it ended.
    pub verdict: Verdict,
    /// Table cells after the name and verdict, matching [`Report::columns`].
    pub cells: Vec<String>,
    /// The one-screen failure report (or skip reason / notes).
    pub text: Option<String>,
    /// QMP transcripts, when it failed.
    pub transcript: Option<String>,
    /// Telemetry per run: (label, records); two runs are overlaid on one plot.
    pub runs: Vec<(String, Vec<Record>)>,
}

/// A whole report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Page title ("migtest run").
    pub title: String,
    /// One line under the title: backend, memory, ...
    pub subtitle: String,
    /// Table header after "scenario" and "result".
    pub columns: Vec<String>,
    /// The scenarios.
    pub entries: Vec<Entry>,
}

/// A file-name-safe form of a scenario name (`cancel/src/after/none` ->
/// `cancel-src-after-none`).
pub fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.trim_matches('-').to_string()
}

impl Report {
    /// Writes `dir/index.html` and its side files; returns the page's path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        use anyhow::Context as _;
        for sub in ["telemetry", "failures"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        for e in &self.entries {
            let slug = slug(&e.name);
            for (label, records) in &e.runs {
                let name = if e.runs.len() > 1 {
                    format!("{slug}.{}.jsonl", self::slug(label))
                } else {
                    format!("{slug}.jsonl")
                };
                let mut text = String::new();
                for r in records {
                    text.push_str(&serde_json::to_string(r)?);
                    text.push('\n');
                }
                std::fs::write(dir.join("telemetry").join(name), text)?;
            }
            if e.verdict == Verdict::Fail {
                if let Some(t) = &e.text {
                    std::fs::write(dir.join("failures").join(format!("{slug}.txt")), t)?;
                }
                if let Some(t) = &e.transcript {
                    std::fs::write(dir.join("failures").join(format!("{slug}-qmp.txt")), t)?;
                }
            }
        }
        let page = html::page(self);
        let path = dir.join("index.html");
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// How many plots the page has (one per entry with a migrating run).
    pub fn plot_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| html::series(e).is_some())
            .count()
    }
}
