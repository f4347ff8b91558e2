//! An in-memory guest and a recording host for migration tests (used by
//! this crate's tests and usable by the harness's unit tests).

use super::host::{GuestIdentity, MigrationHost, MigrationRam, PAGE_SIZE};
use super::Migration;
use migtest_qmp::schema::RunState;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Guest RAM in a `Vec`, with a software dirty bitmap.
pub struct MemRam {
    data: Mutex<Vec<u8>>,
    dirty: Vec<AtomicU64>,
    pages: u64,
}

impl MemRam {
    /// Zeroed RAM of `pages` pages.
    pub fn new(pages: u64) -> MemRam {
        MemRam {
            data: Mutex::new(vec![0; pages as usize * PAGE_SIZE]),
            dirty: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            pages,
        }
    }

    /// Writes bytes at a guest address, then marks the touched pages dirty
    /// (write first, mark after, as the guest's accessor must).
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        {
            let mut d = super::lock(&self.data);
            let a = addr as usize;
            d[a..a + bytes.len()].copy_from_slice(bytes);
        }
        let first = addr / PAGE_SIZE as u64;
        let last = (addr + bytes.len().max(1) as u64 - 1) / PAGE_SIZE as u64;
        for p in first..=last {
            self.mark(p);
        }
    }

    /// Marks one page dirty.
    pub fn mark(&self, page: u64) {
        self.dirty[(page / 64) as usize].fetch_or(1 << (page % 64), Ordering::SeqCst);
    }

    /// A copy of the whole RAM.
    pub fn snapshot(&self) -> Vec<u8> {
        super::lock(&self.data).clone()
    }
}

impl MigrationRam for MemRam {
    fn size(&self) -> u64 {
        self.pages * PAGE_SIZE as u64
    }
    fn read_page(&self, page: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), String> {
        let d = super::lock(&self.data);
        let s = page as usize * PAGE_SIZE;
        buf.copy_from_slice(d.get(s..s + PAGE_SIZE).ok_or("page out of range")?);
        Ok(())
    }
    fn page_is_zero(&self, page: u64) -> bool {
        let d = super::lock(&self.data);
        let s = page as usize * PAGE_SIZE;
        d.get(s..s + PAGE_SIZE)
            .map(|p| p.iter().all(|b| *b == 0))
            .unwrap_or(false)
    }
    fn load_page(&self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), String> {
        let mut d = super::lock(&self.data);
        let s = page as usize * PAGE_SIZE;
        d.get_mut(s..s + PAGE_SIZE)
            .ok_or("page out of range")?
            .copy_from_slice(data);
        Ok(())
    }
    fn zero_page(&self, page: u64) -> Result<(), String> {
        let mut d = super::lock(&self.data);
        let s = page as usize * PAGE_SIZE;
        d.get_mut(s..s + PAGE_SIZE)
            .ok_or("page out of range")?
            .fill(0);
        Ok(())
    }
    fn dirty_set_all(&self) {
        for (i, w) in self.dirty.iter().enumerate() {
            let left = self.pages - i as u64 * 64;
            let bits = if left >= 64 {
                u64::MAX
            } else {
                (1u64 << left) - 1
            };
            w.fetch_or(bits, Ordering::SeqCst);
        }
    }
    fn dirty_take(&self) -> Vec<u64> {
        self.dirty
            .iter()
            .map(|w| w.swap(0, Ordering::SeqCst))
            .collect()
    }
    fn dirty_count(&self) -> u64 {
        self.dirty
            .iter()
            .map(|w| w.load(Ordering::SeqCst).count_ones() as u64)
            .sum()
    }
}

/// A VM stand-in that records run-state changes and events.
pub struct TestHost {
    /// Guest RAM.
    pub ram: MemRam,
    /// vCPU count in the identity.
    pub vcpus: u32,
    /// Run state.
    pub runstate: Mutex<RunState>,
    /// Events emitted, in order.
    pub events: Mutex<Vec<(String, Option<Value>)>>,
    /// Whether `-S` was absent.
    pub autostart: AtomicBool,
    /// The device state this guest saves.
    pub device_state: Mutex<Value>,
    /// The device state loaded by an incoming migration.
    pub loaded_state: Mutex<Option<Value>>,
    /// The exit code requested via `exit_process`, if any.
    pub exit_code: Mutex<Option<i32>>,
    /// The migration object, for tests that want it.
    pub migration: Mutex<Option<Arc<Migration>>>,
    /// Held by a "vCPU" while it writes; `vm_stop` takes it to wait for
    /// in-flight writes, like pausing vCPUs does.
    vcpu_gate: Mutex<()>,
    /// auto-converge's throttle as the engine set it.
    throttle: std::sync::atomic::AtomicU8,
}

impl TestHost {
    /// A running guest with `pages` pages of RAM and its [`Migration`].
    pub fn new(pages: u64, runstate: RunState) -> (Arc<TestHost>, Arc<Migration>) {
        let host = Arc::new(TestHost {
            ram: MemRam::new(pages),
            vcpus: 1,
            runstate: Mutex::new(runstate),
            events: Mutex::new(Vec::new()),
            autostart: AtomicBool::new(true),
            device_state: Mutex::new(json!({"vcpus": [{"pc": 4096, "regs": [1, 2, 3]}]})),
            loaded_state: Mutex::new(None),
            exit_code: Mutex::new(None),
            migration: Mutex::new(None),
            vcpu_gate: Mutex::new(()),
            throttle: std::sync::atomic::AtomicU8::new(0),
        });
        let weak: Weak<dyn MigrationHost> =
            Arc::downgrade(&(host.clone() as Arc<dyn MigrationHost>));
        let m = Arc::new(Migration::new(weak));
        *super::lock(&host.migration) = Some(m.clone());
        (host, m)
    }

    /// Names of the events so far, with `MIGRATION` statuses inlined
    /// (`MIGRATION:active`) and `MIGRATION_PASS` left out.
    pub fn event_trace(&self) -> Vec<String> {
        super::lock(&self.events)
            .iter()
            .filter(|(n, _)| n != "MIGRATION_PASS")
            .map(|(n, d)| match (n.as_str(), d) {
                ("MIGRATION", Some(d)) => {
                    format!("MIGRATION:{}", d["status"].as_str().unwrap_or("?"))
                }
                _ => n.clone(),
            })
            .collect()
    }

    /// A guest write by a "vCPU": only while running, never concurrently
    /// with `vm_stop`. Returns whether it happened.
    pub fn guest_write(&self, addr: u64, bytes: &[u8]) -> bool {
        let _vcpu = super::lock(&self.vcpu_gate);
        if self.state() != RunState::Running {
            return false;
        }
        self.ram.write(addr, bytes);
        true
    }

    /// Sets the run state as `stop`/`cont` would (no events).
    pub fn set_runstate_for_test(&self, s: RunState) {
        let _vcpus = super::lock(&self.vcpu_gate);
        *super::lock(&self.runstate) = s;
    }

    /// auto-converge's throttle as the engine last set it.
    pub fn cpu_throttle_now(&self) -> u8 {
        self.throttle.load(Ordering::SeqCst)
    }

    /// The current run state.
    pub fn state(&self) -> RunState {
        *super::lock(&self.runstate)
    }
}

impl MigrationHost for TestHost {
    fn ram(&self) -> &dyn MigrationRam {
        &self.ram
    }
    fn identity(&self) -> GuestIdentity {
        GuestIdentity {
            vcpus: self.vcpus,
            image_id: 0x5eed,
        }
    }
    fn save_device_state(&self) -> Result<Value, String> {
        Ok(super::lock(&self.device_state).clone())
    }
    fn load_device_state(&self, state: Value) -> Result<(), String> {
        if state.get("vcpus").and_then(Value::as_array).is_none() {
            return Err("missing field `vcpus`".into());
        }
        *super::lock(&self.loaded_state) = Some(state);
        Ok(())
    }
    fn runstate(&self) -> RunState {
        self.state()
    }
    fn set_runstate(&self, s: RunState) {
        *super::lock(&self.runstate) = s;
    }
    fn vm_stop(&self, new_state: RunState) {
        let _vcpus_paused = super::lock(&self.vcpu_gate);
        let was = std::mem::replace(&mut *super::lock(&self.runstate), new_state);
        if was == RunState::Running {
            self.emit("STOP", None);
        }
    }
    fn vm_start(&self) {
        *super::lock(&self.runstate) = RunState::Running;
        self.emit("RESUME", None);
    }
    fn set_cpu_throttle(&self, pct: u8) {
        self.throttle.store(pct, Ordering::SeqCst);
    }
    fn cpu_throttle(&self) -> u8 {
        self.throttle.load(Ordering::SeqCst)
    }
    fn autostart(&self) -> bool {
        self.autostart.load(Ordering::SeqCst)
    }
    fn emit(&self, event: &str, data: Option<Value>) {
        super::lock(&self.events).push((event.to_string(), data));
    }
    fn exit_process(&self, code: i32) -> ! {
        *super::lock(&self.exit_code) = Some(code);
        // A test process cannot exit: park this thread for good instead.
        loop {
            std::thread::park();
        }
    }
}
