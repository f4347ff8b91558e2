//! The VM: guest, run state, autostart and events, shared by the QMP
//! dispatcher and the migration engine.

use crate::events::EventBus;
use crate::guest::Guest;
use migtest_qmp::schema::RunState;
use serde_json::Value;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// One virtual machine.
pub struct Vm {
    guest: Guest,
    name: Option<String>,
    runstate: Mutex<RunState>,
    autostart: AtomicBool,
    events: EventBus,
    /// False until the start-up `vm_start` of a VM that boots running
    /// (no `-S`, no `-incoming`) has happened; see [`Vm::wait_started`].
    started: Mutex<bool>,
    started_cv: Condvar,
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
            started: Mutex::new(!(initial == RunState::Paused && autostart)),
            started_cv: Condvar::new(),
        }
    }

    /// Waits (at most `timeout`) until a VM that boots running has been
    /// started. QEMU sends the QMP greeting from its main loop, after the
    /// start-up `vm_start`, so no monitor can see that boot's `RESUME` or a
    /// `paused` status; the QMP server calls this before its greeting to
    /// give the same guarantee although its sockets listen earlier.
    pub fn wait_started(&self, timeout: Duration) {
        let started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .started_cv
            .wait_timeout_while(started, timeout, |s| !*s)
            .map_err(|e| e.into_inner());
    }

    fn mark_started(&self) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if !*started {
            *started = true;
            self.started_cv.notify_all();
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

    /// QEMU's `vm_stop` for the `stop` command: stops a running VM and
    /// enters `new_state` (emitting `STOP`); any other state is left alone.
    /// Checked and changed under one lock, so a concurrent migration state
    /// change is never overwritten. Returns whether it stopped the VM.
    pub fn stop_if_running(&self, new_state: RunState) -> bool {
        let mut state = self.lock();
        if *state != RunState::Running {
            return false;
        }
        self.guest.pause();
        *state = new_state;
        drop(state);
        self.emit("STOP", None);
        true
    }

    /// Starts the vCPUs and enters `running`, emitting `RESUME`. On a VM
    /// that already runs it does nothing and emits no event: QEMU's
    /// `vm_prepare_start` only sends a `STOP`/`RESUME` pair when a vmstop
    /// request is pending, which migtest-vmm never has (recorded QEMU 7.2:
    /// `cont-while-running` replies `{}` with no event).
    pub fn vm_start(&self) {
        let mut state = self.lock();
        if *state == RunState::Running {
            return;
        }
        *state = RunState::Running;
        self.guest.resume();
        drop(state);
        self.emit("RESUME", None);
        self.mark_started();
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
