//! The multifd section of `migtest bench vs-qemu`: filled guests migrated
//! with the `multifd` capability and `multifd-channels` N on both sides,
//! for each N, by QEMU and migtest-vmm, and what N channels buy over one on
//! this machine (printed either way, with the cores and load that bound it).

use super::vs_qemu::Row;

/// The section's heading and table head.
pub(super) fn print_head(runs: usize) {
    println!(
        "multifd: filled guests, `multifd` on and `multifd-channels` N on both sides, unix socket, \
         medians of {runs} runs; vs QEMU = total-time / QEMU's with the same N; \
         vs 1 ch = total-time / the same VMM's with 1 channel"
    );
    println!("| size      | VMM         | channels | total ms | down ms  | sent MiB  | GB/s   | vs QEMU  | vs 1 ch  | share  |");
    println!("|-----------|-------------|----------|----------|----------|-----------|--------|----------|----------|--------|");
}

fn ratio(r: &Row, to: Option<&Row>) -> String {
    to.filter(|t| t.total_ms > 0.0)
        .map(|t| format!("{:.2}x", r.total_ms / t.total_ms))
        .unwrap_or_else(|| "-".into())
}

/// The rows of one guest size: `by_channels` holds, per channel count, each
/// contender's label and medians (QEMU first when it ran).
pub(super) fn print_size(memory: u64, by_channels: &[(u8, Vec<(String, Row)>)], ceiling: f64) {
    let row_of = |label: &str, channels: u8| -> Option<Row> {
        let (_, rows) = by_channels.iter().find(|(n, _)| *n == channels)?;
        rows.iter().find(|(l, _)| l == label).map(|(_, r)| *r)
    };
    let qemu_label = by_channels
        .first()
        .and_then(|(_, rows)| rows.iter().map(|(l, _)| l).find(|l| l.starts_with("QEMU")))
        .cloned();
    for (channels, rows) in by_channels {
        for (label, r) in rows {
            let qemu = qemu_label
                .as_deref()
                .filter(|q| q != label)
                .and_then(|q| row_of(q, *channels));
            let one = row_of(label, 1).filter(|_| *channels != 1);
            println!(
                "| {:>5} MiB | {:<11} | {:>8} | {:>8.0} | {:>8.0} | {:>9.0} | {:>6.2} | {:>8} | {:>8} | {:>5.0}% |",
                memory >> 20,
                label,
                channels,
                r.total_ms,
                r.downtime_ms,
                r.transferred / (1u64 << 20) as f64,
                r.gbs,
                ratio(r, qemu.as_ref()),
                ratio(r, one.as_ref()),
                r.gbs / ceiling * 100.0
            );
        }
    }
    explain(memory, by_channels, row_of);
}

/// One line per VMM: whether 2 channels beat 1, and why the answer is what
/// it is on this machine (its cores and load when the section ran).
fn explain(
    memory: u64,
    by_channels: &[(u8, Vec<(String, Row)>)],
    row_of: impl Fn(&str, u8) -> Option<Row>,
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let labels: Vec<&String> = by_channels
        .first()
        .map(|(_, rows)| rows.iter().map(|(l, _)| l).collect())
        .unwrap_or_default();
    for label in labels {
        let (Some(one), Some(two)) = (row_of(label, 1), row_of(label, 2)) else {
            continue;
        };
        let verdict = if two.total_ms < one.total_ms {
            "2 channels beat 1"
        } else {
            "2 channels do NOT beat 1"
        };
        println!(
            "{} MiB filled, {label}: {verdict} ({:.0} ms vs {:.0} ms, {:.2}x)",
            memory >> 20,
            two.total_ms,
            one.total_ms,
            two.total_ms / one.total_ms.max(1.0)
        );
    }
    println!(
        "why: {cores} cores, load average {load} at the end of the section; one channel already keeps a \
         sender (source) and a loader (destination) busy, so a second channel only wins where one \
         channel's threads wait (page faults of the destination's fresh RAM, socket wake-ups) and a \
         free core can fill that time"
    );
}
