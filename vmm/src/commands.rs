//! QMP command dispatch: the non-migration commands, and routing of the
//! migration commands to [`crate::migration::Migration`].

use crate::migration::Migration;
use crate::vm::Vm;
use migtest_qmp::args::Args;
use migtest_qmp::schema::RunState;
use migtest_qmp::{ErrorBody, ErrorClass, VersionInfo, VersionTriple};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What a command produced.
#[derive(Debug)]
pub enum Outcome {
    /// The `return` value.
    Reply(Value),
    /// `quit`: send this `return` value, then call [`Dispatcher::shutdown`]
    /// on the same connection thread (so the reply is written first).
    Quit(Value),
}

/// The QEMU version migtest-vmm reports: the release `switchover-hold` was
/// proposed for (8.1), so version-sniffing clients see a plausible QEMU.
pub const QEMU_VERSION: VersionTriple = VersionTriple {
    major: 8,
    minor: 1,
    micro: 0,
};

/// Every command migtest-vmm implements, as listed by `query-commands`.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-commands",
    "query-version",
    "query-name",
    "query-status",
    "query-kvm",
    "stop",
    "cont",
    "quit",
    "pmemsave",
    "getfd",
    "closefd",
    "migrate",
    "migrate-incoming",
    "migrate_cancel",
    "migrate-continue",
    "migrate-start-postcopy",
    "migrate-pause",
    "migrate-recover",
    "migrate-set-parameters",
    "query-migrate-parameters",
    "migrate-set-capabilities",
    "query-migrate-capabilities",
    "query-migrate",
];

/// Executes commands against one VM. Commands from all monitors are
/// serialized by an internal lock.
pub struct Dispatcher {
    vm: Arc<Vm>,
    migration: Arc<Migration>,
    big_lock: Mutex<()>,
    quit_requested: AtomicBool,
}

fn no_args(args: Option<Map<String, Value>>) -> Result<(), ErrorBody> {
    Args::new(args).finish()
}

/// QEMU's error for a command it does not have.
pub fn command_not_found(name: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorClass::CommandNotFound,
        format!("The command {name} has not been found"),
    )
}

/// `qmp_capabilities {enable?}`: migtest-vmm offers no protocol
/// capabilities (no `oob`), so any capability asked for is an error.
pub fn qmp_capabilities(args: Option<Map<String, Value>>) -> Result<(), ErrorBody> {
    let mut a = Args::new(args);
    if let Some(v) = a.opt_value("enable") {
        let Value::Array(list) = v else {
            return Err(a.type_error("enable", "array"));
        };
        // No capability is offered, so the first entry decides the error.
        if let Some(cap) = list.first() {
            return Err(match cap.as_str() {
                Some("oob") => ErrorBody::generic("Capability 'oob' not available"),
                // QEMU 7.2 words this one with 'null' as the parameter name.
                Some(other) => {
                    ErrorBody::generic(format!("Parameter 'null' does not accept value '{other}'"))
                }
                None => a.type_error("enable[0]", "string"),
            });
        }
    }
    a.finish()
}

/// The arguments of `pmemsave {val, size, filename, cpu-index?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmemsaveArgs {
    /// Guest-physical start address (`val`).
    pub addr: i64,
    /// Bytes to save.
    pub size: i64,
    /// The file to write.
    pub filename: String,
}

impl PmemsaveArgs {
    /// Reads the arguments strictly, as QEMU's visitor does.
    pub fn parse(mut a: Args) -> Result<PmemsaveArgs, ErrorBody> {
        let addr = a.i64("val")?;
        let size = a.i64("size")?;
        let filename = a.str("filename")?;
        let _ = a.opt_i64("cpu-index")?;
        a.finish()?;
        Ok(PmemsaveArgs {
            addr,
            size,
            filename,
        })
    }

    /// The byte range to save from RAM of `ram_size` bytes, or QEMU-style
    /// error when it does not lie inside RAM.
    pub fn range(&self, ram_size: u64) -> Result<std::ops::Range<u64>, ErrorBody> {
        let (addr, size) = (self.addr, self.size);
        let end = (addr >= 0 && size >= 0)
            .then(|| (addr as u64).checked_add(size as u64))
            .flatten()
            .filter(|end| *end <= ram_size);
        match end {
            Some(end) => Ok(addr as u64..end),
            None => Err(ErrorBody::generic(format!(
                "Invalid addr 0x{addr:016x}/size {size} specified (RAM is 0x{ram_size:x} bytes)"
            ))),
        }
    }
}

impl Dispatcher {
    /// A dispatcher for `vm`.
    pub fn new(vm: Arc<Vm>, migration: Arc<Migration>) -> Dispatcher {
        Dispatcher {
            vm,
            migration,
            big_lock: Mutex::new(()),
            quit_requested: AtomicBool::new(false),
        }
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// The version for the greeting and `query-version`.
    pub fn version(&self) -> VersionInfo {
        VersionInfo {
            qemu: QEMU_VERSION,
            package: format!("migtest-vmm {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Performs a `quit` once its reply is written: one `SHUTDOWN` event
    /// (as QEMU's main loop sends it), then exit status 0. Only the first
    /// `quit` gets here; a concurrent second one just waits for the exit.
    pub fn shutdown(&self) -> ! {
        if !self.quit_requested.swap(true, Ordering::SeqCst) {
            self.vm.emit(
                "SHUTDOWN",
                Some(json!({"guest": false, "reason": "host-qmp-quit"})),
            );
            self.vm.exit_process(0);
        }
        loop {
            std::thread::park();
        }
    }

    /// Runs one command.
    pub fn dispatch(
        &self,
        name: &str,
        args: Option<Map<String, Value>>,
    ) -> Result<Outcome, ErrorBody> {
        let _big = self.big_lock.lock().unwrap_or_else(|e| e.into_inner());
        let m = &self.migration;
        let value = match name {
            "query-commands" => {
                no_args(args)?;
                Value::Array(COMMANDS.iter().map(|c| json!({"name": c})).collect())
            }
            "query-version" => {
                no_args(args)?;
                json!(self.version())
            }
            "query-name" => {
                no_args(args)?;
                match self.vm.name() {
                    Some(n) => json!({"name": n}),
                    None => json!({}),
                }
            }
            "query-status" => {
                no_args(args)?;
                let state = self.vm.runstate();
                json!({"running": state == RunState::Running, "singlestep": false, "status": state})
            }
            "query-kvm" => {
                no_args(args)?;
                json!({"enabled": false, "present": false})
            }
            "stop" => {
                no_args(args)?;
                self.stop();
                json!({})
            }
            "cont" => {
                no_args(args)?;
                self.cont()?;
                json!({})
            }
            "quit" => {
                no_args(args)?;
                return Ok(Outcome::Quit(json!({})));
            }
            "pmemsave" => {
                self.pmemsave(Args::new(args))?;
                json!({})
            }
            "getfd" => {
                crate::monitor_fds::getfd(Args::new(args))?;
                json!({})
            }
            "closefd" => {
                crate::monitor_fds::closefd(Args::new(args))?;
                json!({})
            }
            "migrate" => m.migrate(Args::new(args))?,
            "migrate-incoming" => m.migrate_incoming(Args::new(args))?,
            "migrate_cancel" => {
                no_args(args)?;
                m.migrate_cancel()?
            }
            "migrate-continue" => m.migrate_continue(Args::new(args))?,
            "migrate-start-postcopy" => {
                no_args(args)?;
                m.migrate_start_postcopy()?
            }
            "migrate-pause" => {
                no_args(args)?;
                m.migrate_pause()?
            }
            "migrate-recover" => m.migrate_recover(Args::new(args))?,
            "migrate-set-parameters" => m.set_parameters(Args::new(args))?,
            "query-migrate-parameters" => {
                no_args(args)?;
                m.query_parameters()?
            }
            "migrate-set-capabilities" => m.set_capabilities(Args::new(args))?,
            "query-migrate-capabilities" => {
                no_args(args)?;
                m.query_capabilities()?
            }
            "query-migrate" => {
                no_args(args)?;
                m.query_migrate()?
            }
            other => return Err(command_not_found(other)),
        };
        Ok(Outcome::Reply(value))
    }

    /// `stop`: during `inmigrate` it only clears autostart, as in QEMU; on
    /// a VM that does not run (prelaunch, paused, postmigrate...) it changes
    /// nothing, as QEMU's `do_vm_stop` only acts on a running VM.
    fn stop(&self) {
        match self.vm.runstate() {
            RunState::Inmigrate => self.vm.set_autostart(false),
            _ => {
                self.vm.stop_if_running(RunState::Paused);
            }
        }
    }

    /// `cont` with QEMU's rules.
    fn cont(&self) -> Result<(), ErrorBody> {
        match self.vm.runstate() {
            RunState::InternalError | RunState::Shutdown | RunState::GuestPanicked => Err(
                ErrorBody::generic("Resetting the Virtual Machine is required"),
            ),
            RunState::FinishMigrate => Err(ErrorBody::generic("Migration is not finalized yet")),
            RunState::Inmigrate => {
                self.vm.set_autostart(true);
                Ok(())
            }
            _ => {
                self.vm.vm_start();
                Ok(())
            }
        }
    }

    /// `pmemsave {val, size, filename}`: guest-physical RAM to a file.
    fn pmemsave(&self, a: Args) -> Result<(), ErrorBody> {
        let args = PmemsaveArgs::parse(a)?;
        let ram = self.vm.guest().ram();
        let range = args.range(ram.size())?;
        let filename = &args.filename;
        let mut file = std::fs::File::create(filename).map_err(|e| {
            ErrorBody::generic(format!("Could not open '{filename}': {}", io_text(&e)))
        })?;
        let mut buf = vec![0u8; 1 << 16];
        let mut pos = range.start;
        while pos < range.end {
            let n = ((range.end - pos) as usize).min(buf.len());
            ram.read_bytes(pos, &mut buf[..n])
                .map_err(|e| ErrorBody::generic(format!("pmemsave: {e}")))?;
            file.write_all(&buf[..n]).map_err(|e| {
                ErrorBody::generic(format!("writing '{filename}': {}", io_text(&e)))
            })?;
            pos += n as u64;
        }
        Ok(())
    }
}

/// An I/O error's text without Rust's "(os error N)" suffix.
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
