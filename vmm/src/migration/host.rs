//! What the migration code needs from the rest of the VMM.
//!
//! The engine is written against two small traits rather than the concrete
//! `Vm`/`GuestRam` types so that it can be unit-tested with an in-memory RAM
//! and a recording host, and so that the stream code does not depend on how
//! the guest is built. The VMM implements them for its real types (see
//! `vm_impl` in this module once the VM core is merged).

use migtest_qmp::schema::RunState;
use serde_json::Value;

pub use crate::guest::PageRequester;

/// Guest page size used by the stream (QEMU's `TARGET_PAGE_SIZE` on x86).
pub const PAGE_SIZE: usize = 4096;

/// Guest RAM as seen by migration: page reads and writes plus the dirty bitmap.
///
/// `dirty_take` returns the bitmap words (bit `i` of word `w` is page
/// `w * 64 + i`) and clears them atomically per word. The guest must mark a
/// page dirty *after* (or atomically with) writing it, so a write that races
/// with a send is either seen by the read or re-marked for the next pass.
pub trait MigrationRam: Send + Sync {
    /// RAM size in bytes (a multiple of [`PAGE_SIZE`]).
    fn size(&self) -> u64;
    /// Number of pages.
    fn page_count(&self) -> u64 {
        self.size() / PAGE_SIZE as u64
    }
    /// Copies page `page` into `buf`.
    fn read_page(&self, page: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), String>;
    /// Whether page `page` holds only zero bytes.
    fn page_is_zero(&self, page: u64) -> bool;
    /// Copies page `page` into `buf` and says whether any byte is non-zero
    /// (zero detection and copy in one pass where the RAM can).
    fn copy_page_nonzero(&self, page: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<bool, String> {
        self.read_page(page, buf)?;
        Ok(buf.iter().any(|b| *b != 0))
    }
    /// Overwrites page `page` (destination side).
    fn load_page(&self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), String>;
    /// Zero-fills page `page` (destination side).
    fn zero_page(&self, page: u64) -> Result<(), String>;
    /// Destination side: page `page` is zero but for the runs of `encoded`
    /// (an XBZRLE delta against an all-zero page).
    fn load_sparse(&self, page: u64, encoded: &[u8]) -> Result<(), String> {
        let data = crate::migration::xbzrle::decode_sparse(encoded).map_err(|e| e.reason)?;
        self.load_page(page, &data)
    }
    /// Source side: the non-zero words of page `page` (index in the page,
    /// value) into `out` when it has at most `out.len()`: `Some(n)`, 0 for a
    /// zero page; `None` for a page with more (sent whole). By default no
    /// page is sparse: `Some(0)` for a zero page, else `None`.
    fn sparse_words(&self, page: u64, _out: &mut [(u16, u64)]) -> Result<Option<usize>, String> {
        Ok(self.page_is_zero(page).then_some(0))
    }
    /// Source side: page `page` (in range) as 4096 bytes the kernel may
    /// write onto the channel straight from guest RAM (`writev`, never
    /// through a Rust reference: vCPUs may write the page meanwhile); `None`
    /// where the RAM cannot (then pages are copied into a batch first).
    fn send_source(&self, _page: u64) -> Option<*const u8> {
        None
    }
    /// Destination side: page `page` (in range), marked written, as 4096
    /// bytes the loader may read stream data straight into (with `readv`,
    /// never through a Rust reference while another thread may write it);
    /// `None` where the RAM cannot (then pages go through `load_page`).
    fn load_target(&self, _page: u64) -> Option<*mut u8> {
        None
    }
    /// Destination side: fault in pages `[first, first + count)` (in
    /// range) for writing, as 4 KiB pages, without changing them; best
    /// effort ([`super::prefault`]); by default nothing.
    fn prefault(&self, _first: u64, _count: u64) {}
    /// Destination side: fault in 4 KiB pages from now on, not huge pages
    /// ([`super::first_touch`]); best effort, by default nothing.
    fn small_pages(&self) {}
    /// Marks every page dirty (start of a migration).
    fn dirty_set_all(&self);
    /// How many pages are dirty in the live log, i.e. were written since the last take
    /// (only the planted bug `SkipLastDirtyPass` asks; 0 where RAM keeps no live log).
    fn dirty_pending(&self) -> u64 {
        0
    }
    /// Takes and clears the dirty bitmap, one word at a time.
    fn dirty_take(&self) -> Vec<u64>;
    /// Moves the dirty bits into `into` (OR-ed in, one word at a time,
    /// without allocating) and returns how many were not set there yet.
    fn dirty_take_into(&self, into: &mut [u64]) -> u64 {
        let mut newly = 0;
        for (dst, bits) in into.iter_mut().zip(self.dirty_take()) {
            newly += u64::from((bits & !*dst).count_ones());
            *dst |= bits;
        }
        newly
    }
    /// Number of pages currently marked dirty.
    fn dirty_count(&self) -> u64;
    /// Postcopy destination: the pages set in `missing` are not here yet;
    /// guest accesses to them block and ask `requester` (see
    /// `guest::PostcopyGate`).
    fn postcopy_arm(
        &self,
        _missing: &[u64],
        _requester: Box<dyn PageRequester>,
    ) -> Result<(), String> {
        Err("this RAM cannot run a guest in postcopy".to_string())
    }
    /// Postcopy destination: fills a page that is still missing (`None`:
    /// zero); an error if it is not missing.
    fn postcopy_fill(&self, page: u64, _data: Option<&[u8; PAGE_SIZE]>) -> Result<(), String> {
        Err(format!(
            "page {page}: this RAM cannot run a guest in postcopy"
        ))
    }
    /// Postcopy destination: the pages still missing (bit set = missing,
    /// words of 64 pages).
    fn postcopy_missing_bitmap(&self) -> Vec<u64> {
        Vec::new()
    }
    /// Postcopy recovery on the destination: page requests go to
    /// `requester`; pages asked for and not received are asked for again.
    fn postcopy_reconnect(&self, _requester: Box<dyn PageRequester>) {}
    /// Postcopy destination: every page is here; accesses stop blocking.
    fn postcopy_disarm(&self) {}
    /// Postcopy destination: pages still missing.
    fn postcopy_missing(&self) -> u64 {
        0
    }
    /// Postcopy destination: total time vCPUs blocked on missing pages, ms.
    fn postcopy_blocktime_ms(&self) -> u64 {
        0
    }
}

/// Identity of the guest image carried in the stream header; the destination
/// rejects a stream from a differently shaped guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestIdentity {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// A digest of the guest image/workload description, 0 if unknown.
    pub image_id: u64,
}

/// The VM as seen by migration: run state, events, process exit and device
/// state. Mirrors `migtest_vmm::vm::Vm`'s methods.
pub trait MigrationHost: Send + Sync {
    /// Guest RAM.
    fn ram(&self) -> &dyn MigrationRam;
    /// vCPU count and image identity for the stream header.
    fn identity(&self) -> GuestIdentity;
    /// Serializes the device state (`Guest::save_state`) as JSON.
    fn save_device_state(&self) -> Result<Value, String>;
    /// Validates and loads a device state (`Guest::load_state`).
    fn load_device_state(&self, state: Value) -> Result<(), String>;
    /// Current run state.
    fn runstate(&self) -> RunState;
    /// Sets the run state without touching the vCPUs.
    fn set_runstate(&self, s: RunState);
    /// Pauses the vCPUs if running, sets `new_state`, emits `STOP` if it was running.
    fn vm_stop(&self, new_state: RunState);
    /// Resumes the vCPUs, run state `running`, emits `RESUME`.
    fn vm_start(&self);
    /// auto-converge: every vCPU runs only `100 - pct` % of the time
    /// (QEMU's `cpu_throttle_set`); 0 lifts the throttle. A host without
    /// vCPUs (a stream-only destination) ignores it.
    fn set_cpu_throttle(&self, _pct: u8) {}
    /// The current throttle percentage, 0 when not throttling.
    fn cpu_throttle(&self) -> u8 {
        0
    }
    /// Whether the destination starts the guest after an incoming migration.
    fn autostart(&self) -> bool;
    /// Sends a QMP event to every negotiated client.
    fn emit(&self, event: &str, data: Option<Value>);
    /// Flushes events and stderr, then exits the process.
    fn exit_process(&self, code: i32) -> !;
}
