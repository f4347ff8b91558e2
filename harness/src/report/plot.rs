//! The migration plot of one scenario: remaining bytes and throughput over
//! time, one curve per run (builtin and QEMU overlaid by `compare`), with
//! passes, hold, release, cancel/kill and the downtime marked. SVG by
//! `plotters` (its SVG backend writes `<text>` elements, so no font system
//! is needed).

use plotters::prelude::*;

use crate::telemetry::Record;

/// One run's curves and marks, read from its telemetry.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Legend label ("builtin", "qemu", or the scenario).
    pub label: String,
    /// (t s, remaining MiB).
    pub remaining: Vec<(f64, f64)>,
    /// (t s, MB/s from the growth of `transferred` between samples).
    pub throughput: Vec<(f64, f64)>,
    /// (t s, pass number) at each `MIGRATION_PASS` of the source.
    pub passes: Vec<(f64, u64)>,
    /// (t s, op) for hold-set, hold-cleared, cancel, kill.
    pub ops: Vec<(f64, String)>,
    /// Downtime window (start at the source's `STOP`, length `downtime`).
    pub downtime: Option<(f64, f64)>,
}

impl Series {
    /// Curves and marks from a scenario's records.
    pub fn from_records(label: &str, records: &[Record]) -> Series {
        let mut s = Series {
            label: label.to_string(),
            ..Series::default()
        };
        let mut last: Option<(f64, u64)> = None;
        let mut stop_at = None;
        let mut downtime_ms = None;
        for r in records {
            match r {
                Record::Sample(x) => {
                    if let Some(rem) = x.remaining {
                        s.remaining.push((x.t, rem as f64 / (1 << 20) as f64));
                    }
                    if let Some(tr) = x.transferred {
                        if let Some((t0, b0)) = last {
                            if x.t - t0 >= 0.005 && tr >= b0 {
                                s.throughput
                                    .push((x.t, (tr - b0) as f64 / 1e6 / (x.t - t0)));
                            }
                        }
                        last = Some((x.t, tr));
                    }
                    if x.downtime_ms.is_some() {
                        downtime_ms = x.downtime_ms;
                    }
                }
                Record::Event {
                    t, vm, event, data, ..
                } if vm == "source" => match event.as_str() {
                    "MIGRATION_PASS" => {
                        let n = data
                            .as_ref()
                            .and_then(|d| d.get("pass"))
                            .and_then(|p| p.as_u64());
                        s.passes.push((*t, n.unwrap_or(0)));
                    }
                    "STOP" => stop_at = Some(*t),
                    _ => {}
                },
                Record::Op { t, op, .. }
                    if matches!(op.as_str(), "hold-set" | "hold-cleared" | "cancel" | "kill") =>
                {
                    s.ops.push((*t, op.clone()));
                }
                _ => {}
            }
        }
        if let (Some(t), Some(ms)) = (stop_at, downtime_ms) {
            s.downtime = Some((t, ms as f64 / 1000.0));
        }
        // The curves end at the first sample after the last one of a running
        // migration: what follows (memory checks, the destination running
        // on) is flat and would squeeze the migration into the plot's left.
        if let Some(end) = migration_end(records) {
            s.remaining.retain(|p| p.0 <= end);
            s.throughput.retain(|p| p.0 <= end);
        }
        s
    }

    /// Whether a migration moved anything (worth a plot).
    pub fn migrated(&self) -> bool {
        !self.remaining.is_empty()
    }

    fn t_max(&self) -> f64 {
        let pts = self.remaining.iter().chain(&self.throughput).map(|p| p.0);
        let marks = self
            .passes
            .iter()
            .map(|p| p.0)
            .chain(self.ops.iter().map(|o| o.0));
        pts.chain(marks).fold(0.0, f64::max)
    }
}

/// The time of the first sample after the last sample of a running
/// migration (a status other than none, completed, failed, cancelled).
fn migration_end(records: &[Record]) -> Option<f64> {
    let samples: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Sample(x) => Some(x),
            _ => None,
        })
        .collect();
    let last = samples.iter().rposition(|x| {
        x.status
            .as_deref()
            .is_some_and(|st| !matches!(st, "none" | "completed" | "failed" | "cancelled"))
    })?;
    samples.get(last + 1).or(samples.get(last)).map(|x| x.t)
}

const CURVES: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];

fn op_color(op: &str) -> RGBColor {
    match op {
        "hold-set" => RGBColor(255, 127, 14),
        "hold-cleared" => RGBColor(44, 160, 44),
        _ => RGBColor(148, 103, 189),
    }
}

/// The SVG of `series` (one or two runs), `width` x `height` pixels.
pub fn svg(title: &str, series: &[Series], width: u32, height: u32) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(title, ("sans-serif", 16))
            .map_err(|e| e.to_string())?;
        let (top, bottom) = root.split_vertically(height / 2 - 10);
        let t_max = series.iter().map(Series::t_max).fold(0.1, f64::max) * 1.02;
        let rem_max = series
            .iter()
            .flat_map(|s| s.remaining.iter().map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.05;
        let thr_max = series
            .iter()
            .flat_map(|s| s.throughput.iter().map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.05;
        panel(
            &top,
            series,
            t_max,
            rem_max,
            "remaining MiB",
            |s| &s.remaining,
            true,
        )?;
        panel(
            &bottom,
            series,
            t_max,
            thr_max,
            "throughput MB/s",
            |s| &s.throughput,
            false,
        )?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    series: &[Series],
    t_max: f64,
    y_max: f64,
    y_desc: &str,
    curve: impl Fn(&Series) -> &Vec<(f64, f64)>,
    marks_legend: bool,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time s")
        .y_desc(y_desc)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = CURVES[i % CURVES.len()];
        let dash = if i == 0 { 0 } else { 1 };
        // Downtime: a shaded band from the source's STOP.
        if let Some((t, d)) = s.downtime {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(t, 0.0), ((t + d).max(t + t_max / 400.0), y_max)],
                    color.mix(0.25).filled(),
                )))
                .map_err(err)?;
        }
        for (t, _) in &s.passes {
            chart
                .draw_series(LineSeries::new(
                    [(*t, 0.0), (*t, y_max * 0.06)],
                    color.mix(0.6).stroke_width(1),
                ))
                .map_err(err)?;
        }
        for (t, op) in &s.ops {
            let c = op_color(op);
            let line = chart
                .draw_series(LineSeries::new([(*t, 0.0), (*t, y_max)], c.stroke_width(2)))
                .map_err(err)?;
            if marks_legend && i == 0 {
                line.label(op.clone()).legend(move |(x, y)| {
                    PathElement::new([(x, y - 6), (x, y + 6)], c.stroke_width(2))
                });
            }
        }
        let pts = curve(s).clone();
        let style = color.stroke_width(2);
        let drawn = if dash == 0 {
            chart
                .draw_series(LineSeries::new(pts, style))
                .map_err(err)?
        } else {
            chart
                .draw_series(DashedLineSeries::new(pts, 6, 4, style))
                .map_err(err)?
        };
        drawn
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    Ok(())
}
