//! `migtest-vmm`: a VMM process with QEMU's command-line shape and QEMU's
//! QMP migration interface, for live-migration tests.
//!
//! - [`cli`]: QEMU-shaped options.
//! - [`guest`]: RAM with software dirty tracking, vCPU threads running
//!   workloads from guest images, serial output.
//! - [`vm`]: run state, autostart and events around the guest.
//! - [`server`], [`commands`], [`events`]: the QMP monitor.
//! - [`migration`]: precopy migration (source engine, destination loader,
//!   stream format, transports) with `switchover-hold`.
//! - [`machine`]: wiring it all together for `main`.

pub mod cli;
pub mod commands;
pub mod events;
pub mod guest;
mod host_impl;
pub mod machine;
pub mod migration;
pub mod server;
pub mod vm;
