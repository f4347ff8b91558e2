//! migtest-vmm library.

pub mod guest;
