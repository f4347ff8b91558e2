//! vCPU threads and run control (pause / resume / shutdown).
//!
//! Each vCPU thread owns its [`Workload`] behind a mutex that it holds only
//! while running. Between steps it checks an atomic stop flag; on seeing it
//! the thread releases the workload, counts itself parked and waits on a
//! condvar. [`RunControl::pause`] returns once every vCPU is parked (or has
//! exited), so no guest write happens after it returns and the workload
//! states can be read consistently. Sleeps inside workloads wait on the same
//! condvar, so a pause interrupts them at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::memory::GuestRam;
use super::serial::Serial;
use super::throttle::Throttle;
use super::workload::{Sleeper, StepCtx, Workload};

/// Locks a mutex, ignoring poisoning (a panicked vCPU must not take the
/// whole VMM down with it; the state it protects stays consistent because
/// workloads only update it between writes).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct Ctl {
    running: bool,
    shutdown: bool,
    parked: u32,
    exited: u32,
}

/// Shared run state of all vCPUs.
#[derive(Debug)]
pub struct RunControl {
    /// Set while vCPUs must not run (paused or shutting down).
    stop: AtomicBool,
    ctl: Mutex<Ctl>,
    cv: Condvar,
    vcpus: u32,
    /// auto-converge's throttle (`guest::throttle`).
    throttle: Throttle,
}

impl RunControl {
    fn new(vcpus: u32) -> RunControl {
        RunControl {
            stop: AtomicBool::new(true),
            ctl: Mutex::new(Ctl::default()),
            cv: Condvar::new(),
            vcpus,
            throttle: Throttle::default(),
        }
    }

    /// Whether the vCPUs should stop at the next safe point.
    #[inline]
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Lets vCPUs run (no effect after shutdown).
    pub fn resume(&self) {
        let mut c = lock(&self.ctl);
        if c.shutdown {
            return;
        }
        c.running = true;
        self.stop.store(false, Ordering::SeqCst);
        self.cv.notify_all();
    }

    /// Stops vCPUs and waits until every one is parked or gone.
    pub fn pause(&self) {
        let mut c = lock(&self.ctl);
        c.running = false;
        self.stop.store(true, Ordering::SeqCst);
        self.cv.notify_all();
        // `!c.running`: a concurrent resume() supersedes this pause.
        while c.parked + c.exited < self.vcpus && !c.running {
            c = self.cv.wait(c).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sets auto-converge's throttle (0 lifts it and ends the sleeps at once).
    pub fn set_throttle(&self, pct: u8) {
        self.throttle.set(pct);
        let _c = lock(&self.ctl);
        self.cv.notify_all();
    }

    /// The throttle percentage, 0 when off.
    pub fn throttle(&self) -> u8 {
        self.throttle.get()
    }

    /// A throttled vCPU's sleep: until `d` passed, the vCPUs are paused or
    /// shut down, or the throttle is lifted.
    fn throttle_sleep(&self, d: Duration) {
        let deadline = Instant::now() + d;
        let mut c = lock(&self.ctl);
        while c.running && !c.shutdown && self.throttle.get() > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            c = self
                .cv
                .wait_timeout(c, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether vCPUs are (supposed to be) running.
    pub fn is_running(&self) -> bool {
        lock(&self.ctl).running
    }

    fn shutdown(&self) {
        let mut c = lock(&self.ctl);
        c.shutdown = true;
        c.running = false;
        self.stop.store(true, Ordering::SeqCst);
        self.cv.notify_all();
    }

    /// Parks the calling vCPU until it may run; `false` on shutdown.
    fn park(&self) -> bool {
        let mut c = lock(&self.ctl);
        c.parked += 1;
        self.cv.notify_all();
        while !c.running && !c.shutdown {
            c = self.cv.wait(c).unwrap_or_else(|e| e.into_inner());
        }
        c.parked -= 1;
        !c.shutdown
    }

    fn exited(&self) {
        let mut c = lock(&self.ctl);
        c.exited += 1;
        self.cv.notify_all();
    }
}

impl Sleeper for RunControl {
    fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut c = lock(&self.ctl);
        loop {
            if !c.running || c.shutdown {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            c = self
                .cv
                .wait_timeout(c, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn idle(&self) {
        let mut c = lock(&self.ctl);
        while c.running && !c.shutdown {
            c = self.cv.wait(c).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Counts the thread as exited however it leaves (including by panic).
struct ExitGuard<'a>(&'a RunControl);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.exited();
    }
}

/// The vCPU threads of a guest.
#[derive(Debug)]
pub struct Vcpus {
    control: Arc<RunControl>,
    workloads: Vec<Arc<Mutex<Workload>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Vcpus {
    /// Spawns one parked thread (`vcpu0`, `vcpu1`, ...) per workload.
    pub fn spawn(
        ram: Arc<GuestRam>,
        serial: Arc<Serial>,
        workloads: Vec<Workload>,
    ) -> std::io::Result<Vcpus> {
        let n = u32::try_from(workloads.len()).unwrap_or(u32::MAX);
        let control = Arc::new(RunControl::new(n));
        let workloads: Vec<_> = workloads
            .into_iter()
            .map(|w| Arc::new(Mutex::new(w)))
            .collect();
        let mut vcpus = Vcpus {
            control: Arc::clone(&control),
            workloads: workloads.clone(),
            threads: Vec::new(),
        };
        for (index, slot) in workloads.into_iter().enumerate() {
            let thread_control = Arc::clone(&control);
            let ram = Arc::clone(&ram);
            let serial = Arc::clone(&serial);
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || run_vcpu(&thread_control, &slot, &ram, &serial));
            match spawned {
                Ok(handle) => vcpus.threads.push(handle),
                Err(e) => {
                    // Threads never started count as exited so pause() cannot hang;
                    // dropping `vcpus` shuts down the ones that did start.
                    for _ in index..vcpus.workloads.len() {
                        control.exited();
                    }
                    return Err(e);
                }
            }
        }
        Ok(vcpus)
    }

    /// The run control shared with the threads.
    pub fn control(&self) -> &RunControl {
        &self.control
    }

    /// The workloads, one per vCPU. Lock only while paused: a running vCPU
    /// holds its lock.
    pub fn workloads(&self) -> &[Arc<Mutex<Workload>>] {
        &self.workloads
    }
}

impl Drop for Vcpus {
    fn drop(&mut self) {
        self.control.shutdown();
        for t in self.threads.drain(..) {
            // A panicked vCPU has already been counted as exited.
            let _ = t.join();
        }
    }
}

fn run_vcpu(control: &RunControl, slot: &Mutex<Workload>, ram: &GuestRam, serial: &Serial) {
    let _guard = ExitGuard(control);
    while control.park() {
        let mut workload = lock(slot);
        workload.on_resume();
        let ctx = StepCtx {
            ram,
            serial,
            console: workload.is_console(),
            sleeper: control,
        };
        let mut slice = Instant::now();
        while !control.should_stop() {
            workload.step(&ctx);
            if let Some(d) = control.throttle.owed(&mut slice) {
                control.throttle_sleep(d);
            }
        }
    }
}
