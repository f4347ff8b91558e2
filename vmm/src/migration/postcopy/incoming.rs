//! The destination's side of postcopy: arming the RAM's page gate with the
//! bitmap of pages still to come, running the guest from the device state,
//! and filling pages (only missing ones) as they arrive.

use super::super::host::{MigrationHost, PAGE_SIZE};
use super::super::stream::DeviceRecord;
use super::super::transport::Conn;
use super::super::{lock, Shared};
use super::RequestWriter;
use migtest_qmp::schema::{MigrationStatus, RunState};

/// Postcopy state of one incoming migration.
pub(crate) struct PostcopyDest<'a> {
    shared: &'a Shared,
    host: &'a dyn MigrationHost,
    /// The return path (taken when postcopy starts).
    conn: Option<Conn>,
    /// Whether the POSTCOPY record was accepted.
    pub active: bool,
}

impl<'a> PostcopyDest<'a> {
    /// Postcopy for an incoming migration whose return path is `conn`.
    pub fn new(shared: &'a Shared, host: &'a dyn MigrationHost, conn: Option<Conn>) -> Self {
        PostcopyDest {
            shared,
            host,
            conn,
            active: false,
        }
    }

    /// Postcopy resumed after a cut: already active, requests go out
    /// through the RAM's gate (already reconnected).
    pub fn resumed(shared: &'a Shared, host: &'a dyn MigrationHost) -> Self {
        PostcopyDest {
            shared,
            host,
            conn: None,
            active: true,
        }
    }

    /// The POSTCOPY record: postcopy-ram must be on here too (as QEMU);
    /// the pages of `bitmap` become missing.
    pub fn start(&mut self, bitmap: &[u64]) -> Result<(), String> {
        if !lock(&self.shared.caps).get("postcopy-ram") {
            return Err("the source started postcopy but the postcopy-ram capability is off on the destination".into());
        }
        let conn = self
            .conn
            .take()
            .ok_or_else(|| "no return path for page requests".to_string())?;
        self.host
            .ram()
            .postcopy_arm(bitmap, Box::new(RequestWriter::new(conn)))?;
        self.active = true;
        Ok(())
    }

    /// The device state after POSTCOPY: loaded, then the guest runs here at
    /// once (unless `-S`, or the source was not running), and the status
    /// becomes `postcopy-active`.
    pub fn run_guest(&mut self, json: &[u8]) -> Result<(), String> {
        let rec = DeviceRecord::decode(json)?;
        self.host
            .load_device_state(rec.devices)
            .map_err(|e| format!("invalid device state: {e}"))?;
        start_guest(self.host, rec.runstate);
        self.shared.transition(
            self.host,
            &self.shared.incoming,
            |i| &mut i.status,
            (MigrationStatus::Active, MigrationStatus::PostcopyActive),
            |i| i.postcopy = true,
        );
        Ok(())
    }

    /// A page in postcopy: written only if still missing.
    pub fn fill(&self, page: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), String> {
        self.host.ram().postcopy_fill(page, data)
    }
}

/// As QEMU after loading the global state: a source that was running lets
/// the guest start here (unless `-S`); otherwise its run state is taken over.
pub(crate) fn start_guest(host: &dyn MigrationHost, source_runstate: RunState) {
    if source_runstate == RunState::Running {
        if host.autostart() {
            host.vm_start();
        } else {
            host.set_runstate(RunState::Paused);
        }
    } else {
        host.set_runstate(source_runstate);
    }
}
