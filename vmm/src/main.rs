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
            let v = (8, 1, 0);
            println!(
                "migtest-vmm version {} (QMP compatible with QEMU {}.{}.{})",
                env!("CARGO_PKG_VERSION"),
                v.0,
                v.1,
                v.2
            );
            ExitCode::SUCCESS
        }
        Invocation::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Invocation::Run(_opts) => {
            eprintln!("migtest-vmm: not assembled yet");
            ExitCode::from(1)
        }
    }
}
