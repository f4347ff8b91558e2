//! `migtest bench telemetry`: what telemetry sampling costs a catalog run.
//! Every scenario runs with sampling on (the default interval) and off
//! (ops and launches still recorded, nothing else changed), the two
//! interleaved scenario by scenario and their order flipped every run, so
//! drift in the machine's load falls on both; the catalog's wall time is
//! the sum of its scenarios' (as `migtest run` runs them one after another).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::backend::Backend;
use crate::catalog::{catalog, CatalogConfig};
use crate::pair::no_progress;
use crate::size::Size;
use crate::telemetry::{Record, Recorder, DEFAULT_INTERVAL};

/// Sampling cost the issue allows, percent of the catalog's wall time.
pub const TARGET_PERCENT: f64 = 5.0;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the builtin catalog (`filter`: names containing it) `runs` times
/// with sampling on and off; prints each run and the medians.
pub fn run(memory: Size, runs: usize, filter: Option<&str>) -> Result<()> {
    let scenarios: Vec<_> = catalog()
        .into_iter()
        .filter(|s| filter.is_none_or(|f| s.name.contains(f)))
        .collect();
    anyhow::ensure!(!scenarios.is_empty(), "no scenario matches the filter");
    let mut cfg = CatalogConfig::new(Backend::Builtin);
    cfg.memory = memory;
    println!(
        "bench telemetry: {} scenario(s), builtin, {} MiB, {runs} run(s); sampling on (every {} ms) \
         and off, interleaved per scenario",
        scenarios.len(),
        memory.bytes() >> 20,
        DEFAULT_INTERVAL.as_millis()
    );
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for r in 0..runs {
        let order = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut wall = [Duration::ZERO; 2];
        let mut samples = 0;
        for s in &scenarios {
            for sampling in order {
                let rec = Recorder::with_interval(&s.name, sampling.then_some(DEFAULT_INTERVAL));
                let t = Instant::now();
                let result = s.run_recorded(&cfg, no_progress(), &rec);
                wall[usize::from(sampling)] += t.elapsed();
                result.with_context(|| {
                    format!(
                        "{} with sampling {}",
                        s.name,
                        if sampling { "on" } else { "off" }
                    )
                })?;
                samples += rec
                    .records()
                    .iter()
                    .filter(|x| matches!(x, Record::Sample(_)))
                    .count();
            }
        }
        let (a, b) = (wall[1].as_secs_f64(), wall[0].as_secs_f64());
        println!(
            "run {}: sampling on {a:.1} s ({samples} samples), off {b:.1} s: {:+.1}%",
            r + 1,
            (a - b) / b * 100.0
        );
        on.push(a);
        off.push(b);
    }
    let (a, b) = (median(on), median(off));
    let pct = (a - b) / b * 100.0;
    println!(
        "catalog wall time, median of {runs}: sampling on {a:.1} s, off {b:.1} s; overhead {pct:+.1}% \
         ({} the {TARGET_PERCENT}% target)",
        if pct < TARGET_PERCENT { "within" } else { "OVER" }
    );
    Ok(())
}
