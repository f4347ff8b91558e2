//! The guest's serial port: a byte sink configured like QEMU's
//! `-serial file:PATH|stdio|none`.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where serial output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialConfig {
    /// Write to a file, truncated when the guest is created.
    File(PathBuf),
    /// Write to the VMM's standard output.
    Stdio,
    /// Discard output (bytes are still counted).
    None,
}

/// A `-serial` argument that is not `file:PATH`, `stdio` or `none`.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("unsupported -serial `{0}` (expected file:PATH, stdio or none)")]
pub struct SerialConfigError(pub String);

impl FromStr for SerialConfig {
    type Err = SerialConfigError;

    fn from_str(s: &str) -> Result<SerialConfig, SerialConfigError> {
        match s {
            "stdio" => Ok(SerialConfig::Stdio),
            "none" => Ok(SerialConfig::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SerialConfig::File(PathBuf::from(path))),
                _ => Err(SerialConfigError(s.to_string())),
            },
        }
    }
}

/// Serial state migrated with the device state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Bytes the guest has emitted so far (on this and earlier hosts).
    pub bytes_emitted: u64,
}

enum Sink {
    File(File),
    Stdio,
    None,
}

/// The serial device: writes each byte through immediately so a poller of
/// the output file sees it at once.
pub struct Serial {
    sink: Mutex<Sink>,
    emitted: AtomicU64,
    errors: AtomicU64,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("emitted", &self.emitted.load(Ordering::Relaxed))
            .finish()
    }
}

impl Serial {
    /// Opens the sink (creating/truncating the file for `File`).
    pub fn open(config: &SerialConfig) -> std::io::Result<Serial> {
        let sink = match config {
            SerialConfig::File(path) => Sink::File(File::create(path)?),
            SerialConfig::Stdio => Sink::Stdio,
            SerialConfig::None => Sink::None,
        };
        Ok(Serial {
            sink: Mutex::new(sink),
            emitted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// Emits bytes. Output errors cannot be reported to the guest; they are
    /// counted (see [`write_errors`](Self::write_errors)) and otherwise ignored.
    pub fn write(&self, bytes: &[u8]) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let result = match &mut *sink {
            Sink::File(f) => f.write_all(bytes).and_then(|()| f.flush()),
            Sink::Stdio => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
            Sink::None => Ok(()),
        };
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.emitted
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }

    /// Number of failed writes to the sink.
    pub fn write_errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Current state, for migration.
    pub fn state(&self) -> SerialState {
        SerialState {
            bytes_emitted: self.emitted.load(Ordering::Relaxed),
        }
    }

    /// Restores migrated state (the output itself is not replayed).
    pub fn set_state(&self, state: SerialState) {
        self.emitted.store(state.bytes_emitted, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_config() {
        assert_eq!("stdio".parse(), Ok(SerialConfig::Stdio));
        assert_eq!("none".parse(), Ok(SerialConfig::None));
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(SerialConfig::File(PathBuf::from("/tmp/x")))
        );
        assert!("file:".parse::<SerialConfig>().is_err());
        assert_eq!(
            "pty".parse::<SerialConfig>().unwrap_err().to_string(),
            "unsupported -serial `pty` (expected file:PATH, stdio or none)"
        );
    }

    #[test]
    fn file_sink_writes_through_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial");
        std::fs::write(&path, "old").unwrap();
        let serial = Serial::open(&SerialConfig::File(path.clone())).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        serial.write(b"A");
        serial.write(b"BB");
        assert_eq!(std::fs::read(&path).unwrap(), b"ABB");
        assert_eq!(serial.state(), SerialState { bytes_emitted: 3 });
        serial.set_state(SerialState { bytes_emitted: 10 });
        serial.write(b"B");
        assert_eq!(serial.state().bytes_emitted, 11);
        assert_eq!(serial.write_errors(), 0);
    }

    #[test]
    fn open_fails_on_bad_path() {
        assert!(Serial::open(&SerialConfig::File("/nonexistent/dir/s".into())).is_err());
    }
}
