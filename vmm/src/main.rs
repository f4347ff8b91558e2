//! `migtest-vmm`: a QEMU-shaped VMM for live-migration tests.

use migtest_vmm::cli::{self, Invocation};
use std::process::ExitCode;

fn main() -> ExitCode {
    let invocation = match cli::parse(std::env::args().skip(1)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("migtest-vmm: {e}");
            return ExitCode::from(1);
        }
    };
    match invocation {
        Invocation::Version => {
            let v = migtest_vmm::commands::QEMU_VERSION;
            println!(
                "migtest-vmm version {} (QMP compatible with QEMU {}.{}.{})",
                env!("CARGO_PKG_VERSION"),
                v.major,
                v.minor,
                v.micro
            );
            ExitCode::SUCCESS
        }
        Invocation::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Invocation::Run(opts) => match migtest_vmm::machine::run(opts) {
            Ok(never) => match never {},
            Err(e) => {
                eprintln!("migtest-vmm: {e}");
                ExitCode::from(1)
            }
        },
    }
}
