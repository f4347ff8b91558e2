//! migtest-vmm library.
pub mod migration;
