//! migtest harness.

pub mod backend;
