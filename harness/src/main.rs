//! `migtest`: run the migration scenario catalog, replay or fuzz operation
//! sequences, compare backends, and benchmark, from a terminal.

use clap::{Args, Parser, Subcommand, ValueEnum};
use migtest::backend::qemu::QemuBinaryArgs;
use migtest::backend::Backend;
use migtest::catalog::CatalogConfig;
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
        memory: u64,
    },
    /// List the catalog's scenarios.
    List,
    /// Print benchmark figures (builtin VMM; start-up also times QEMU).
    Bench {
        /// Which figures.
        #[arg(value_enum, default_value = "all")]
        which: migtest::bench::Bench,
        /// Guest RAM for the pass/release/limits figures.
        #[arg(long, default_value = "128M", value_parser = parse_size)]
        memory: u64,
        /// Runs per start-up figure (median reported).
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Run the builtin VMM itself (QEMU-style options follow).
    #[command(disable_help_flag = true)]
    Vmm {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    migtest_vmm::cli::parse_size(s, 20).ok_or_else(|| format!("bad size '{s}' (use e.g. 128M, 1G)"))
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
        } => match backends(&backend) {
            Ok((src, dst)) => {
                let mut config = CatalogConfig::new(src);
                config.dst_backend = dst;
                config.passes = passes;
                config.memory = memory;
                migtest::cli_run::run(&migtest::cli_run::RunOptions { config, filter })
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
        Command::Bench {
            which,
            memory,
            runs,
        } => match migtest::bench::run(which, memory, runs) {
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
