//! The HTML of a [`Report`]: escaped text, inline CSS, inline SVG.

use std::fmt::Write as _;

use super::plot::{self, Series};
use super::{slug, Entry, Report, Verdict};

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}\
td:first-child,th:first-child{text-align:left}.pass{color:#2a7d2a}.fail{color:#c00;font-weight:bold}\
.skip{color:#888}figure{margin:1em 0}figcaption{font-weight:bold}pre{background:#f6f6f6;padding:6px;\
overflow-x:auto;font-size:12px}";

/// The series of an entry, if any run migrated.
pub(super) fn series(e: &Entry) -> Option<Vec<Series>> {
    let s: Vec<Series> = e
        .runs
        .iter()
        .map(|(label, r)| Series::from_records(label, r))
        .collect();
    s.iter().any(Series::migrated).then_some(s)
}

pub(super) fn page(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n<p>{}</p>\n",
        esc(&r.title),
        esc(&r.title),
        esc(&r.subtitle)
    );
    h.push_str("<table id=\"results\"><tr><th>scenario</th><th>result</th>");
    for c in &r.columns {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>\n");
    for e in &r.entries {
        let (class, word) = match e.verdict {
            Verdict::Pass => ("pass", "ok"),
            Verdict::Fail => ("fail", "FAIL"),
            Verdict::Skip => ("skip", "skip"),
        };
        let _ = write!(
            h,
            "<tr><td><a href=\"#{}\">{}</a></td><td class=\"{class}\">{word}</td>",
            slug(&e.name),
            esc(&e.name)
        );
        for c in &e.cells {
            let _ = write!(h, "<td>{}</td>", esc(c));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    for e in &r.entries {
        section(&mut h, e);
    }
    h.push_str("</body></html>\n");
    h
}

fn section(h: &mut String, e: &Entry) {
    let s = slug(&e.name);
    let _ = writeln!(h, "<section id=\"{s}\"><h2>{}</h2>", esc(&e.name));
    if e.verdict == Verdict::Fail {
        let _ = write!(
            h,
            "<p class=\"fail\">failed: <a href=\"failures/{s}.txt\">one-screen report</a>"
        );
        if e.transcript.is_some() {
            let _ = write!(h, " · <a href=\"failures/{s}-qmp.txt\">QMP transcript</a>");
        }
        h.push_str("</p>\n");
    }
    if let Some(t) = &e.text {
        let _ = writeln!(h, "<pre>{}</pre>", esc(t));
    }
    if let Some(series) = series(e) {
        let mut caption = String::new();
        for x in &series {
            if let Some((_, d)) = x.downtime {
                let _ = write!(caption, " · {} downtime {:.0} ms", x.label, d * 1000.0);
            }
            if let Some((_, n)) = x.passes.last() {
                let _ = write!(caption, " · {} {} passes", x.label, n);
            }
        }
        match plot::svg(&e.name, &series, 900, 480) {
            Ok(svg) => {
                let _ = writeln!(
                    h,
                    "<figure class=\"plot\" data-scenario=\"{}\">{svg}<figcaption>remaining bytes and \
                     throughput; ticks: passes; orange: hold set; green: hold cleared; purple: \
                     cancel/kill; band: downtime{}</figcaption></figure>",
                    esc(&e.name),
                    esc(&caption)
                );
            }
            Err(err) => {
                let _ = writeln!(h, "<p>plot failed: {}</p>", esc(&err));
            }
        }
    }
    let files: Vec<String> = e
        .runs
        .iter()
        .map(|(label, _)| {
            if e.runs.len() > 1 {
                format!("telemetry/{s}.{}.jsonl", slug(label))
            } else {
                format!("telemetry/{s}.jsonl")
            }
        })
        .collect();
    if !files.is_empty() {
        h.push_str("<p>telemetry:");
        for f in files {
            let _ = write!(h, " <a href=\"{f}\">{f}</a>");
        }
        h.push_str("</p>\n");
    }
    h.push_str("</section>\n");
}
