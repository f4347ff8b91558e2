//! The guest side of the VMM: RAM with software dirty tracking, vCPU threads
//! running memory-dirtying workloads from a guest image, a serial port, and
//! pause/resume plus device-state save/restore for migration.
//!
//! [`Guest`] is the facade the QMP server and migration engine use.

pub mod abcheck;
pub mod backing;
pub mod dirty;
mod huge_pages;
pub mod image;
pub mod memory;
pub mod postcopy_gate;
mod prealloc;
pub mod serial;
pub mod throttle;
pub mod vcpu;
pub mod workload;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use abcheck::{
    check_ab_invariant, scan_ab_invariant, AbBadPage, AbScan, AbSummary, AbViolation,
};
pub use backing::RamBacking;
pub use dirty::DirtyBitmap;
pub use image::{GuestImage, GuestLayout, ImageError};
pub use memory::{GuestRam, GuestRamError, WriteObserver, PAGE_SIZE};
pub use postcopy_gate::{PageRequester, PostcopyGate};
pub use serial::{SerialConfig, SerialState};
pub use workload::{VcpuState, WorkloadState};

use serial::Serial;
use vcpu::{lock, Vcpus};
use workload::Workload;

/// Most vCPUs a guest may have.
pub const MAX_VCPUS: u32 = 64;
/// Version of the [`DeviceState`] format.
pub const DEVICE_STATE_VERSION: u32 = 1;
/// Largest serialized [`DeviceState`] accepted by [`DeviceState::from_json`].
pub const MAX_DEVICE_STATE_JSON: usize = 1 << 20;

/// Guest configuration, from the VMM command line.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// RAM size in bytes (`-m`), a non-zero multiple of [`PAGE_SIZE`].
    pub ram_size: u64,
    /// Number of vCPUs (`-smp`), 1..=[`MAX_VCPUS`].
    pub vcpus: u32,
    /// What the RAM is mapped from (`-machine memory-backend=ID`).
    pub backing: RamBacking,
    /// The guest image to run.
    pub image: GuestImage,
    /// Serial output (`-serial`).
    pub serial: SerialConfig,
}

/// Errors from the guest facade.
#[derive(Debug, Error)]
pub enum GuestError {
    /// The configuration is invalid.
    #[error("invalid guest configuration: {0}")]
    Config(String),
    /// The image does not fit the configuration.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Guest RAM could not be created.
    #[error(transparent)]
    Ram(#[from] GuestRamError),
    /// The serial output could not be opened.
    #[error("cannot open serial output {target}: {source}")]
    Serial {
        /// The configured target.
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A vCPU thread could not be created.
    #[error("cannot start vCPU thread: {0}")]
    Thread(std::io::Error),
    /// The operation needs the vCPUs paused.
    #[error("guest must be paused to {0}")]
    NotPaused(&'static str),
    /// Incoming device state is malformed or belongs to a different guest.
    #[error("device state rejected: {0}")]
    BadState(String),
}

/// The guest's migratable device state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    /// Format version, [`DEVICE_STATE_VERSION`].
    pub version: u32,
    /// Image name; must match the destination's image.
    pub image: String,
    /// RAM size; must match.
    pub ram_size: u64,
    /// vCPU count; must match.
    pub vcpu_count: u32,
    /// Serial port state.
    pub serial: SerialState,
    /// Per-vCPU workload state, index = vCPU number.
    pub vcpus: Vec<VcpuState>,
}

impl DeviceState {
    /// Serializes to JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, GuestError> {
        serde_json::to_vec(self).map_err(|e| GuestError::BadState(e.to_string()))
    }

    /// Parses JSON from an untrusted source. Input above
    /// [`MAX_DEVICE_STATE_JSON`] bytes is refused; parsing never panics and
    /// allocates at most in proportion to the input.
    pub fn from_json(bytes: &[u8]) -> Result<DeviceState, GuestError> {
        if bytes.len() > MAX_DEVICE_STATE_JSON {
            return Err(GuestError::BadState(format!(
                "{} bytes exceeds the limit of {MAX_DEVICE_STATE_JSON}",
                bytes.len()
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| GuestError::BadState(e.to_string()))
    }
}

/// A running (or paused) guest.
#[derive(Debug)]
pub struct Guest {
    config: GuestConfig,
    ram: Arc<GuestRam>,
    serial: Arc<Serial>,
    vcpus: Vcpus,
    /// Serializes pause/resume/save/load against each other.
    ops: Mutex<()>,
}

impl Guest {
    /// Creates the guest: maps RAM, opens the serial port and spawns parked
    /// vCPU threads. Workloads start on the first [`resume`](Self::resume).
    pub fn new(config: GuestConfig) -> Result<Guest, GuestError> {
        Self::build(config, None)
    }

    /// Like [`new`](Self::new), with a [`WriteObserver`] told about every
    /// guest write (for tests that keep a write log).
    pub fn with_write_observer(
        config: GuestConfig,
        observer: Arc<dyn WriteObserver>,
    ) -> Result<Guest, GuestError> {
        Self::build(config, Some(observer))
    }

    fn build(
        config: GuestConfig,
        observer: Option<Arc<dyn WriteObserver>>,
    ) -> Result<Guest, GuestError> {
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(GuestError::Config(format!(
                "{} vCPUs requested, supported 1..={MAX_VCPUS}",
                config.vcpus
            )));
        }
        let layout = config.image.layout(config.ram_size, config.vcpus)?;
        let ram = Arc::new(GuestRam::with_backing(
            config.ram_size,
            &config.backing,
            observer,
        )?);
        let serial =
            Arc::new(
                Serial::open(&config.serial).map_err(|source| GuestError::Serial {
                    target: format!("{:?}", config.serial),
                    source,
                })?,
            );
        let workloads = layout
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, plan)| Workload::new(*plan, i == 0))
            .collect();
        let vcpus = Vcpus::spawn(Arc::clone(&ram), Arc::clone(&serial), workloads)
            .map_err(GuestError::Thread)?;
        Ok(Guest {
            config,
            ram,
            serial,
            vcpus,
            ops: Mutex::new(()),
        })
    }

    /// The configuration the guest was created with.
    pub fn config(&self) -> &GuestConfig {
        &self.config
    }

    /// Guest RAM (shared with the vCPU threads).
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// Starts or continues the vCPUs (QMP `cont`).
    pub fn resume(&self) {
        let _ops = lock(&self.ops);
        self.vcpus.control().resume();
    }

    /// Parks every vCPU; when this returns no more guest writes happen until
    /// [`resume`](Self::resume) (QMP `stop`).
    pub fn pause(&self) {
        let _ops = lock(&self.ops);
        self.vcpus.control().pause();
    }

    /// Whether the vCPUs are running.
    pub fn is_running(&self) -> bool {
        self.vcpus.control().is_running()
    }

    /// auto-converge: throttles every vCPU to `100 - pct` % (0 = off).
    pub fn set_cpu_throttle(&self, pct: u8) {
        self.vcpus.control().set_throttle(pct);
    }

    /// The vCPU throttle percentage, 0 when off.
    pub fn cpu_throttle(&self) -> u8 {
        self.vcpus.control().throttle()
    }

    /// The reason each vCPU's workload halted, if it did (index = vCPU).
    pub fn halted(&self) -> Result<Vec<Option<String>>, GuestError> {
        let _ops = lock(&self.ops);
        if self.is_running() {
            return Err(GuestError::NotPaused("inspect workloads"));
        }
        Ok(self
            .vcpus
            .workloads()
            .iter()
            .map(|w| lock(w).halted().map(str::to_string))
            .collect())
    }

    /// Captures the device state; the guest must be paused.
    pub fn save_state(&self) -> Result<DeviceState, GuestError> {
        let _ops = lock(&self.ops);
        if self.is_running() {
            return Err(GuestError::NotPaused("save device state"));
        }
        Ok(DeviceState {
            version: DEVICE_STATE_VERSION,
            image: self.config.image.name.clone(),
            ram_size: self.config.ram_size,
            vcpu_count: self.config.vcpus,
            serial: self.serial.state(),
            vcpus: self
                .vcpus
                .workloads()
                .iter()
                .map(|w| lock(w).state().clone())
                .collect(),
        })
    }

    /// Restores device state received from a migration source; the guest
    /// must be paused. Everything is validated before anything changes.
    pub fn load_state(&self, state: DeviceState) -> Result<(), GuestError> {
        let _ops = lock(&self.ops);
        if self.is_running() {
            return Err(GuestError::NotPaused("load device state"));
        }
        let bad = |m: String| Err(GuestError::BadState(m));
        if state.version != DEVICE_STATE_VERSION {
            return bad(format!(
                "version {} is not the supported {DEVICE_STATE_VERSION}",
                state.version
            ));
        }
        if state.image != self.config.image.name {
            return bad(format!(
                "image `{}` does not match this guest's `{}`",
                state.image, self.config.image.name
            ));
        }
        if state.ram_size != self.config.ram_size {
            return bad(format!(
                "RAM size {} does not match this guest's {}",
                state.ram_size, self.config.ram_size
            ));
        }
        if state.vcpu_count != self.config.vcpus || state.vcpus.len() != self.config.vcpus as usize
        {
            return bad(format!(
                "{} vCPUs ({} states) do not match this guest's {}",
                state.vcpu_count,
                state.vcpus.len(),
                self.config.vcpus
            ));
        }
        let workloads = self.vcpus.workloads();
        let mut guards: Vec<_> = workloads.iter().map(|w| lock(w)).collect();
        for (i, (guard, vcpu)) in guards.iter().zip(&state.vcpus).enumerate() {
            if let Err(m) = guard.validate(vcpu) {
                return bad(format!("vCPU {i}: {m}"));
            }
        }
        for (guard, vcpu) in guards.iter_mut().zip(state.vcpus) {
            guard.set_state(vcpu);
        }
        self.serial.set_state(state.serial);
        Ok(())
    }

    /// Stops and joins the vCPU threads.
    pub fn shutdown(self) {
        drop(self);
    }
}
