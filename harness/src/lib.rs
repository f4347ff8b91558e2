//! migtest: a qtest-style live-migration test harness.
//!
//! It spawns source and destination VMMs (the builtin `migtest-vmm` or real
//! `qemu-system-x86_64`) as guarded child processes ([`process`]), drives
//! them over QMP ([`qmp_client`]) through typed handles ([`vm`]), checks
//! guest memory ([`checks`]) and prints one-screen failure reports
//! ([`diagnostics`]).
//!
//! On top of that: [`pair`] (a source/destination pair and the qtest-style
//! steps), [`catalog`] (the scenario catalog run by the nextest suites and
//! by `migtest run`, see [`cli_run`]), [`scenario`] (the op language of
//! scenario files) and [`model`] (the reference model that judges them).

pub mod backend;
pub mod bench;
pub mod catalog;
pub mod checks;
pub mod cli_run;
pub mod compare;
pub mod diagnostics;
pub mod fuzz;
pub mod model;
pub mod observe;
pub mod pair;
pub mod process;
pub mod proxy;
pub mod qmp_client;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod side;
pub mod size;
pub mod telemetry;
pub mod text;
pub mod vm;
