//! The precopy source engine: one thread per outgoing migration.
//!
//! The decision points are small functions (`sync_dirty`, `send_batch`,
//! `decide_complete`, `complete`) so later test builds can wrap them with
//! `#[cfg(feature = "fault-injection")]` switches.

use super::faults::{self, Fault};
use super::host::{MigrationHost, MigrationRam, PAGE_SIZE};
use super::stream::{
    os_error_text, DeviceRecord, Header, StreamWriter, MAX_BATCH_DATA_PAGES, MAX_BATCH_ENTRIES,
    ZERO_ENTRY,
};
use super::switchover::{self, Semaphore};
use super::transport::{self, Conn, MigrationUri};
use super::{lock, Shared};
use migtest_qmp::schema::{MigrationInfo, MigrationStats, MigrationStatus, RunState};
use serde_json::json;
use std::io::{self, BufWriter};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// QEMU's `BUFFER_DELAY`: the rate-limit and measurement window.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Full pages per PAGES record (1 MiB: one `writev` per batch).
const BATCH_DATA_PAGES: usize = MAX_BATCH_DATA_PAGES as usize;
/// Entries (zero or full pages) per PAGES record.
const BATCH_ENTRIES: usize = MAX_BATCH_ENTRIES as usize;
/// Stream buffer for the small records; batches bigger than it bypass it.
const WRITE_BUFFER: usize = 64 * 1024;
/// How long the source waits, after the end record, for the destination
/// to close the channel (its guest is ready); `downtime` ends there.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The PAGES record being built: entries and the copied full pages.
struct Batch {
    entries: Vec<u64>,
    data: Vec<u8>,
    full: usize,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            entries: Vec::with_capacity(BATCH_ENTRIES),
            data: vec![0; BATCH_DATA_PAGES * PAGE_SIZE],
            full: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.full == BATCH_DATA_PAGES || self.entries.len() == BATCH_ENTRIES
    }

    /// Bytes the record will take on the wire.
    fn wire_len(&self) -> u64 {
        (5 + self.entries.len() * 9 + self.full * PAGE_SIZE) as u64
    }

    /// The slot the next full page is copied into.
    fn slot(&mut self) -> &mut [u8; PAGE_SIZE] {
        let s = self.full * PAGE_SIZE;
        (&mut self.data[s..s + PAGE_SIZE])
            .try_into()
            .expect("slot is one page")
    }
}

/// What `query-migrate` shows of an outgoing migration.
#[derive(Debug, Clone)]
pub(crate) struct OutInfo {
    pub status: MigrationStatus,
    pub error: Option<String>,
    pub start: Instant,
    pub setup_time: Option<u64>,
    pub total_time: Option<u64>,
    pub downtime: Option<u64>,
    pub expected_downtime: u64,
    pub stats: MigrationStats,
}

/// One outgoing migration.
pub(crate) struct Outgoing {
    pub info: Mutex<OutInfo>,
    /// `pause-before-switchover`: posted by `migrate-continue` and cancel.
    pub pause_sem: Semaphore,
    /// A handle on the socket so cancel can shut it down.
    pub conn: Mutex<Option<Conn>>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Outgoing {
    pub fn status(&self) -> MigrationStatus {
        lock(&self.info).status
    }

    /// QEMU's `migrate_set_state`: compare-and-set plus the event.
    pub fn set_status(
        &self,
        shared: &Shared,
        host: &dyn MigrationHost,
        from: MigrationStatus,
        to: MigrationStatus,
    ) -> bool {
        shared.transition(host, to, || {
            let mut i = lock(&self.info);
            if i.status != from {
                return false;
            }
            i.status = to;
            if to.is_terminal() {
                i.total_time = Some(ms(i.start.elapsed()));
            }
            true
        })
    }

    /// `migrate_cancel` (QEMU's `migrate_fd_cancel`).
    pub fn cancel(&self, shared: &Shared, host: &dyn MigrationHost) {
        loop {
            let old = self.status();
            if !old.is_running() || old == MigrationStatus::Cancelling {
                return;
            }
            if self.set_status(shared, host, old, MigrationStatus::Cancelling) {
                if old == MigrationStatus::PreSwitchover {
                    // Kick it out of the pause. Posting only after the state
                    // is `cancelling` makes the thread's pre-switchover →
                    // device step fail, so it cannot go on to complete.
                    self.pause_sem.post();
                }
                break;
            }
        }
        // Wake a holding thread now rather than after its 10 ms wait; if
        // nobody is holding, the post is a harmless stale count.
        if shared.params().switchover_hold {
            shared.hold_sem.post();
        }
        // Unblock a thread stuck writing to a full socket.
        if let Some(c) = lock(&self.conn).as_ref() {
            c.shutdown();
        }
    }

    pub fn info(&self) -> MigrationInfo {
        let i = lock(&self.info).clone();
        let mut info = MigrationInfo {
            status: Some(i.status),
            ..MigrationInfo::default()
        };
        use MigrationStatus as S;
        match i.status {
            S::Setup => {}
            S::Active | S::Cancelling | S::PreSwitchover | S::Device | S::Completed => {
                info.setup_time = Some(i.setup_time.unwrap_or(0));
                if i.status == S::Completed {
                    info.total_time = i.total_time;
                    info.downtime = i.downtime;
                } else {
                    info.total_time = Some(ms(i.start.elapsed()));
                    info.expected_downtime = Some(i.expected_downtime);
                }
                info.ram = Some(i.stats);
            }
            S::Failed => info.error_desc = i.error,
            _ => {}
        }
        info
    }
}

/// A migration that failed before its thread started (bad URI): `setup`
/// then `failed`, as QEMU's `qmp_migrate` does after `migrate_init`.
pub(crate) fn failed_at_start(
    shared: &Shared,
    host: &dyn MigrationHost,
    error: Option<String>,
) -> Arc<Outgoing> {
    let out = new_outgoing(shared, host);
    out.set_status(shared, host, MigrationStatus::None, MigrationStatus::Setup);
    lock(&out.info).error = error;
    out.set_status(
        shared,
        host,
        MigrationStatus::Setup,
        MigrationStatus::Failed,
    );
    out
}

fn new_outgoing(shared: &Shared, host: &dyn MigrationHost) -> Arc<Outgoing> {
    Arc::new(Outgoing {
        info: Mutex::new(OutInfo {
            status: MigrationStatus::None,
            error: None,
            start: Instant::now(),
            setup_time: None,
            total_time: None,
            downtime: None,
            // QEMU starts the estimate at the limit.
            expected_downtime: shared.params().downtime_limit,
            stats: MigrationStats {
                total: host.ram().size(),
                page_size: PAGE_SIZE as u64,
                ..MigrationStats::default()
            },
        }),
        pause_sem: Semaphore::new(),
        conn: Mutex::new(None),
    })
}

/// Starts an outgoing migration: status `setup` now, the rest in a thread.
pub(crate) fn start(
    shared: Arc<Shared>,
    host: Arc<dyn MigrationHost>,
    uri: MigrationUri,
) -> Arc<Outgoing> {
    let out = new_outgoing(&shared, host.as_ref());
    out.set_status(
        &shared,
        host.as_ref(),
        MigrationStatus::None,
        MigrationStatus::Setup,
    );
    let o = out.clone();
    // The hold as `migrate` found it (planted bugs only).
    let hold_at_start = shared.params().switchover_hold;
    let spawned = std::thread::Builder::new()
        .name("live_migration".into())
        .spawn(move || run(&shared, &o, host.as_ref(), &uri, hold_at_start));
    if let Err(e) = spawned {
        // Nothing started; report it like any other failure.
        let mut i = lock(&out.info);
        i.error = Some(format!("cannot start migration thread: {e}"));
        i.status = MigrationStatus::Failed;
    }
    out
}

/// Why the engine stopped before completing.
enum Abort {
    Cancelled,
    Failed(String),
}

fn write_err(e: io::Error) -> Abort {
    Abort::Failed(format!("Unable to write to socket: {}", os_error_text(&e)))
}

struct Engine<'a> {
    shared: &'a Shared,
    out: &'a Outgoing,
    host: &'a dyn MigrationHost,
    ram: &'a dyn MigrationRam,
    w: StreamWriter<BufWriter<Conn>>,
    batch: Batch,
    /// Pages still to send (the migration bitmap).
    bitmap: Vec<u64>,
    pending_pages: u64,
    scan_word: usize,
    page_count: u64,
    sync_count: u64,
    last_sync: Instant,
    dirty_period_pages: u64,
    // Rate limit / measurement window.
    window_start: Instant,
    window_bytes_start: u64,
    /// Token bucket for `max-bandwidth`: bytes written at `bucket_start`
    /// and the cap it was started for. Unlike fixed windows, a late wake-up
    /// from sleep does not lose the budget of the time overslept.
    bucket_start: Instant,
    bucket_bytes_start: u64,
    bucket_rate: u64,
    window_pages: u64,
    bandwidth: f64,
    threshold: u64,
    // VM state the migration changed.
    stopped_vm: bool,
    vm_was_running: bool,
    runstate_before_stop: RunState,
    stop_time: Option<Instant>,
    // Planted bugs (`faults`): the hold at `migrate` time, and whether the
    // hold was ever in force on this migration.
    hold_at_start: bool,
    has_held: bool,
    skipped_page: Option<u64>,
    /// `SkipOneDirtyPage`: a digest of what was last sent of each page.
    sent_digest: Vec<u64>,
}

fn run(
    shared: &Shared,
    out: &Outgoing,
    host: &dyn MigrationHost,
    uri: &MigrationUri,
    hold_at_start: bool,
) {
    let mut stopped = (false, false);
    let result = run_inner(shared, out, host, uri, &mut stopped, hold_at_start);
    let (stopped_vm, vm_was_running) = stopped;
    let restore_vm = || {
        if stopped_vm {
            if vm_was_running {
                host.vm_start();
            } else if host.runstate() == RunState::FinishMigrate {
                host.set_runstate(RunState::Postmigrate);
            }
        }
    };
    match result {
        Ok(()) => {}
        Err(_) if out.status() == MigrationStatus::Cancelling => {
            restore_vm();
            if faults::on(Fault::CancelLeavesGuestStopped)
                && shared.params().switchover_hold
                && !stopped_vm
            {
                host.vm_stop(RunState::Paused);
            }
            out.set_status(
                shared,
                host,
                MigrationStatus::Cancelling,
                MigrationStatus::Cancelled,
            );
        }
        Err(Abort::Cancelled) => {
            restore_vm();
            // A cancel that raced with the end of a phase.
            let cur = out.status();
            out.set_status(shared, host, cur, MigrationStatus::Cancelled);
        }
        Err(Abort::Failed(msg)) => {
            restore_vm();
            lock(&out.info).error = Some(msg);
            loop {
                let cur = out.status();
                if !cur.is_running() {
                    break;
                }
                if cur == MigrationStatus::Cancelling {
                    out.set_status(shared, host, cur, MigrationStatus::Cancelled);
                    break;
                }
                if out.set_status(shared, host, cur, MigrationStatus::Failed) {
                    break;
                }
            }
        }
    }
    if let Some(c) = lock(&out.conn).take() {
        c.shutdown();
    }
}

fn run_inner(
    shared: &Shared,
    out: &Outgoing,
    host: &dyn MigrationHost,
    uri: &MigrationUri,
    stopped: &mut (bool, bool),
    hold_at_start: bool,
) -> Result<(), Abort> {
    let conn = transport::connect(uri).map_err(Abort::Failed)?;
    let handle = conn.try_clone().map_err(write_err)?;
    *lock(&out.conn) = Some(handle);
    if out.status() != MigrationStatus::Setup {
        return Err(Abort::Cancelled);
    }
    let ram = host.ram();
    let id = host.identity();
    let page_count = ram.page_count();
    let words = page_count.div_ceil(64) as usize;
    let mut e = Engine {
        shared,
        out,
        host,
        ram,
        w: StreamWriter::new(BufWriter::with_capacity(WRITE_BUFFER, conn)),
        batch: Batch::new(),
        bitmap: vec![0; words],
        pending_pages: 0,
        scan_word: 0,
        page_count,
        sync_count: 0,
        last_sync: Instant::now(),
        dirty_period_pages: 0,
        window_start: Instant::now(),
        window_bytes_start: 0,
        bucket_start: Instant::now(),
        bucket_bytes_start: 0,
        bucket_rate: 0,
        window_pages: 0,
        bandwidth: 0.0,
        threshold: 0,
        stopped_vm: false,
        vm_was_running: false,
        runstate_before_stop: RunState::Running,
        stop_time: None,
        hold_at_start,
        has_held: hold_at_start,
        skipped_page: None,
        sent_digest: Vec::new(),
    };
    let r = e.migrate(Header::new(ram.size(), id.vcpus, id.image_id));
    *stopped = (e.stopped_vm, e.vm_was_running);
    r
}

impl Engine<'_> {
    fn cancelled(&self) -> bool {
        self.out.status() == MigrationStatus::Cancelling
    }

    fn migrate(&mut self, header: Header) -> Result<(), Abort> {
        self.w.header(&header).map_err(write_err)?;
        self.ram.dirty_set_all();
        // The first sync (pass 1) belongs to setup, as in QEMU's
        // ram_save_setup: MIGRATION_PASS 1 comes before MIGRATION active.
        self.sync_dirty()?;
        {
            let mut i = lock(&self.out.info);
            i.setup_time = Some(ms(i.start.elapsed()));
        }
        if !self.out.set_status(
            self.shared,
            self.host,
            MigrationStatus::Setup,
            MigrationStatus::Active,
        ) {
            return Err(Abort::Cancelled);
        }
        self.window_start = Instant::now();
        loop {
            if self.cancelled() {
                return Err(Abort::Cancelled);
            }
            // Planted bug: without a hold, no exact sync before the switchover decision.
            let skip_sync = faults::on(Fault::SkipLastDirtyPass)
                && self.sync_count > 0
                && !self.shared.params().switchover_hold;
            if self.pending_bytes() < self.threshold && !skip_sync {
                // Close to switchover: sync to know what really remains
                // (QEMU's ram_save_pending). With nothing measured yet the
                // threshold is 0 and an empty bitmap completes at once,
                // which is why a one-pass migration reports 2 syncs.
                self.sync_dirty()?;
            }
            if self.decide_complete() {
                return self.complete();
            }
            if self.pending_pages > 0 {
                self.send_batch()?;
            }
            // Like QEMU's per-iteration fflush: what was sent reaches the
            // destination now (a holding migration keeps it up to date) and
            // a dead destination is noticed.
            self.w.flush().map_err(write_err)?;
            self.update_window();
        }
    }

    fn pending_bytes(&self) -> u64 {
        self.pending_pages * PAGE_SIZE as u64
    }

    /// The switchover decision, with `switchover-hold`.
    fn decide_complete(&mut self) -> bool {
        let p = self.shared.params();
        let pending = self.pending_bytes();
        let mut hold = p.switchover_hold;
        if faults::on(Fault::HoldIgnoredAfterMigrate) && !self.hold_at_start {
            hold = false;
        }
        if faults::on(Fault::ReleaseNotSeen) && self.has_held {
            hold = true;
        }
        if hold {
            self.has_held = true;
        }
        switchover::should_complete(pending, self.threshold, hold, &self.shared.hold_sem)
    }

    /// Syncs the guest's dirty bitmap into the migration bitmap: one pass.
    fn sync_dirty(&mut self) -> Result<(), Abort> {
        let newly = self.ram.dirty_take_into(&mut self.bitmap);
        if let Some(last) = self.bitmap.last_mut() {
            // No page exists beyond the last one (a test RAM may set them).
            if !self.page_count.is_multiple_of(64) {
                *last &= (1u64 << (self.page_count % 64)) - 1;
            }
        }
        self.pending_pages = self.bitmap.iter().map(|w| u64::from(w.count_ones())).sum();
        self.sync_count += 1;
        // Dirty rate as QEMU computes it: pages newly dirtied over a period
        // of at least one second, updated at the sync that closes it.
        self.dirty_period_pages += newly;
        let secs = self.last_sync.elapsed().as_secs_f64();
        let rate = (secs >= 1.0).then(|| (self.dirty_period_pages as f64 / secs) as u64);
        if rate.is_some() {
            self.last_sync = Instant::now();
            self.dirty_period_pages = 0;
        }
        {
            let mut i = lock(&self.out.info);
            i.stats.dirty_sync_count = self.sync_count;
            i.stats.remaining = self.pending_bytes();
            if let Some(r) = rate {
                i.stats.dirty_pages_rate = r;
            }
        }
        if self.shared.events_on() {
            self.host
                .emit("MIGRATION_PASS", Some(json!({ "pass": self.sync_count })));
        }
        self.w.pass(self.sync_count).map_err(write_err)
    }

    /// Takes the next page from the migration bitmap.
    fn next_dirty(&mut self) -> Option<u64> {
        if self.pending_pages == 0 {
            return None;
        }
        let n = self.bitmap.len();
        for k in 0..n {
            let w = (self.scan_word + k) % n;
            let bits = self.bitmap[w];
            if bits != 0 {
                let b = bits.trailing_zeros() as u64;
                self.bitmap[w] &= !(1u64 << b);
                self.scan_word = w;
                self.pending_pages -= 1;
                return Some(w as u64 * 64 + b);
            }
        }
        self.pending_pages = 0;
        None
    }

    /// Adds `page` to the batch: a zero entry, or its copy in the next slot.
    fn add_page(&mut self, page: u64) -> Result<(), Abort> {
        let slot = self.batch.slot();
        let nonzero = self
            .ram
            .copy_page_nonzero(page, slot)
            .map_err(|m| Abort::Failed(format!("cannot read guest page {page}: {m}")))?;
        if faults::on(Fault::SkipOneDirtyPage) && self.skip_planted_page(page)? {
            return Ok(());
        }
        if nonzero {
            self.batch.entries.push(page);
            self.batch.full += 1;
        } else {
            self.batch.entries.push(page | ZERO_ENTRY);
        }
        Ok(())
    }

    /// Writes the batch as one PAGES record (one vectored write) and counts it.
    fn emit_batch(&mut self) -> Result<(), Abort> {
        if self.batch.entries.is_empty() {
            return Ok(());
        }
        let full = self.batch.full;
        let zero = self.batch.entries.len() - full;
        self.w
            .pages(&self.batch.entries, &self.batch.data[..full * PAGE_SIZE])
            .map_err(write_err)?;
        self.window_pages += self.batch.entries.len() as u64;
        self.batch.entries.clear();
        self.batch.full = 0;
        let mut i = lock(&self.out.info);
        i.stats.duplicate += zero as u64;
        i.stats.normal += full as u64;
        i.stats.normal_bytes += (full * PAGE_SIZE) as u64;
        Ok(())
    }

    /// Planted bug `SkipOneDirtyPage`: in the stop-and-copy pass (guest stopped), drops the
    /// first page whose destination copy is stale, so the loss always shows. The page has
    /// just been copied into the batch's next slot.
    fn skip_planted_page(&mut self, page: u64) -> Result<bool, Abort> {
        let digest = page_digest(self.batch.slot());
        if self.stopped_vm && self.skipped_page.is_none() && self.sent_digest(page) != digest {
            self.skipped_page = Some(page);
            return Ok(true);
        }
        self.sent_digest(page);
        self.sent_digest[page as usize] = digest;
        Ok(false)
    }

    /// `SkipOneDirtyPage`: the digest of what the destination holds of `page`.
    fn sent_digest(&mut self, page: u64) -> u64 {
        if self.sent_digest.is_empty() {
            // A page never sent is zero on the destination.
            let zero = page_digest(&[0u8; PAGE_SIZE]);
            self.sent_digest = vec![zero; self.page_count as usize];
        }
        self.sent_digest[page as usize]
    }

    /// Bytes that may be written now under `max-bandwidth` (None =
    /// unlimited): a token bucket filling at the cap, holding at most one
    /// [`WINDOW`]'s worth (QEMU's per-window budget) so an idle spell does
    /// not turn into a burst.
    fn budget(&mut self) -> Option<u64> {
        let bw = self.shared.params().max_bandwidth;
        if bw == 0 {
            return None;
        }
        let written = self.w.written();
        let burst = (bw / 10).max(PAGE_SIZE as u64);
        if bw != self.bucket_rate {
            self.bucket_rate = bw;
            self.bucket_start = Instant::now();
            self.bucket_bytes_start = written;
        }
        let earned = (self.bucket_start.elapsed().as_secs_f64() * bw as f64) as u64;
        let spent = written - self.bucket_bytes_start;
        let credit = (earned + burst).saturating_sub(spent);
        if credit > burst {
            // Forget credit beyond one burst: restart the bucket full.
            self.bucket_start = Instant::now();
            self.bucket_bytes_start = written;
            return Some(burst);
        }
        Some(credit)
    }

    /// Sends one batch (up to 1 MiB of pages) within the rate limit; when
    /// the budget is spent, flushes and sleeps until a page's worth is earned.
    fn send_batch(&mut self) -> Result<(), Abort> {
        let budget = self.budget();
        if let Some(credit) = budget {
            if credit < PAGE_SIZE as u64 + 16 {
                self.w.flush().map_err(write_err)?;
                let need = (PAGE_SIZE as u64 + 16 - credit) as f64;
                let wait = Duration::from_secs_f64(need / self.bucket_rate.max(1) as f64);
                std::thread::sleep(
                    wait.clamp(Duration::from_micros(200), Duration::from_millis(10)),
                );
                return Ok(());
            }
        }
        while !self.batch.is_full() {
            if budget.is_some_and(|c| self.batch.wire_len() + PAGE_SIZE as u64 + 9 > c) {
                break;
            }
            let Some(page) = self.next_dirty() else { break };
            self.add_page(page)?;
        }
        self.emit_batch()?;
        let mut i = lock(&self.out.info);
        i.stats.transferred = self.w.written();
        i.stats.precopy_bytes = self.w.written();
        i.stats.remaining = self.pending_bytes();
        Ok(())
    }

    /// QEMU's `migration_update_counters`, once per window.
    fn update_window(&mut self) {
        let el = self.window_start.elapsed();
        if el < WINDOW {
            return;
        }
        let el_ms = el.as_secs_f64() * 1000.0;
        let bytes = self.w.written() - self.window_bytes_start;
        if bytes > 0 {
            self.bandwidth = bytes as f64 / el_ms;
        }
        let p = self.shared.params();
        self.threshold = switchover::threshold(
            self.bandwidth,
            p.downtime_limit,
            p.avail_switchover_bandwidth,
        );
        {
            let mut i = lock(&self.out.info);
            i.stats.mbps = bytes as f64 * 8.0 / el_ms / 1000.0;
            i.stats.pages_per_second = (self.window_pages as f64 * 1000.0 / el_ms) as u64;
            i.expected_downtime = if self.bandwidth > 0.0 {
                (self.pending_bytes() as f64 / self.bandwidth) as u64
            } else {
                0
            };
            i.stats.transferred = self.w.written();
            i.stats.remaining = self.pending_bytes();
        }
        self.window_start = Instant::now();
        self.window_bytes_start = self.w.written();
        self.window_pages = 0;
    }

    /// Stops the guest and sends everything that remains.
    fn complete(&mut self) -> Result<(), Abort> {
        // QEMU's global_state_store(): the destination restores this.
        self.runstate_before_stop = self.host.runstate();
        self.vm_was_running = self.runstate_before_stop == RunState::Running;
        self.stopped_vm = true;
        self.host.vm_stop(RunState::FinishMigrate);
        self.stop_time = Some(Instant::now());
        let precopy = self.w.written();
        if self.cancelled() {
            return Err(Abort::Cancelled);
        }
        let mut state = MigrationStatus::Active;
        if lock(&self.shared.caps).pause_before_switchover() {
            if !self.out.set_status(
                self.shared,
                self.host,
                MigrationStatus::Active,
                MigrationStatus::PreSwitchover,
            ) {
                return Err(Abort::Cancelled);
            }
            self.w.flush().map_err(write_err)?;
            self.out.pause_sem.wait();
            if !self.out.set_status(
                self.shared,
                self.host,
                MigrationStatus::PreSwitchover,
                MigrationStatus::Device,
            ) {
                return Err(Abort::Cancelled);
            }
            state = MigrationStatus::Device;
        }
        self.final_pass()?;
        let dev = self
            .host
            .save_device_state()
            .map_err(|m| Abort::Failed(format!("cannot save device state: {m}")))?;
        let bytes = DeviceRecord {
            runstate: self.runstate_before_stop,
            devices: dev,
        }
        .encode()
        .map_err(|e| Abort::Failed(format!("cannot encode device state: {e}")))?;
        self.w.device_state(&bytes).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidInput {
                Abort::Failed(e.to_string())
            } else {
                write_err(e)
            }
        })?;
        self.w.end().map_err(write_err)?;
        let conn = self.w.get_mut().get_mut();
        conn.shutdown_write();
        // As QEMU, `downtime` runs from the stop until the destination is
        // ready: it closes the channel once it has loaded the device state
        // and started (or paused) the guest.
        conn.wait_peer_close(READY_TIMEOUT);
        let downtime = self.stop_time.map(|t| ms(t.elapsed())).unwrap_or(0);
        {
            let mut i = lock(&self.out.info);
            i.downtime = Some(downtime);
            i.stats.transferred = self.w.written();
            i.stats.precopy_bytes = precopy;
            i.stats.downtime_bytes = self.w.written() - precopy;
            i.stats.remaining = 0;
            // As QEMU at completion: throughput over the whole transfer.
            let transfer_ms =
                i.start.elapsed().as_secs_f64() * 1000.0 - i.setup_time.unwrap_or(0) as f64;
            if transfer_ms > 0.0 {
                i.stats.mbps = self.w.written() as f64 * 8.0 / transfer_ms / 1000.0;
            }
        }
        if !self
            .out
            .set_status(self.shared, self.host, state, MigrationStatus::Completed)
        {
            return Err(Abort::Cancelled);
        }
        self.host.set_runstate(RunState::Postmigrate);
        Ok(())
    }

    /// The last sync and all remaining pages, without rate limit: only
    /// what is dirty is sent.
    fn final_pass(&mut self) -> Result<(), Abort> {
        if !faults::on(Fault::SkipLastDirtyPass) {
            self.sync_dirty()?;
        }
        while self.pending_pages > 0 {
            if self.cancelled() {
                return Err(Abort::Cancelled);
            }
            while !self.batch.is_full() {
                let Some(page) = self.next_dirty() else { break };
                self.add_page(page)?;
            }
            self.emit_batch()?;
        }
        Ok(())
    }
}

/// FNV-1a of a page (planted bug `SkipOneDirtyPage` only).
fn page_digest(page: &[u8; PAGE_SIZE]) -> u64 {
    page.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100_0000_01b3)
    })
}
