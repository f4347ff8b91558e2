//! `migtest-vmm`: a VMM process with QEMU's command-line shape and QEMU's
//! QMP migration interface, for live-migration tests.
//!
//! - [`cli`]: QEMU-shaped options.
//! - [`guest`]: RAM with software dirty tracking, vCPU threads running
//!   workloads from guest images, serial output.
//! - [`vm`]: run state, autostart and events around the guest.
//! - [`server`], [`commands`], [`events`], [`monitor_fds`]: the QMP monitor
//!   (and the descriptors passed to it with `getfd`).
//! - [`migration`]: precopy migration (source engine, destination loader,
//!   stream format, transports) with `switchover-hold`.
//! - [`machine`]: wiring it all together for `main`.
//! - `fuzzing` (hidden): the invariants the fuzz targets and their
//!   regression tests check.

pub mod cli;
pub mod commands;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod guest;
mod host_impl;
pub mod machine;
pub mod migration;
pub mod monitor_fds;
pub mod server;
pub mod vm;

/// Whether this build has the test-only `-x-fault` switch (`fault-injection` feature).
pub const FAULT_INJECTION: bool = cfg!(feature = "fault-injection");

use cli::Invocation;
use std::process::ExitCode;

/// The whole `migtest-vmm` program: parses QEMU-style `args` (without the
/// program name) and runs the VMM. Shared by the `migtest-vmm` binary and
/// `migtest vmm`.
pub fn run_main<I: IntoIterator<Item = String>>(args: I) -> ExitCode {
    let invocation = match cli::parse(args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("migtest-vmm: {e}");
            return ExitCode::from(1);
        }
    };
    match invocation {
        Invocation::Version => {
            let v = crate::commands::QEMU_VERSION;
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
        Invocation::Run(opts) => match crate::machine::run(opts) {
            Ok(never) => match never {},
            Err(e) => {
                eprintln!("migtest-vmm: {e}");
                ExitCode::from(1)
            }
        },
    }
}
