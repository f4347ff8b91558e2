//! Backends the harness can drive.

pub mod qemu;
