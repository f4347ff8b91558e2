//! Live migration: QMP commands, the precopy source engine, the destination
//! loader, the stream format and the transports.
//!
//! One [`Migration`] exists per VMM process. Like QEMU's global
//! `MigrationState` it keeps parameters, capabilities and the state of the
//! last outgoing and the incoming migration across migrations. Each QMP
//! migration command has one entry point returning the command's `return`
//! value or an [`ErrorBody`].
//!
//! Submodules:
//! - [`stream`]: the versioned wire format (`docs/migration-stream.md`).
//! - [`params`]: parameters and capabilities with QEMU's texts.
//! - [`switchover`]: the switchover decision and the `switchover-hold` semaphore.
//! - [`transport`]: `unix:` / `tcp:` URIs; `channel`: `file:` / `fd:`.
//! - [`xbzrle`]: XBZRLE delta pages (codec, page cache, counters).
//! - [`multifd`]: the multifd channels (handshake, sender and receive threads).
//! - [`host`]: the traits the engine needs from the VM and the guest
//!   (implemented for `Vm`/`GuestRam` in `host_impl`).
//! - [`testing`]: an in-memory guest and recording host for tests.
//!
//! Lock order: outgoing slot, then `event_order`, then the per-migration
//! info / incoming state, then caps/params (held only briefly).

pub mod auto_converge;
mod channel;
pub mod faults;
mod first_touch;
pub mod host;
pub mod multifd;
pub mod params;
pub mod postcopy;
mod prefault;
pub mod stream;
pub mod switchover;
pub mod testing;
pub mod transport;
pub mod xbzrle;

mod incoming;
mod outgoing;

pub use host::{GuestIdentity, MigrationHost, MigrationRam, PAGE_SIZE};
pub use params::{Capabilities, Parameters, SetParameters};
pub use stream::{StreamError, StreamErrorKind};
pub use transport::MigrationUri;

pub(crate) use incoming::load_into_host;

use migtest_qmp::args::Args;
use migtest_qmp::schema::{MigrationInfo, MigrationStatus, RunState};
use migtest_qmp::ErrorBody;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use switchover::HoldSemaphore;

/// QEMU's `QERR_MIGRATION_ACTIVE`.
pub const MIGRATION_ACTIVE: &str = "There's a migration process in progress";

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by the QMP side and the migration threads.
pub(crate) struct Shared {
    pub(crate) params: Mutex<Parameters>,
    pub(crate) caps: Mutex<Capabilities>,
    /// Kicked when `switchover-hold` goes true→false; see [`switchover::HoldSemaphore`].
    pub(crate) hold_sem: HoldSemaphore,
    pub(crate) outgoing: Mutex<Option<Arc<outgoing::Outgoing>>>,
    pub(crate) incoming: Mutex<incoming::Incoming>,
    /// A handle on the incoming main channel while it loads
    /// (`migrate-pause` on the destination shuts it down).
    pub(crate) incoming_conn: Mutex<Option<transport::Conn>>,
    /// Serializes status changes with their events so events come out in order.
    pub(crate) event_order: Mutex<()>,
}

impl Shared {
    pub(crate) fn params(&self) -> Parameters {
        *lock(&self.params)
    }

    pub(crate) fn events_on(&self) -> bool {
        lock(&self.caps).events()
    }

    /// QEMU's `migrate_set_state` for either side: under `state`'s lock, if
    /// the status (`status_of`) is still `from` it becomes `to` and `then`
    /// runs on the state; on success the `MIGRATION` event goes out, in the
    /// same order as the changes.
    pub(crate) fn transition<T>(
        &self,
        host: &dyn MigrationHost,
        state: &Mutex<T>,
        status_of: fn(&mut T) -> &mut MigrationStatus,
        (from, to): (MigrationStatus, MigrationStatus),
        then: impl FnOnce(&mut T),
    ) -> bool {
        let _order = lock(&self.event_order);
        {
            let mut st = lock(state);
            let status = status_of(&mut st);
            if *status != from {
                return false;
            }
            *status = to;
            then(&mut st);
        }
        if self.events_on() {
            host.emit("MIGRATION", Some(json!({ "status": to.as_str() })));
        }
        true
    }

    /// [`Shared::transition`] of the incoming migration's status.
    pub(crate) fn set_incoming(
        &self,
        host: &dyn MigrationHost,
        from: MigrationStatus,
        to: MigrationStatus,
    ) -> bool {
        self.transition(host, &self.incoming, |i| &mut i.status, (from, to), |_| {})
    }
}

/// The migration subsystem of one VMM process.
pub struct Migration {
    host: Weak<dyn MigrationHost>,
    shared: Arc<Shared>,
}

impl Migration {
    /// A migration subsystem for `host` (typically built with
    /// `Arc::new_cyclic` by the VM that owns it).
    pub fn new(host: Weak<dyn MigrationHost>) -> Migration {
        Migration {
            host,
            shared: Arc::new(Shared {
                params: Mutex::new(Parameters::default()),
                caps: Mutex::new(Capabilities::default()),
                hold_sem: HoldSemaphore::new(),
                outgoing: Mutex::new(None),
                incoming: Mutex::new(incoming::Incoming::default()),
                incoming_conn: Mutex::new(None),
                event_order: Mutex::new(()),
            }),
        }
    }

    fn host(&self) -> Result<Arc<dyn MigrationHost>, ErrorBody> {
        self.host
            .upgrade()
            .ok_or_else(|| ErrorBody::generic("The VM is shutting down"))
    }

    /// Current parameters.
    pub fn parameters(&self) -> Parameters {
        self.shared.params()
    }

    /// Current capabilities.
    pub fn capabilities(&self) -> Capabilities {
        *lock(&self.shared.caps)
    }

    /// Status of the current (or last) outgoing migration.
    pub fn outgoing_status(&self) -> MigrationStatus {
        lock(&self.shared.outgoing)
            .as_ref()
            .map(|o| o.status())
            .unwrap_or(MigrationStatus::None)
    }

    /// Status of the incoming migration.
    pub fn incoming_status(&self) -> MigrationStatus {
        lock(&self.shared.incoming).status
    }

    /// `migrate {uri, detach?, resume?}`.
    pub fn migrate(&self, mut args: Args) -> Result<Value, ErrorBody> {
        let uri = args.str("uri")?;
        let _detach = args.opt_bool("detach")?;
        let resume = args.opt_bool("resume")?;
        args.finish()?;
        if resume == Some(true) {
            return self.migrate_resume(&uri);
        }
        let host = self.host()?;
        let mut slot = lock(&self.shared.outgoing);
        if let Some(o) = slot.as_ref() {
            if o.status().is_running() {
                return Err(ErrorBody::generic(MIGRATION_ACTIVE));
            }
        }
        match host.runstate() {
            RunState::Inmigrate => {
                return Err(ErrorBody::generic(
                    "Guest is waiting for an incoming migration",
                ))
            }
            RunState::Postmigrate => {
                return Err(ErrorBody::generic(
                    "Can't migrate the vm that was paused due to previous migration",
                ))
            }
            _ => {}
        }
        // `file:` and `fd:` channels are opened here, on the monitor's
        // thread, as QEMU opens them in qmp_migrate.
        let parsed = MigrationUri::parse(&uri).and_then(|u| {
            let pre = channel::open_now(&u, true).map_err(ErrorBody::generic)?;
            Ok((u, pre))
        });
        match parsed {
            Ok((uri, pre)) => {
                *slot = Some(outgoing::start(self.shared.clone(), host, uri, pre));
                Ok(json!({}))
            }
            Err(e) => {
                // As QEMU: the migration was initialised (`setup`) before
                // the URI was looked at, so it ends `failed`. Only address
                // and channel errors are kept as `error-desc`.
                let keep = e.desc != transport::UNKNOWN_PROTOCOL;
                let desc = keep.then(|| e.desc.clone());
                *slot = Some(outgoing::failed_at_start(&self.shared, host.as_ref(), desc));
                Err(e)
            }
        }
    }

    /// `migrate_cancel`: succeeds even when no migration runs.
    pub fn migrate_cancel(&self) -> Result<Value, ErrorBody> {
        let out = lock(&self.shared.outgoing).clone();
        if let (Some(out), Ok(host)) = (out, self.host()) {
            out.cancel(&self.shared, host.as_ref());
        }
        Ok(json!({}))
    }

    /// `migrate-continue {state}`: leaves `pre-switchover`.
    pub fn migrate_continue(&self, mut args: Args) -> Result<Value, ErrorBody> {
        let names: Vec<&str> = ALL_STATUS_NAMES.to_vec();
        let state = args.enumeration("state", &names)?;
        args.finish()?;
        let cur = self.outgoing_status();
        if cur.as_str() != state {
            return Err(ErrorBody::generic(format!(
                "Migration not in expected state: {}",
                cur.as_str()
            )));
        }
        if let Some(o) = lock(&self.shared.outgoing).as_ref() {
            o.pause_sem.post();
        }
        Ok(json!({}))
    }

    /// `migrate-start-postcopy` (QEMU's `qmp_migrate_start_postcopy`): sets
    /// the flag the migration thread looks at in each iteration, whether or
    /// not `switchover-hold` is set. Not an error once the migration is over
    /// (that would race with the command).
    pub fn migrate_start_postcopy(&self) -> Result<Value, ErrorBody> {
        if !lock(&self.shared.caps).get("postcopy-ram") {
            return Err(ErrorBody::generic(
                "Enable postcopy with migrate_set_capability before the start of migration",
            ));
        }
        let slot = lock(&self.shared.outgoing);
        match slot.as_ref() {
            Some(o) if o.status() != MigrationStatus::None => {
                o.start_postcopy
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(json!({}))
            }
            _ => Err(ErrorBody::generic(
                "Postcopy must be started after migration has been started",
            )),
        }
    }

    /// `migrate-set-parameters`: validates everything, then applies.
    pub fn set_parameters(&self, args: Args) -> Result<Value, ErrorBody> {
        let req = SetParameters::parse(args)?;
        let mut p = lock(&self.shared.params);
        let next = req.test_apply(&p)?;
        let old_hold = p.switchover_hold;
        *p = next;
        drop(p);
        // Kick a holding migration thread only on true→false; see HoldSemaphore.
        if old_hold && !next.switchover_hold {
            self.shared.hold_sem.post();
        }
        Ok(json!({}))
    }

    /// Pending posts on the `switchover-hold` semaphore (tests, diagnostics).
    #[doc(hidden)]
    pub fn hold_kicks_pending(&self) -> u64 {
        self.shared.hold_sem.count()
    }

    /// `query-migrate-parameters`.
    pub fn query_parameters(&self) -> Result<Value, ErrorBody> {
        Ok(self.shared.params().to_value())
    }

    /// `migrate-set-capabilities`.
    pub fn set_capabilities(&self, args: Args) -> Result<Value, ErrorBody> {
        // Lock order everywhere: outgoing slot, then event order, then caps
        // (migrate holds the slot while its first status event reads caps).
        let slot = lock(&self.shared.outgoing);
        let running = slot.as_ref().is_some_and(|o| o.status().is_running());
        let mut caps = lock(&self.shared.caps);
        let next = caps.test_apply(args)?;
        if running {
            return Err(ErrorBody::generic(MIGRATION_ACTIVE));
        }
        *caps = next;
        Ok(json!({}))
    }

    /// `query-migrate-capabilities`.
    pub fn query_capabilities(&self) -> Result<Value, ErrorBody> {
        Ok(lock(&self.shared.caps).to_value())
    }

    /// `query-migrate`: `{}` before any migration.
    pub fn query_migrate(&self) -> Result<Value, ErrorBody> {
        // Atomic with status changes and their MIGRATION events (as QEMU's BQL makes it on
        // the destination): a reply never shows a status whose event comes after it.
        let _order = lock(&self.shared.event_order);
        Ok(serde_json::to_value(self.info()).unwrap_or_else(|_| json!({})))
    }

    /// The typed `query-migrate` reply.
    ///
    /// A running incoming migration is reported first; once it is over, an
    /// outgoing migration started since (the VM migrating on) takes over.
    pub fn info(&self) -> MigrationInfo {
        let mut inc = lock(&self.shared.incoming).info();
        if let (Some(i), Ok(host)) = (inc.as_mut(), self.host()) {
            // As QEMU: the destination reports the vCPUs' postcopy
            // blocktime when the postcopy-blocktime capability is on.
            let pc = matches!(
                i.status,
                Some(MigrationStatus::PostcopyActive | MigrationStatus::PostcopyPaused)
            ) || lock(&self.shared.incoming).postcopy;
            if pc && lock(&self.shared.caps).get("postcopy-blocktime") {
                i.postcopy_blocktime = Some(host.ram().postcopy_blocktime_ms());
            }
        }
        let mut out = lock(&self.shared.outgoing).as_ref().map(|o| o.info());
        if let (Some(o), Ok(host)) = (out.as_mut(), self.host()) {
            // As QEMU's populate_ram_info: shown with the RAM figures
            // whenever the vCPUs are throttled.
            let pct = host.cpu_throttle();
            if o.ram.is_some() && pct > 0 {
                o.cpu_throttle_percentage = Some(u64::from(pct));
            }
        }
        match (inc, out) {
            (Some(i), Some(o)) if i.status.is_some_and(|s| s.is_terminal()) => o,
            (Some(i), _) => i,
            (None, Some(o)) => o,
            (None, None) => MigrationInfo::default(),
        }
    }

    /// `migrate-incoming {uri, exit-on-error?}`.
    pub fn migrate_incoming(&self, mut args: Args) -> Result<Value, ErrorBody> {
        let uri = args.str("uri")?;
        let exit_on_error = args.opt_bool("exit-on-error")?.unwrap_or(true);
        args.finish()?;
        let host = self.host()?;
        incoming::qmp_start(&self.shared, host, &uri, exit_on_error)?;
        Ok(json!({}))
    }

    /// `-incoming URI` or `-incoming defer` from the command line. Sets the
    /// run state `inmigrate`; with a URI starts listening at once. The error
    /// is the text to print before exiting 1.
    pub fn start_incoming_from_cmdline(&self, uri: &str) -> Result<(), String> {
        let host = self.host().map_err(|e| e.desc)?;
        incoming::cmdline_start(&self.shared, host, uri)
    }
}

/// Every `MigrationStatus` wire name (what `migrate-continue` accepts).
pub const ALL_STATUS_NAMES: [&str; 14] = [
    "none",
    "setup",
    "cancelling",
    "cancelled",
    "active",
    "postcopy-active",
    "postcopy-paused",
    "postcopy-recover",
    "completed",
    "failed",
    "colo",
    "pre-switchover",
    "device",
    "wait-unplug",
];
