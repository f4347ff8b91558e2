//! migtest: a qtest-style live-migration test harness.
//!
//! It spawns source and destination VMMs (the builtin `migtest-vmm` or real
//! `qemu-system-x86_64`) as guarded child processes ([`process`]), drives
//! them over QMP ([`qmp_client`]) through typed handles ([`vm`]), checks
//! guest memory ([`checks`]) and prints one-screen failure reports
//! ([`diagnostics`]).

pub mod backend;
pub mod catalog;
pub mod checks;
pub mod cli_run;
pub mod diagnostics;
pub mod pair;
pub mod process;
pub mod qmp_client;
pub mod vm;
