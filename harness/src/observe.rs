//! A hook for watching what a test does to its VMMs, without the lower
//! layers knowing who watches (like `tracing`'s scoped dispatcher).
//!
//! An [`Observer`] installed on a thread with [`install`] is told about
//! every VMM launched, QMP command sent and VMM killed on that thread, and
//! about the harness's own notes ([`mark`]). The telemetry recorder
//! (`crate::telemetry`) is one; with none installed every hook is a no-op.
//! This module imports nothing from the crate, so `process`, `qmp_client`
//! and `vm` can call it without reaching upward.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

/// A launched VMM, as [`Observer::vm_launched`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct LaunchedVm<'a> {
    /// Role label ("source", "destination").
    pub role: &'a str,
    /// The `-name` of the guest ("destination-2").
    pub name: &'a str,
    /// Backend name ("builtin", "qemu").
    pub backend: &'a str,
    /// Process id.
    pub pid: u32,
    /// Its log directory (holds the sockets).
    pub log_dir: &'a Path,
}

/// What an observer is told. Calls come on the thread that installed it.
pub trait Observer: Send + Sync {
    /// A VMM is up and its QMP monitor negotiated.
    fn vm_launched(&self, vm: &LaunchedVm<'_>);
    /// A QMP command is about to be sent on the connection labelled `role`.
    fn command(&self, role: &str, name: &str, args: &Value);
    /// The VMM of `role` is being killed (SIGKILL) on purpose.
    fn killed(&self, role: &str, pid: u32);
    /// A step the harness names itself (e.g. "hold-set" for a hold made of
    /// other parameters), with details.
    fn mark(&self, role: &str, what: &str, detail: &Value);
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<dyn Observer>>> = const { RefCell::new(None) };
}

/// Restores the previous observer when dropped.
pub struct Installed {
    previous: Option<Arc<dyn Observer>>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// Makes `observer` the current thread's observer until the guard drops.
pub fn install(observer: Arc<dyn Observer>) -> Installed {
    let previous = CURRENT.with(|c| c.borrow_mut().replace(observer));
    Installed { previous }
}

fn with(f: impl FnOnce(&dyn Observer)) {
    // Cloned out, so an observer may itself send QMP commands.
    if let Some(o) = CURRENT.with(|c| c.borrow().clone()) {
        f(o.as_ref());
    }
}

/// Tells the current observer a VMM was launched.
pub fn vm_launched(vm: &LaunchedVm<'_>) {
    with(|o| o.vm_launched(vm));
}

/// Tells the current observer a QMP command is being sent.
pub fn command(role: &str, name: &str, args: &Value) {
    with(|o| o.command(role, name, args));
}

/// Tells the current observer a VMM is being killed.
pub fn killed(role: &str, pid: u32) {
    with(|o| o.killed(role, pid));
}

/// Tells the current observer about a step the harness names itself.
pub fn mark(role: &str, what: &str, detail: &Value) {
    with(|o| o.mark(role, what, detail));
}
