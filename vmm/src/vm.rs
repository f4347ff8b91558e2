//! The VM: guest, run state, autostart and events, shared by the QMP
//! dispatcher and the migration engine.

use crate::events::EventBus;
use crate::guest::Guest;
use migtest_qmp::schema::RunState;
use serde_json::Value;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// One virtual machine.
pub struct Vm {
    guest: Guest,
    name: Option<String>,
    runstate: Mutex<RunState>,
    autostart: AtomicBool,
    events: EventBus,
}

impl Vm {
    /// A VM in `initial` run state; `autostart` is false with `-S`.
    pub fn new(guest: Guest, name: Option<String>, initial: RunState, autostart: bool) -> Vm {
        Vm {
            guest,
            name,
            runstate: Mutex::new(initial),
            autostart: AtomicBool::new(autostart),
            events: EventBus::default(),
        }
    }

    /// The guest.
    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    /// The `-name`.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The event bus.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Emits a QMP event to every negotiated monitor.
    pub fn emit(&self, event: &str, data: Option<Value>) {
        self.events.emit(event, data);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.runstate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current run state.
    pub fn runstate(&self) -> RunState {
        *self.lock()
    }

    /// Sets the run state without touching the vCPUs.
    pub fn set_runstate(&self, state: RunState) {
        *self.lock() = state;
    }

    /// Whether the vCPUs run.
    pub fn is_running(&self) -> bool {
        self.runstate() == RunState::Running
    }

    /// Stops the vCPUs (if running) and enters `new_state`; emits `STOP`
    /// when the VM was running. Returns whether it was running.
    pub fn vm_stop(&self, new_state: RunState) -> bool {
        let mut state = self.lock();
        let was_running = *state == RunState::Running;
        if was_running {
            self.guest.pause();
        }
        *state = new_state;
        drop(state);
        if was_running {
            self.emit("STOP", None);
        }
        was_running
    }

    /// Starts the vCPUs and enters `running`, emitting `RESUME`. On a VM
    /// that already runs it emits `STOP` and `RESUME` and changes nothing,
    /// as QEMU's `vm_prepare_start` does.
    pub fn vm_start(&self) {
        let mut state = self.lock();
        if *state == RunState::Running {
            drop(state);
            self.emit("STOP", None);
            self.emit("RESUME", None);
            return;
        }
        *state = RunState::Running;
        self.guest.resume();
        drop(state);
        self.emit("RESUME", None);
    }

    /// Whether the guest starts once an incoming migration completes.
    pub fn autostart(&self) -> bool {
        self.autostart.load(Ordering::SeqCst)
    }

    /// Sets autostart (`cont`/`stop` during `inmigrate`).
    pub fn set_autostart(&self, on: bool) {
        self.autostart.store(on, Ordering::SeqCst);
    }

    /// Ends the process after giving event writes a moment to reach the
    /// monitors. Used by `quit` and by a failed incoming migration.
    pub fn exit_process(&self, code: i32) -> ! {
        let _ = std::io::stderr().flush();
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(20));
        std::process::exit(code)
    }
}
