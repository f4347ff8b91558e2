//! Scenario files and suites live in `tests/`; this library only locates the scenario folder.

use std::path::PathBuf;

/// The folder holding the `*.toml` scenario files.
pub fn scenario_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
