//! [`Side`]: which VMM of a migration pair, the one definition every layer uses (QEMU binary
//! selection, the pair, the op language, the model).

use std::fmt;

use serde::{Deserialize, Serialize};

/// One VMM of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// The VMM that runs the guest first and sends it.
    Source,
    /// The VMM launched to receive the guest (`-incoming`).
    Destination,
}

impl Side {
    /// Both sides, source first.
    pub const ALL: [Side; 2] = [Side::Source, Side::Destination];

    /// The kebab-case name used in files.
    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }

    /// The short name of QEMU's options and variables (`--qemu-src`, `QTEST_QEMU_BINARY_SRC`).
    pub fn short(self) -> &'static str {
        match self {
            Side::Source => "src",
            Side::Destination => "dst",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
