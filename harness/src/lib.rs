//! migtest harness.

pub mod model;
pub mod scenario;
