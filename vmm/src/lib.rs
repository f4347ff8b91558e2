//! migtest-vmm library.
