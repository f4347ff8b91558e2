//! `migtest bench`: figures, not pass/fail. Start-up to QMP-ready, time to
//! N held passes with `switchover-hold` versus QEMU's legacy throttle, time
//! from release to `completed` versus a cold migration, unix-socket
//! throughput for a 1 GiB guest, bandwidth-cap accuracy and downtime
//! against `downtime-limit`.

use crate::backend::{builtin, Backend};
use crate::pair::{Pair, PairLaunch, STATUS_TIMEOUT};
use crate::size::Size;
use anyhow::{bail, Context, Result};
use migtest_qmp::schema::MigrationStatus;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Which figures to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bench {
    /// Start-up to QMP-ready, migtest-vmm and qemu-system-x86_64.
    Startup,
    /// Time to 3 passes: switchover-hold vs the legacy 3 MB/s + 1 ms trick.
    Hold,
    /// Release-to-completed vs a cold migration of the same guest.
    Release,
    /// Unix-socket throughput migrating a 1 GiB guest.
    Throughput,
    /// max-bandwidth accuracy and downtime against downtime-limit.
    Limits,
    /// Everything above.
    All,
    /// migtest-vmm beside QEMU: 128 MiB / 1 GiB / 4 GiB, A-B and filled
    /// guests, each with and without -mem-prealloc, the unix-socket ceiling,
    /// release vs cold (not part of `all`).
    VsQemu,
    /// The builtin catalog with telemetry sampling on and off: wall times and
    /// the overhead (not part of `all`).
    Telemetry,
    /// Time to converge with and without auto-converge, migtest-vmm beside
    /// QEMU (not part of `all`).
    AutoConverge,
    /// Bytes on the wire with and without `xbzrle`, beside QEMU (not part of `all`).
    Xbzrle,
}

mod auto_converge;
pub mod telemetry;
mod vs_qemu;
mod vs_qemu_multifd;

mod xbzrle;

pub use vs_qemu::VsQemuSizes;

/// Spawns `program args` and measures the time until `qmp_capabilities`
/// is answered on `socket`; the process is killed afterwards.
fn time_to_qmp_ready(program: &Path, args: &[String], socket: &Path) -> Result<Duration> {
    let _ = std::fs::remove_file(socket);
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {}", program.display()))?;
    let result = (|| -> Result<Duration> {
        let deadline = start + Duration::from_secs(20);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(socket) {
                break s;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not open its QMP socket within 20 s",
                    program.display()
                );
            }
            if let Some(st) = child.try_wait()? {
                bail!("{} exited early: {st}", program.display());
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        (&stream).write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        if !line.contains("\"return\"") {
            bail!("unexpected reply to qmp_capabilities: {line}");
        }
        Ok(start.elapsed())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn startup(runs: usize) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("migtest-bench-")
        .tempdir_in("/tmp")?;
    let sock = dir.path().join("q.sock");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let vmm = builtin::vmm_command()?;
    let mut vmm_args = vmm.prefix.clone();
    vmm_args.extend(
        [
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "128M",
            "-qmp",
            &qmp,
        ]
        .map(String::from),
    );
    let mut ours = Vec::new();
    for _ in 0..runs {
        ours.push(time_to_qmp_ready(&vmm.program, &vmm_args, &sock)?);
    }
    println!(
        "startup to QMP-ready, median of {runs}: migtest-vmm {}",
        ms(median(ours))
    );
    let qemu = std::env::var_os("MIGTEST_QEMU")
        .or_else(|| std::env::var_os("QTEST_QEMU_BINARY"))
        .map(PathBuf::from)
        .or_else(|| {
            crate::backend::qemu::find_in_path(
                "qemu-system-x86_64",
                std::env::var_os("PATH").as_deref(),
            )
        });
    match qemu {
        Some(q) => {
            let args: Vec<String> = ["-nodefaults", "-display", "none", "-qmp", &qmp]
                .map(String::from)
                .to_vec();
            let mut theirs = Vec::new();
            for _ in 0..runs {
                theirs.push(time_to_qmp_ready(&q, &args, &sock)?);
            }
            println!(
                "startup to QMP-ready, median of {runs}: {} -nodefaults -display none {}",
                q.display(),
                ms(median(theirs))
            );
        }
        None => println!("startup: qemu-system-x86_64 not found; no QEMU figure"),
    }
    Ok(())
}

fn spec(memory: Size, image: &str) -> PairLaunch {
    let mut s = PairLaunch::new(Backend::Builtin);
    s.pair.memory = memory;
    s.pair.image = image.into();
    s
}

fn time_to_passes(pair: &mut Pair, n: u64) -> Result<Duration> {
    let start = Instant::now();
    pair.migrate()?;
    pair.wait_for_passes(n, Duration::from_secs(600))?;
    Ok(start.elapsed())
}

fn hold(memory: Size) -> Result<()> {
    let mut pair = Pair::launch(spec(memory, "sweep"))?;
    pair.src.wait_serial(b'B', Duration::from_secs(30))?;
    pair.src.set_parameters(json!({"switchover-hold": true}))?;
    let held = time_to_passes(&mut pair, 3)?;
    pair.cancel()?;
    drop(pair);
    let mut pair = Pair::launch(spec(memory, "sweep"))?;
    pair.src.wait_serial(b'B', Duration::from_secs(30))?;
    pair.src
        .set_parameters(json!({"max-bandwidth": 3_000_000u64, "downtime-limit": 1}))?;
    let legacy = time_to_passes(&mut pair, 3)?;
    pair.cancel()?;
    println!(
        "time to 3 passes, {} MiB sweep guest: switchover-hold {}, legacy 3 MB/s + 1 ms {} ({:.0}x)",
        memory.bytes() >> 20,
        ms(held),
        ms(legacy),
        legacy.as_secs_f64() / held.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Release-to-`completed` after 3 held passes, then a cold migration of a
/// fresh pair of the same guest (`image`, `memory`).
fn release_and_cold(memory: Size, image: &str) -> Result<(Duration, Duration)> {
    let mut pair = Pair::launch(spec(memory, image))?;
    pair.src.wait_serial(b'B', Duration::from_secs(30))?;
    pair.src.set_parameters(json!({"switchover-hold": true}))?;
    pair.migrate()?;
    pair.wait_for_passes(3, Duration::from_secs(60))?;
    let t = Instant::now();
    pair.src.set_parameters(json!({"switchover-hold": false}))?;
    pair.wait_src_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
    let released = t.elapsed();
    drop(pair);
    let mut pair = Pair::launch(spec(memory, image))?;
    pair.src.wait_serial(b'B', Duration::from_secs(30))?;
    let t = Instant::now();
    pair.migrate()?;
    pair.wait_src_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
    Ok((released, t.elapsed()))
}

fn release(memory: Size) -> Result<()> {
    let (released, cold) = release_and_cold(memory, "sweep")?;
    println!(
        "{} MiB sweep guest: release-to-completed after pre-heat {}, cold migration {}",
        memory.bytes() >> 20,
        ms(released),
        ms(cold)
    );
    Ok(())
}

fn throughput() -> Result<()> {
    let mut pair = Pair::launch(spec(Size::mib(1024), "bench-fill"))?;
    // One full pass makes every page non-zero, so each is sent as a 4 KiB page.
    pair.src.wait_serial(b'B', Duration::from_secs(120))?;
    pair.src.stop()?;
    let t = Instant::now();
    pair.migrate()?;
    let info = pair.wait_src_status(MigrationStatus::Completed, Duration::from_secs(300))?;
    let secs = t.elapsed().as_secs_f64();
    let ram = info.ram.unwrap_or_default();
    println!(
        "1 GiB guest over a unix socket: {:.2} GB/s ({} MiB of normal pages, {} zero pages, {:.2} s)",
        ram.transferred as f64 / 1e9 / secs,
        ram.normal_bytes >> 20,
        ram.duplicate,
        secs
    );
    Ok(())
}

/// The stated margin on `downtime-limit`: the estimate covers RAM only; the
/// device state, end marker and final flush come on top.
pub const DOWNTIME_MARGIN_MS: u64 = 50;

fn limits(memory: Size) -> Result<()> {
    for limit in [16u64 << 20, 64 << 20] {
        let mut pair = Pair::launch(spec(memory, "sweep"))?;
        pair.src
            .set_parameters(json!({"max-bandwidth": limit, "switchover-hold": true}))?;
        pair.migrate()?;
        pair.wait_src_status(MigrationStatus::Active, STATUS_TIMEOUT)?;
        std::thread::sleep(Duration::from_millis(300));
        let rate = pair.measure_throughput(Duration::from_millis(2000))?;
        println!(
            "max-bandwidth {} MiB/s: measured {:.1} MiB/s over 2 s ({:+.1}%)",
            limit >> 20,
            rate / (1 << 20) as f64,
            (rate / limit as f64 - 1.0) * 100.0
        );
        pair.cancel()?;
    }
    // The rate guest dirties 16384 pages/s: it converges under both limits
    // (the sweep guest rewrites its whole range every millisecond and cannot
    // converge under a 50 ms limit, in QEMU as here).
    for limit_ms in [50u64, 300] {
        let mut pair = Pair::launch(spec(memory, "rate"))?;
        pair.src.wait_serial(b'B', Duration::from_secs(30))?;
        pair.src
            .set_parameters(json!({"downtime-limit": limit_ms}))?;
        pair.migrate()?;
        let info = pair.wait_src_status(MigrationStatus::Completed, STATUS_TIMEOUT)?;
        let down = info.downtime.unwrap_or(0);
        let verdict = if down <= limit_ms + DOWNTIME_MARGIN_MS {
            "within"
        } else {
            "OVER"
        };
        println!(
            "downtime-limit {limit_ms} ms: downtime {down} ms, {verdict} limit + {DOWNTIME_MARGIN_MS} ms margin"
        );
    }
    Ok(())
}

/// Runs the chosen benchmarks, printing one line per figure. `runs` is per
/// start-up figure (default 10), per `vs-qemu` case (default 5) or per
/// `telemetry` catalog run (default 3); `sizes` are the `vs-qemu` guest
/// sizes (one channel, and the multifd section's); `filter` picks
/// `telemetry`'s scenarios.
pub fn run(
    which: Bench,
    memory: Size,
    runs: Option<usize>,
    sizes: &VsQemuSizes,
    filter: Option<&str>,
) -> Result<()> {
    if which == Bench::VsQemu {
        return vs_qemu::run(sizes, runs.unwrap_or(5));
    }
    if which == Bench::AutoConverge {
        return auto_converge::run(memory);
    }
    if which == Bench::Xbzrle {
        return xbzrle::run();
    }
    if which == Bench::Telemetry {
        return telemetry::run(memory, runs.unwrap_or(3).max(1), filter);
    }
    let runs = runs.unwrap_or(10);
    let all = which == Bench::All;
    if all || which == Bench::Startup {
        startup(runs)?;
    }
    if all || which == Bench::Hold {
        hold(memory)?;
    }
    if all || which == Bench::Release {
        release(memory)?;
    }
    if all || which == Bench::Throughput {
        throughput()?;
    }
    if all || which == Bench::Limits {
        limits(memory)?;
    }
    Ok(())
}
