//! migtest harness.
