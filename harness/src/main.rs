//! `migtest`: run the migration scenario catalog, replay or fuzz operation
//! sequences, compare backends, and benchmark, from a terminal.

use clap::{Args, Parser, Subcommand, ValueEnum};
use migtest::backend::qemu::QemuBinaryArgs;
use migtest::backend::Backend;
use migtest::catalog::CatalogConfig;
use migtest::size::Size;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "migtest",
    version,
    about = "qtest-style live-migration test harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum VmmKind {
    /// The builtin migtest-vmm.
    Builtin,
    /// Real qemu-system-x86_64.
    Qemu,
}

/// Backend selection shared by the subcommands.
#[derive(Args, Debug, Clone)]
struct BackendArgs {
    /// Which VMM to drive.
    #[arg(long, value_enum, default_value = "builtin")]
    vmm: VmmKind,
    #[command(flatten)]
    qemu: QemuBinaryArgs,
    /// Keep every VMM's log directory (also MIGTEST_KEEP_LOGS=1).
    #[arg(long)]
    keep_logs: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the scenario catalog.
    Run {
        #[command(flatten)]
        backend: BackendArgs,
        /// Only scenarios whose name contains PATTERN.
        #[arg(long, value_name = "PATTERN")]
        filter: Option<String>,
        /// Passes to wait for while switchover is held.
        #[arg(long, default_value_t = 3)]
        passes: u64,
        /// Guest RAM (e.g. 128M, 1G).
        #[arg(long, default_value = "128M", value_parser = parse_size)]
        memory: Size,
        /// Switch on a planted bug in the source migtest-vmm (test builds only).
        #[arg(long = "x-fault", value_name = "NAME", hide = true)]
        faults: Vec<String>,
        /// Write DIR/index.html: results and telemetry plots (self-contained).
        #[arg(long, value_name = "DIR")]
        report: Option<std::path::PathBuf>,
    },
    /// List the catalog's scenarios.
    List,
    /// Run one scenario on the builtin VMM and on QEMU and print them side
    /// by side (events, passes, times, QMP reply shapes).
    Compare {
        /// Catalog scenario name (see `migtest list`).
        scenario: String,
        #[command(flatten)]
        qemu: QemuBinaryArgs,
        /// Passes to wait for while switchover is held.
        #[arg(long, default_value_t = 3)]
        passes: u64,
        /// Guest RAM for both runs (QEMU's legacy hold moves 3 MB/s, so
        /// the default is small).
        #[arg(long, default_value = "32M", value_parser = parse_size)]
        memory: Size,
        /// Write DIR/index.html with both runs' curves on one plot.
        #[arg(long, value_name = "DIR")]
        report: Option<std::path::PathBuf>,
    },
    /// Run one scenario file, judged by the reference model. Exit 0 pass, 1 fail,
    /// 125 cannot test (for `git bisect run`).
    Replay {
        /// The scenario file (TOML; JSON when it ends in .json).
        file: std::path::PathBuf,
        #[command(flatten)]
        backend: BackendArgs,
        /// Switch on a planted bug in the source migtest-vmm (test builds only).
        #[arg(long = "x-fault", value_name = "NAME", hide = true)]
        faults: Vec<String>,
        /// Deadline of every wait op, in seconds.
        #[arg(long, default_value_t = 30)]
        wait_timeout: u64,
        /// Before each op, give a running migration up to this many milliseconds to make
        /// two more passes or end (the fuzzer's timing-perturbed rerun uses 2500).
        #[arg(long, default_value_t = 0)]
        settle_ms: u64,
        /// Write DIR/index.html: result table, telemetry plot, failure report (self-contained).
        #[arg(long, value_name = "DIR")]
        report: Option<std::path::PathBuf>,
    },
    /// Fuzz: generate op sequences from the reference model, run them against real VMMs,
    /// shrink and write out the first failure. Exit 0 pass, 1 fail, 125 cannot test.
    Fuzz {
        #[command(flatten)]
        backend: BackendArgs,
        /// Cases to generate (default: PROPTEST_CASES, else 256).
        #[arg(long)]
        cases: Option<u32>,
        /// RNG seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Upper bound on shrinking, in seconds.
        #[arg(long, default_value_t = 120)]
        max_shrink_secs: u64,
        /// Switch on a planted bug in the source migtest-vmm (test builds only).
        #[arg(long = "x-fault", value_name = "NAME", hide = true)]
        faults: Vec<String>,
        /// Deadline of every wait op, in seconds.
        #[arg(long, default_value_t = 20)]
        wait_timeout: u64,
        /// Steer generation towards one feature: all, postcopy, auto-converge or xbzrle.
        #[arg(long, default_value = "all", value_parser = parse_focus)]
        focus: migtest::fuzz::Focus,
        /// Write DIR/index.html: the failing (shrunk) case's result, telemetry plot,
        /// failure report and QMP transcript (self-contained).
        #[arg(long, value_name = "DIR")]
        report: Option<std::path::PathBuf>,
    },
    /// Print benchmark figures (builtin VMM; start-up also times QEMU).
    Bench {
        /// Which figures.
        #[arg(value_enum, default_value = "all")]
        which: migtest::bench::Bench,
        /// Guest RAM for the pass/release/limits figures.
        #[arg(long, default_value = "128M", value_parser = parse_size)]
        memory: Size,
        /// Runs per start-up figure (default 10), per vs-qemu case (default 5) or per
        /// telemetry catalog run (default 3); medians reported.
        #[arg(long)]
        runs: Option<usize>,
        /// Guest sizes for vs-qemu.
        #[arg(long, value_delimiter = ',', default_value = "128M,1G,4G", value_parser = parse_size)]
        sizes: Vec<Size>,
        /// vs-qemu: multifd channel counts of the multifd section (0 leaves it out).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        multifd_channels: Vec<u8>,
        /// vs-qemu: guest sizes of the multifd section (filled guests).
        #[arg(long, value_delimiter = ',', default_value = "4G", value_parser = parse_size)]
        multifd_sizes: Vec<Size>,
        /// telemetry: only catalog scenarios whose name contains PATTERN.
        #[arg(long, value_name = "PATTERN")]
        filter: Option<String>,
    },
    /// Run the builtin VMM itself (QEMU-style options follow).
    #[command(disable_help_flag = true)]
    Vmm {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// A size as QEMU's `-m` reads it: a bare number is MiB.
fn parse_size(s: &str) -> Result<Size, String> {
    migtest_vmm::cli::parse_size(s, 20)
        .map(Size)
        .ok_or_else(|| format!("bad size '{s}' (use e.g. 128M, 1G)"))
}

fn backends(args: &BackendArgs) -> anyhow::Result<(Backend, Backend)> {
    if args.keep_logs {
        std::env::set_var("MIGTEST_KEEP_LOGS", "1");
    }
    match args.vmm {
        VmmKind::Builtin => Ok((Backend::Builtin, Backend::Builtin)),
        VmmKind::Qemu => Backend::qemu_pair(&args.qemu),
    }
}

fn compare(
    scenario: &str,
    qemu: &QemuBinaryArgs,
    passes: u64,
    memory: Size,
    report_dir: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    use migtest::compare::{report, run_side};
    let (qsrc, qdst) = Backend::qemu_pair(qemu)?;
    let cfg = |src: Backend, dst: Backend| {
        let mut c = CatalogConfig::new(src);
        c.dst_backend = dst;
        c.passes = passes;
        c.memory = memory;
        c
    };
    println!("builtin: {}", Backend::Builtin.describe());
    println!("qemu:    {}", qsrc.describe());
    if qsrc != qdst {
        println!("    ->   {}", qdst.describe());
    }
    println!(
        "running '{scenario}' ({} MiB, {passes} held passes) on builtin ...",
        memory.bytes() >> 20
    );
    let a = run_side(
        "builtin",
        scenario,
        &cfg(Backend::Builtin, Backend::Builtin),
    )?;
    println!("running '{scenario}' on qemu ...");
    let b = run_side("qemu", scenario, &cfg(qsrc, qdst))?;
    println!();
    print!("{}", report(scenario, &a, &b));
    if let Some(dir) = report_dir {
        let path = migtest::compare::html_report(scenario, &a, &b).write(dir)?;
        println!("report: {}", path.display());
    }
    Ok(i32::from(a.result.is_err() || b.result.is_err()))
}

/// `-x-fault NAME` for each planted bug.
fn fault_args(faults: &[String]) -> Vec<String> {
    faults
        .iter()
        .flat_map(|f| ["-x-fault".to_string(), f.clone()])
        .collect()
}

fn exec_options(
    args: &BackendArgs,
    faults: &[String],
    wait_timeout: u64,
) -> anyhow::Result<migtest::scenario::exec::ExecOptions> {
    let (src, dst) = backends(args)?;
    let mut opts = migtest::scenario::exec::ExecOptions::new(src, dst);
    opts.src_extra = fault_args(faults);
    opts.wait_timeout = std::time::Duration::from_secs(wait_timeout);
    Ok(opts)
}

fn main() -> ExitCode {
    // `migtest vmm ...` must see QEMU-style options untouched by clap.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("vmm") {
        return migtest_vmm::run_main(argv.into_iter().skip(2));
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run {
            backend,
            filter,
            passes,
            memory,
            faults,
            report,
        } => match backends(&backend) {
            Ok((src, dst)) => {
                let mut config = CatalogConfig::new(src);
                config.dst_backend = dst;
                config.passes = passes;
                config.memory = memory;
                config.src_extra = fault_args(&faults);
                migtest::cli_run::run(&migtest::cli_run::RunOptions {
                    config,
                    filter,
                    report,
                })
            }
            Err(e) => {
                eprintln!("migtest: {e:#}");
                125
            }
        },
        Command::List => {
            for s in migtest::catalog::catalog() {
                println!("{:<32} {}", s.name, s.purpose);
            }
            0
        }
        Command::Compare {
            scenario,
            qemu,
            passes,
            memory,
            report,
        } => match compare(&scenario, &qemu, passes, memory, report.as_deref()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("migtest: {e:#}");
                125
            }
        },
        Command::Replay {
            file,
            backend,
            faults,
            wait_timeout,
            settle_ms,
            report,
        } => match exec_options(&backend, &faults, wait_timeout) {
            Ok(mut opts) => {
                opts.op_delay = std::time::Duration::from_millis(settle_ms);
                migtest::replay::replay_reported(&file, &opts, report.as_deref())
            }
            Err(e) => {
                eprintln!("migtest replay: cannot test: {e:#}");
                migtest::replay::CANNOT_TEST
            }
        },
        Command::Fuzz {
            backend,
            cases,
            seed,
            max_shrink_secs,
            faults,
            wait_timeout,
            focus,
            report,
        } => match exec_options(&backend, &faults, wait_timeout) {
            Ok(exec) => {
                let mut opts = migtest::fuzz::FuzzOptions::new(seed);
                opts.cases = cases;
                opts.focus = focus;
                if focus != migtest::fuzz::Focus::All {
                    opts.label = format!("fuzz-{}", focus.name());
                }
                opts.exec = exec;
                opts.max_shrink_time = std::time::Duration::from_secs(max_shrink_secs);
                let outcome = migtest::fuzz::fuzz(&opts);
                if let Some(dir) = &report {
                    if let Err(e) = migtest::fuzz::write_report(&outcome, &opts, dir) {
                        eprintln!("migtest fuzz: cannot write the report: {e:#}");
                    }
                }
                match outcome {
                    Ok(r) => {
                        println!(
                            "fuzz: {} cases passed ({} skipped, {} unreproducible failures) in {:.1} s (seed {seed})",
                            r.cases,
                            r.skipped,
                            r.flaky,
                            r.elapsed.as_secs_f64()
                        );
                        0
                    }
                    Err(f) => {
                        println!("{f}");
                        if f.replay_command.is_empty() {
                            migtest::replay::CANNOT_TEST
                        } else {
                            1
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("migtest fuzz: cannot test: {e:#}");
                migtest::replay::CANNOT_TEST
            }
        },
        Command::Bench {
            which,
            memory,
            runs,
            sizes,
            multifd_channels,
            multifd_sizes,
            filter,
        } => match migtest::bench::run(
            which,
            memory,
            runs,
            &migtest::bench::VsQemuSizes {
                sizes,
                multifd_channels: multifd_channels.into_iter().filter(|&n| n > 0).collect(),
                multifd_sizes,
            },
            filter.as_deref(),
        ) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("migtest bench: {e:#}");
                1
            }
        },
        Command::Vmm { .. } => unreachable!("handled before clap"),
    };
    ExitCode::from(code as u8)
}

/// `--focus NAME`.
fn parse_focus(s: &str) -> Result<migtest::fuzz::Focus, String> {
    migtest::fuzz::Focus::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = migtest::fuzz::Focus::ALL.iter().map(|f| f.name()).collect();
        format!("unknown focus `{s}` (one of {})", names.join(", "))
    })
}
