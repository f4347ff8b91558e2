//! The real-QEMU backend: what to launch, one job per module. Binary
//! resolution ([`binaries`]), machine types ([`machines`]), the accelerator
//! ([`accel`]), the command line ([`launch`]), the A-B boot sector
//! ([`boot_image`]) and QMP capability probes ([`probes`]). The A-B memory
//! invariant itself is [`crate::checks::check_guests_ram`], shared with the
//! builtin backend.
//!
//! Launching and supervising the processes lives in the harness core; these
//! modules only compute *what* to launch. Everything here is pure (apart from
//! [`kvm_usable`], [`find_in_path`] and writing the patched boot image) and is
//! unit-tested. Facts about QEMU 7.2 that shaped it are in
//! `docs/qemu-backend.md`.

use std::path::PathBuf;

pub mod accel;
pub mod binaries;
pub mod boot_image;
pub mod launch;
pub mod machines;
pub mod probes;

pub use accel::*;
pub use binaries::*;
pub use boot_image::*;
pub use launch::*;
pub use machines::*;
pub use probes::*;

/// Errors from the QEMU backend helpers.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// No QEMU binary was configured and none was found in `PATH`.
    #[error(
        "no QEMU binary for the {s} side: pass --qemu PATH (or --qemu-{s}), \
         or set MIGTEST_QEMU / QTEST_QEMU_BINARY (or QTEST_QEMU_BINARY_{side_upper}); \
         `{default}` was not found in PATH either",
        s = .side.short()
    )]
    NoBinary {
        side: Side,
        side_upper: &'static str,
        default: &'static str,
    },
    /// A configured binary does not exist or is not an executable file.
    #[error("QEMU binary {path:?} (from {origin}) is not an executable file")]
    BadBinary { path: PathBuf, origin: String },
    /// The two binaries have no machine type of the family in common.
    #[error(
        "no common machine version for machine type '{family}' between the source \
         binary ({src}) and the destination binary ({dst})"
    )]
    NoCommonMachine {
        family: String,
        src: String,
        dst: String,
    },
    /// `QTEST_QEMU_MACHINE_TYPE` names a machine one of the binaries lacks.
    #[error("machine type '{machine}' (from QTEST_QEMU_MACHINE_TYPE) is not supported by the {s} binary", s = .side.short())]
    MachineUnsupported { machine: String, side: Side },
    /// Unknown machine family name.
    #[error("unknown machine family '{0}': expected pc, i440fx, q35 or a pc-i440fx-/pc-q35- type")]
    UnknownFamily(String),
    /// Too little guest memory for the A-B test range.
    #[error("guest memory of {memory_bytes} bytes is too small for the A-B guest (need at least {min} bytes)")]
    MemoryTooSmall { memory_bytes: u64, min: u64 },
    /// Bad END / PASS_MASK values for the boot image.
    #[error("invalid A-B boot image parameter: {0}")]
    BadImageParam(String),
    /// A unix socket path is longer than `sun_path` allows.
    #[error("unix socket path {path:?} is {len} bytes, longer than the {max}-byte limit")]
    SocketPathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    /// A path that must be passed to QEMU as UTF-8 is not.
    #[error("path {0:?} is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    /// I/O while writing the boot image.
    #[error("writing the A-B boot image: {0}")]
    Io(#[from] std::io::Error),
}

pub use crate::side::Side;
