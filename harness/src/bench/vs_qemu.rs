//! `migtest bench vs-qemu`: migtest-vmm and QEMU migrating the same guests
//! back to back in one run, beside the unix-socket ceiling measured in the
//! same run, plus release-to-`completed` against a cold migration. With
//! `MIGTEST_BENCH_BASELINE_VMM=PATH` another `migtest-vmm` build (e.g. the
//! one before a change) runs in the same rotation as row `baseline`;
//! `MIGTEST_BENCH_NO_QEMU=1` leaves QEMU out.

use crate::backend::Backend;
use crate::pair::{Pair, PairLaunch, STATUS_TIMEOUT};
use crate::size::Size;
use anyhow::{Context, Result};
use migtest_qmp::schema::{MigrationInfo, MigrationStatus};
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `downtime-limit` of every run (as in issue 10's comparison).
const DOWNTIME_LIMIT_MS: u64 = 300;
/// Bytes pushed through the socket per ceiling measurement.
const CEILING_BYTES: usize = 1 << 30;
/// Write size of the ceiling measurement (the data path's batch size).
const CEILING_WRITE: usize = 1 << 20;

/// What the guest's RAM holds while it migrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guest {
    /// QEMU's A-B guest (builtin `sweep`): [1M, 100M) rewritten continuously, rest zero.
    Ab,
    /// Every page non-zero, guest stopped before `migrate`: RAM is a
    /// private mapping of a file of data ([`FillFile`]) under the A-B guest,
    /// for QEMU and migtest-vmm alike (a baseline build must know
    /// `-object memory-backend-file`).
    Filled,
}

impl Guest {
    fn name(self) -> &'static str {
        match self {
            Guest::Ab => "A-B sweep",
            Guest::Filled => "filled",
        }
    }
}

/// Medians of one VMM's runs of one case.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Row {
    pub(super) total_ms: f64,
    pub(super) downtime_ms: f64,
    pub(super) transferred: f64,
    pub(super) gbs: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One stream through a unix socket pair, large writes, a reader thread:
/// the best a single channel can do on this machine now (GB/s). With
/// `fresh`, the reader receives into freshly mapped memory (as a destination
/// VM's RAM is), so the page faults of a first touch are part of it;
/// otherwise it reuses one buffer.
fn socket_ceiling(fresh: bool) -> Result<f64> {
    let (mut a, mut b) = UnixStream::pair()?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut buf = vec![0u8; if fresh { CEILING_BYTES } else { CEILING_WRITE }];
        let mut got = 0;
        loop {
            let at = if fresh { got } else { 0 };
            let end = (at + CEILING_WRITE).min(buf.len());
            match b.read(&mut buf[at..end])? {
                0 => return Ok(got),
                n => got += n,
            }
        }
    });
    let buf = vec![0x5au8; CEILING_WRITE];
    let t = Instant::now();
    for _ in 0..CEILING_BYTES / CEILING_WRITE {
        a.write_all(&buf)?;
    }
    a.shutdown(std::net::Shutdown::Write)?;
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("ceiling reader panicked"))??;
    let secs = t.elapsed().as_secs_f64();
    Ok(got as f64 / 1e9 / secs)
}

/// A file of non-zero bytes for the filled guest's `memory-backend-file`.
/// Written once per size, so its pages are in the page cache, and a source's
/// RAM costs no fresh memory (the destination's first touch is the same for
/// both VMMs).
struct FillFile(PathBuf);

impl FillFile {
    fn create(size: u64) -> Result<FillFile> {
        let path = std::env::temp_dir().join(format!(
            "migtest-bench-fill-{}-{}",
            std::process::id(),
            size >> 20
        ));
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let chunk: Vec<u8> = (0..CEILING_WRITE).map(|i| (i % 251 + 1) as u8).collect();
        for _ in 0..size / CEILING_WRITE as u64 {
            f.write_all(&chunk)?;
        }
        Ok(FillFile(path))
    }
}

impl Drop for FillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What one migration of the comparison is: guest size and contents, the
/// `fill` file of the filled guest (both VMMs), and the multifd channels (`None`:
/// multifd off, one channel).
#[derive(Clone, Copy)]
struct Case<'a> {
    memory: u64,
    guest: Guest,
    fill: Option<&'a Path>,
    multifd: Option<u8>,
    /// Both VMs started with `-mem-prealloc` (all guest RAM faulted in at
    /// start-up; QEMU 7.2: `prealloc=on` on every memory backend).
    prealloc: bool,
}

/// The pair of `case` for `backend`.
fn spec(backend: &Backend, case: &Case) -> PairLaunch {
    let Case {
        memory,
        guest,
        fill,
        multifd,
        prealloc,
    } = *case;
    let mut s = PairLaunch::new(backend.clone());
    s.pair.memory = Size(memory);
    s.multifd = multifd;
    // Both guests run the A-B sweep, as QEMU's boot sector; the filled
    // one's RAM starts as the fill file.
    s.pair.image = "sweep".into();
    if let Some(file) = fill.filter(|_| guest == Guest::Filled) {
        let size = memory >> 20;
        s.src_extra = vec![
            "-object".into(),
            format!(
                "memory-backend-file,id=ram0,size={size}M,mem-path={},share=off",
                file.display()
            ),
            "-machine".into(),
            "memory-backend=ram0".into(),
        ];
        s.dst_extra = vec![
            "-object".into(),
            format!("memory-backend-ram,id=ram0,size={size}M"),
            "-machine".into(),
            "memory-backend=ram0".into(),
        ];
    }
    if prealloc {
        s.src_extra.push("-mem-prealloc".into());
        s.dst_extra.push("-mem-prealloc".into());
    }
    s
}

/// One migration: launch, prepare the guest, migrate, the final figures.
fn one_run(contender: &Contender, case: &Case) -> Result<MigrationInfo> {
    let (memory, guest) = (case.memory, case.guest);
    let mut pair = contender.launch(spec(&contender.backend, case))?;
    let fill_wait = Duration::from_secs(60 + (memory >> 30) * 30);
    pair.src.wait_serial(b'B', fill_wait)?;
    if guest == Guest::Filled {
        pair.src.stop()?;
    }
    pair.src
        .set_parameters(json!({ "downtime-limit": DOWNTIME_LIMIT_MS }))?;
    pair.migrate()?;
    let timeout = STATUS_TIMEOUT + Duration::from_secs((memory >> 30) * 30);
    let mut info = pair.wait_src_status(MigrationStatus::Completed, timeout)?;
    // QEMU 7.2 sets `completed` a moment before it stores total-time and
    // downtime (migration_calculate_complete runs after the state change).
    let deadline = Instant::now() + Duration::from_secs(5);
    while info.total_time.unwrap_or(0) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        info = pair.src.query_migrate()?;
    }
    Ok(info)
}

/// Per-run figures of one VMM on one case.
#[derive(Default)]
struct Samples {
    total: Vec<f64>,
    down: Vec<f64>,
    bytes: Vec<f64>,
    gbs: Vec<f64>,
}

impl Samples {
    fn push(&mut self, info: &MigrationInfo) -> (f64, f64, f64) {
        let t = info.total_time.unwrap_or(0) as f64;
        let d = info.downtime.unwrap_or(0) as f64;
        let x = info.ram.clone().unwrap_or_default().transferred as f64;
        self.total.push(t);
        self.down.push(d);
        self.bytes.push(x);
        self.gbs.push(if t > 0.0 { x / 1e6 / t } else { 0.0 });
        (t, d, x)
    }

    fn row(self) -> Row {
        Row {
            total_ms: median(self.total),
            downtime_ms: median(self.down),
            transferred: median(self.bytes),
            gbs: median(self.gbs),
        }
    }
}

/// One column of the comparison: a backend, for the builtin one possibly a
/// different `migtest-vmm` binary (the baseline build).
struct Contender {
    label: String,
    backend: Backend,
    vmm: Option<PathBuf>,
}

impl Contender {
    /// A pair of this contender; a baseline binary is put in `MIGTEST_VMM`
    /// only while the pair's processes are spawned (the bench is one thread).
    fn launch(&self, spec: PairLaunch) -> Result<Pair> {
        let Some(vmm) = &self.vmm else {
            return Pair::launch(spec);
        };
        let before = std::env::var_os("MIGTEST_VMM");
        std::env::set_var("MIGTEST_VMM", vmm);
        let pair = Pair::launch(spec);
        match before {
            Some(v) => std::env::set_var("MIGTEST_VMM", v),
            None => std::env::remove_var("MIGTEST_VMM"),
        }
        pair
    }
}

/// `runs` migrations of each contender, alternating (QEMU, then migtest-vmm)
/// so that the machine's drift hits all alike; and the median of the
/// unix-socket ceiling measured once per round, before its migrations, so
/// that a moment of noise on the host does not decide the share column.
fn measure(contenders: &[&Contender], case: &Case, runs: usize) -> Result<(Vec<Row>, f64)> {
    let mut samples: Vec<Samples> = contenders.iter().map(|_| Samples::default()).collect();
    let mut ceilings = Vec::with_capacity(runs);
    for k in 1..=runs {
        ceilings.push(socket_ceiling(false)?);
        for (c, s) in contenders.iter().zip(samples.iter_mut()) {
            let channels = match case.multifd {
                Some(n) => format!(" multifd x{n}"),
                None => String::new(),
            };
            let prealloc = if case.prealloc { " -mem-prealloc" } else { "" };
            let what = format!(
                "{} {} MiB {}{channels}{prealloc} run {k}/{runs}",
                c.label,
                case.memory >> 20,
                case.guest.name()
            );
            let info = one_run(c, case).with_context(|| what.clone())?;
            let (t, d, x) = s.push(&info);
            eprintln!(
                "  {what}: total {t} ms, downtime {d} ms, {:.0} MiB",
                x / (1u64 << 20) as f64
            );
        }
    }
    let rows = samples.into_iter().map(Samples::row).collect();
    Ok((rows, median(ceilings)))
}

fn print_row(guest: Guest, memory: u64, vmm: &str, r: &Row, qemu: Option<&Row>, ceiling: f64) {
    let ratio = qemu
        .filter(|q| q.total_ms > 0.0)
        .map(|q| format!("{:.2}x", r.total_ms / q.total_ms))
        .unwrap_or_else(|| "-".into());
    println!(
        "| {:<9} | {:>5} MiB | {:<21} | {:>8.0} | {:>8.0} | {:>9.0} | {:>6.2} | {:>8} | {:>5.0}% | {:>7.2} |",
        guest.name(),
        memory >> 20,
        vmm,
        r.total_ms,
        r.downtime_ms,
        r.transferred / (1u64 << 20) as f64,
        r.gbs,
        ratio,
        r.gbs / ceiling * 100.0,
        ceiling
    );
}

/// Release-to-`completed` after held passes, against a cold migration, on a
/// 1 GiB guest dirtying 10k pages/s (builtin only: QEMU 7.2 has no hold).
fn release_vs_cold(runs: usize) -> Result<()> {
    let memory = Size::mib(1024);
    let (mut rel, mut cold) = (vec![], vec![]);
    for k in 1..=runs {
        let (r, c) = super::release_and_cold(memory, "rate-10k")?;
        rel.push(r.as_secs_f64() * 1000.0);
        cold.push(c.as_secs_f64() * 1000.0);
        eprintln!(
            "  release run {k}/{runs}: release {:.1} ms, cold {:.1} ms",
            rel[k - 1],
            cold[k - 1]
        );
    }
    println!(
        "1024 MiB guest dirtying 10k pages/s, median of {runs}: release-to-completed {:.1} ms, cold migration {:.1} ms",
        median(rel),
        median(cold)
    );
    Ok(())
}

/// The guest sizes of `migtest bench vs-qemu`: the one-channel
/// table's, and the multifd section's (filled guests, each channel count).
#[derive(Debug, Clone)]
pub struct VsQemuSizes {
    /// One channel, A-B and filled guests.
    pub sizes: Vec<Size>,
    /// Channel counts of the multifd section (empty: no multifd section).
    pub multifd_channels: Vec<u8>,
    /// Filled-guest sizes of the multifd section.
    pub multifd_sizes: Vec<Size>,
}

/// Runs the comparison for `sizes`, `runs` migrations per case.
pub fn run(sizes: &VsQemuSizes, runs: usize) -> Result<()> {
    let qemu = if std::env::var_os("MIGTEST_BENCH_NO_QEMU").is_some() {
        None
    } else {
        match Backend::qemu_pair(&Default::default()) {
            Ok((src, _)) => Some(src),
            Err(e) => {
                println!("QEMU not usable ({e:#}): migtest-vmm figures only");
                None
            }
        }
    };
    let mut contenders: Vec<Contender> = qemu
        .iter()
        .map(|q| Contender {
            label: "QEMU 7.2".into(),
            backend: q.clone(),
            vmm: None,
        })
        .collect();
    if let Some(base) = std::env::var_os("MIGTEST_BENCH_BASELINE_VMM") {
        contenders.push(Contender {
            label: "baseline".into(),
            backend: Backend::Builtin,
            vmm: Some(PathBuf::from(base)),
        });
    }
    contenders.push(Contender {
        label: "migtest-vmm".into(),
        backend: Backend::Builtin,
        vmm: None,
    });
    let ceilings: Vec<f64> = (0..3)
        .map(|_| socket_ceiling(false))
        .collect::<Result<_>>()?;
    let ceiling = median(ceilings);
    let fresh: Vec<f64> = (0..3)
        .map(|_| socket_ceiling(true))
        .collect::<Result<_>>()?;
    let fresh = median(fresh);
    println!(
        "unix-socket ceiling (one stream, {} KiB writes, median of 3): {ceiling:.2} GB/s; \
         received into fresh memory (first-touch page faults included): {fresh:.2} GB/s",
        CEILING_WRITE >> 10
    );
    println!(
        "downtime-limit {DOWNTIME_LIMIT_MS} ms, unlimited bandwidth, unix socket, medians of {runs} runs; \
         GB/s = transferred / total-time; ratio = total-time / QEMU's; share = of the socket ceiling \
         measured once per round between the case's runs (median: column `ceiling`, GB/s)"
    );
    println!(
        "rows `+prealloc`: source and destination started with -mem-prealloc (guest RAM faulted in \
         at start-up, before `migrate`; QEMU 7.2: prealloc=on on every memory backend), compared \
         with QEMU's +prealloc row; the rows without it are the default comparison"
    );
    println!(
        "guests: A-B = the sweep of [1M, 100M) (QEMU's A-B boot sector); filled = the same guest \
         on RAM that starts as a file of non-zero bytes (memory-backend-file, share=off, its \
         pages in the page cache), stopped before `migrate`; destination RAM memory-backend-ram"
    );
    println!("| guest     | size      | VMM                   | total ms | down ms  | sent MiB  | GB/s   | vs QEMU  | share  | ceiling |");
    println!("|-----------|-----------|-----------------------|----------|----------|-----------|--------|----------|--------|---------|");
    let all: Vec<&Contender> = contenders.iter().collect();
    for memory in sizes.sizes.iter().map(|s| s.bytes()) {
        for guest in [Guest::Ab, Guest::Filled] {
            let fill = match guest {
                Guest::Filled => Some(FillFile::create(memory)?),
                Guest::Ab => None,
            };
            for prealloc in [false, true] {
                let case = Case {
                    memory,
                    guest,
                    fill: fill.as_ref().map(|f| f.0.as_path()),
                    multifd: None,
                    prealloc,
                };
                let (rows, ceiling) = measure(&all, &case, runs)?;
                let qemu_row = qemu.as_ref().map(|_| rows[0]);
                for (c, r) in contenders.iter().zip(&rows) {
                    let versus = qemu_row.as_ref().filter(|_| !c.backend.is_qemu());
                    let label = match prealloc {
                        true => format!("{} +prealloc", c.label),
                        false => c.label.clone(),
                    };
                    print_row(guest, memory, &label, r, versus, ceiling);
                }
            }
        }
    }
    // The baseline build is left out of the multifd section (time).
    let multifd: Vec<&Contender> = contenders.iter().filter(|c| c.vmm.is_none()).collect();
    if !sizes.multifd_channels.is_empty() {
        super::vs_qemu_multifd::print_head(runs);
    }
    for memory in sizes
        .multifd_channels
        .first()
        .map_or(&[][..], |_| &sizes.multifd_sizes)
        .iter()
        .map(|s| s.bytes())
    {
        let fill = Some(FillFile::create(memory)?);
        let mut by_channels = vec![];
        let mut ceilings = vec![];
        for &channels in &sizes.multifd_channels {
            let case = Case {
                memory,
                guest: Guest::Filled,
                fill: fill.as_ref().map(|f| f.0.as_path()),
                multifd: Some(channels),
                prealloc: false,
            };
            let (rows, ceiling) = measure(&multifd, &case, runs)?;
            ceilings.push(ceiling);
            let labelled = multifd.iter().map(|c| c.label.clone()).zip(rows);
            by_channels.push((channels, labelled.collect()));
        }
        super::vs_qemu_multifd::print_size(memory, &by_channels, median(ceilings));
    }
    release_vs_cold(runs)
}
