//! QMP wire types and framing shared by the migtest client (harness) and the
//! migtest-vmm server.
//!
//! - [`message`]: greeting, command, return, error, event (with timestamp).
//! - [`framing`]: CRLF/LF line framing for reading server output, and a
//!   streaming JSON splitter for the server side (QEMU accepts objects split
//!   over lines and several per line).
//! - [`args`]: strict argument extraction with QEMU's error texts.
//! - [`schema`]: the migration-related QAPI types (`query-migrate`,
//!   parameters, capabilities, run states).
//!
//! Client-side parsing is tolerant of unknown keys; server-side parsing
//! ([`message::Command::from_value`], [`args::Args`]) is strict.

pub mod args;
pub mod framing;
pub mod message;
pub mod schema;

pub use message::{
    Command, ErrorBody, ErrorClass, Event, Greeting, ServerMessage, Timestamp, VersionInfo,
    VersionTriple,
};
