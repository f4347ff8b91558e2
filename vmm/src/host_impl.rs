//! The VMM's real types seen through the migration traits.

use crate::guest::{DeviceState, GuestConfig, GuestRam};
use crate::migration::host::{
    GuestIdentity, MigrationHost, MigrationRam, PageRequester, PAGE_SIZE,
};
use crate::vm::Vm;
use migtest_qmp::schema::RunState;
use serde_json::Value;

/// The stream identity of a guest built from `config`: its vCPU count and
/// the image's name and workload shape, hashed, so a stream from a
/// differently built guest is refused before any page is loaded.
pub(crate) fn guest_identity(config: &GuestConfig) -> GuestIdentity {
    let shape = format!(
        "{}|{:?}|{:?}",
        config.image.name, config.image.workload, config.image.secondary
    );
    GuestIdentity {
        vcpus: config.vcpus,
        image_id: xxhash_rust::xxh3::xxh3_64(shape.as_bytes()),
    }
}

impl MigrationRam for GuestRam {
    fn size(&self) -> u64 {
        GuestRam::size(self)
    }

    fn read_page(&self, page: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), String> {
        GuestRam::read_page(self, page, buf).map_err(|e| e.to_string())
    }

    fn page_is_zero(&self, page: u64) -> bool {
        GuestRam::page_is_zero(self, page)
    }

    fn copy_page_nonzero(&self, page: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<bool, String> {
        GuestRam::copy_page_nonzero(self, page, buf).map_err(|e| e.to_string())
    }

    fn load_page(&self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), String> {
        GuestRam::load_page(self, page, data).map_err(|e| e.to_string())
    }

    fn zero_page(&self, page: u64) -> Result<(), String> {
        GuestRam::zero_page(self, page).map_err(|e| e.to_string())
    }

    fn load_sparse(&self, page: u64, encoded: &[u8]) -> Result<(), String> {
        let mut runs = Vec::with_capacity(4);
        crate::migration::xbzrle::walk(encoded, |offset, bytes| runs.push((offset, bytes)))
            .map_err(|e| e.reason)?;
        GuestRam::load_runs(self, page, runs).map_err(|e| e.to_string())
    }

    fn sparse_words(&self, page: u64, out: &mut [(u16, u64)]) -> Result<Option<usize>, String> {
        GuestRam::page_sparse_words(self, page, out).map_err(|e| e.to_string())
    }

    fn send_source(&self, page: u64) -> Option<*const u8> {
        GuestRam::send_source(self, page).ok()
    }

    fn load_target(&self, page: u64) -> Option<*mut u8> {
        GuestRam::load_target(self, page).ok()
    }
    fn prefault(&self, first: u64, count: u64) {
        GuestRam::prefault(self, first, count)
    }
    fn small_pages(&self) {
        GuestRam::small_pages(self)
    }

    fn dirty_set_all(&self) {
        self.dirty().set_all();
    }

    fn dirty_pending(&self) -> u64 {
        self.dirty().count()
    }

    fn dirty_take(&self) -> Vec<u64> {
        self.dirty().take()
    }

    fn dirty_take_into(&self, into: &mut [u64]) -> u64 {
        self.dirty().take_into(into)
    }

    fn dirty_count(&self) -> u64 {
        self.dirty().count()
    }

    fn postcopy_arm(
        &self,
        missing: &[u64],
        requester: Box<dyn PageRequester>,
    ) -> Result<(), String> {
        self.postcopy_gate().arm(missing, requester);
        Ok(())
    }

    fn postcopy_fill(&self, page: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), String> {
        GuestRam::postcopy_fill(self, page, data)
    }

    fn postcopy_missing_bitmap(&self) -> Vec<u64> {
        self.postcopy_gate().missing_bitmap()
    }

    fn postcopy_reconnect(&self, requester: Box<dyn PageRequester>) {
        self.postcopy_gate().reconnect(requester);
    }

    fn postcopy_disarm(&self) {
        self.postcopy_gate().disarm();
    }

    fn postcopy_missing(&self) -> u64 {
        self.postcopy_gate().missing_count()
    }

    fn postcopy_blocktime_ms(&self) -> u64 {
        self.postcopy_gate().blocktime_ms()
    }
}

impl MigrationHost for Vm {
    fn ram(&self) -> &dyn MigrationRam {
        &**self.guest().ram()
    }

    fn identity(&self) -> GuestIdentity {
        guest_identity(self.guest().config())
    }

    fn save_device_state(&self) -> Result<Value, String> {
        let state = self.guest().save_state().map_err(|e| e.to_string())?;
        serde_json::to_value(state).map_err(|e| e.to_string())
    }

    fn load_device_state(&self, state: Value) -> Result<(), String> {
        let state: DeviceState =
            serde_json::from_value(state).map_err(|e| format!("device state: {e}"))?;
        self.guest().load_state(state).map_err(|e| e.to_string())
    }

    fn runstate(&self) -> RunState {
        Vm::runstate(self)
    }

    fn set_runstate(&self, s: RunState) {
        Vm::set_runstate(self, s)
    }

    fn vm_stop(&self, new_state: RunState) {
        Vm::vm_stop(self, new_state);
    }

    fn vm_start(&self) {
        Vm::vm_start(self)
    }

    fn set_cpu_throttle(&self, pct: u8) {
        self.guest().set_cpu_throttle(pct);
    }

    fn cpu_throttle(&self) -> u8 {
        self.guest().cpu_throttle()
    }

    fn autostart(&self) -> bool {
        Vm::autostart(self)
    }

    fn emit(&self, event: &str, data: Option<Value>) {
        Vm::emit(self, event, data)
    }

    fn exit_process(&self, code: i32) -> ! {
        Vm::exit_process(self, code)
    }
}
