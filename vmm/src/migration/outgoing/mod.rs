//! The precopy source engine: one thread per outgoing migration.
//!
//! The decision points are small functions (`sync_dirty`, `send_batch`,
//! `decide_complete`, `complete`) so later test builds can wrap them with
//! `#[cfg(feature = "fault-injection")]` switches.

use super::faults::{self, Fault};
use super::host::{MigrationHost, MigrationRam, PAGE_SIZE};
use super::postcopy::recovery::ResumeSlot;
use super::stream::{
    os_error_text, DeviceRecord, Header, StreamWriter, MAX_BATCH_DATA_PAGES, MAX_BATCH_ENTRIES,
    ZERO_ENTRY,
};
use super::switchover::{self, Semaphore};
use super::transport::{self, Conn, MigrationUri};
use super::xbzrle::{Xbzrle, MAX_ENCODED};
use super::{lock, Shared};
use migtest_qmp::schema::{
    MigrationInfo, MigrationStats, MigrationStatus, RunState, XbzrleCacheStats,
};
use serde_json::json;
use std::io::{self, BufWriter};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod completion;
mod from_ram;
mod multifd;
mod pages;
mod passes;
mod postcopy;
mod recovery;
mod stale_fault;
mod throttle;
mod xbzrle;

use super::multifd::send::Sender as MultifdSender;
use pages::Batch;

/// QEMU's `BUFFER_DELAY`: the rate-limit and measurement window.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Full pages per PAGES record the single channel sends (256 KiB, a
/// quarter of the format's maximum: one `writev` per batch, and a copied
/// batch stays in cache between the copy and the socket write;
/// docs/performance.md has the before/after).
const BATCH_DATA_PAGES: usize = MAX_BATCH_DATA_PAGES as usize / 4;
/// Entries (zero or full pages) per PAGES record.
const BATCH_ENTRIES: usize = MAX_BATCH_ENTRIES as usize;
/// Stream buffer for the small records; batches bigger than it bypass it.
const WRITE_BUFFER: usize = 64 * 1024;
/// How long the source waits, after the end record, for the destination
/// to close the channel (its guest is ready); `downtime` ends there.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// `xbzrle-cache`, when the migration started with `xbzrle`.
    pub xbzrle: Option<XbzrleCacheStats>,
}

/// One outgoing migration.
pub(crate) struct Outgoing {
    pub info: Mutex<OutInfo>,
    /// `pause-before-switchover`: posted by `migrate-continue` and cancel.
    pub pause_sem: Semaphore,
    /// A handle on the socket so cancel can shut it down.
    pub conn: Mutex<Option<Conn>>,
    /// Handles on the multifd page channels, for the same reason.
    pub channels: Mutex<Vec<Conn>>,
    /// Set by `migrate-start-postcopy` (QEMU's `start_postcopy`).
    pub start_postcopy: std::sync::atomic::AtomicBool,
    /// `migrate {resume: true}` hands the new channel over here.
    pub resume: ResumeSlot,
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
        throttle::on_status(host, to);
        shared.transition(
            host,
            &self.info,
            |i| &mut i.status,
            (from, to),
            |i| {
                if to.is_terminal() {
                    i.total_time = Some(ms(i.start.elapsed()));
                }
            },
        )
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
        // Unblock a thread stuck writing to a full socket, or waiting in
        // postcopy-paused for a resume.
        self.shutdown_all();
        self.resume.wake();
    }

    /// Shuts down the main channel and every multifd channel.
    pub fn shutdown_all(&self) {
        if let Some(c) = lock(&self.conn).as_ref() {
            c.shutdown();
        }
        for c in lock(&self.channels).iter() {
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
            S::Active
            | S::Cancelling
            | S::PreSwitchover
            | S::Device
            | S::PostcopyActive
            | S::PostcopyPaused
            | S::PostcopyRecover
            | S::Completed => {
                info.setup_time = Some(i.setup_time.unwrap_or(0));
                if i.status == S::Completed {
                    info.total_time = i.total_time;
                    info.downtime = i.downtime;
                } else {
                    info.total_time = Some(ms(i.start.elapsed()));
                    info.expected_downtime = Some(i.expected_downtime);
                }
                info.ram = Some(i.stats);
                info.xbzrle_cache = i.xbzrle;
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
            xbzrle: lock(&shared.caps).xbzrle().then(|| XbzrleCacheStats {
                cache_size: shared.params().xbzrle_cache_size,
                ..XbzrleCacheStats::default()
            }),
        }),
        pause_sem: Semaphore::new(),
        conn: Mutex::new(None),
        channels: Mutex::new(Vec::new()),
        start_postcopy: std::sync::atomic::AtomicBool::new(false),
        resume: ResumeSlot::default(),
    })
}

/// Starts an outgoing migration: status `setup` now, the rest in a thread.
pub(crate) fn start(
    shared: Arc<Shared>,
    host: Arc<dyn MigrationHost>,
    uri: MigrationUri,
    pre_opened: Option<Conn>,
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
        .spawn(move || {
            run(
                &shared,
                &o,
                host.as_ref(),
                (&uri, pre_opened),
                hold_at_start,
            )
        });
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
    /// The channel broke during postcopy: the guest stays stopped here
    /// (its newest state is on the destination), status `postcopy-paused`.
    PostcopyPaused(String),
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
    // Rate limit / measurement window, in charged bytes (`charged`).
    window_start: Instant,
    window_bytes_start: u64,
    window_wire_start: u64,
    /// What SPARSE records saved on the wire against full pages: counted
    /// back by [`Engine::charged`].
    sparse_credit: u64,
    /// Whether the last batch from guest RAM held SPARSE pages.
    sparse_sent: bool,
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
    /// Planted bug `StalePostcopyPage`.
    stale: stale_fault::StaleShadow,
    /// The multifd sender threads (pages go there instead of `w`).
    mfd: Option<MultifdSender>,
    /// auto-converge's trigger state.
    throttle: super::auto_converge::Trigger,
    /// XBZRLE (capability `xbzrle`): the page cache and its counters.
    xbz: Option<Xbzrle>,
}

fn run(
    shared: &Shared,
    out: &Outgoing,
    host: &dyn MigrationHost,
    uri: (&MigrationUri, Option<Conn>),
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
        Err(Abort::PostcopyPaused(msg)) => {
            // As QEMU: no restart of the source guest, whose memory is no
            // longer the newest; a `migrate_cancel` is what restarts it.
            lock(&out.info).error = Some(msg);
            let cur = out.status();
            if cur == MigrationStatus::PostcopyActive {
                out.set_status(shared, host, cur, MigrationStatus::PostcopyPaused);
            } else if cur == MigrationStatus::Cancelling {
                restore_vm();
                out.set_status(shared, host, cur, MigrationStatus::Cancelled);
            }
        }
        Err(Abort::Failed(msg)) if out.status() == MigrationStatus::PostcopyActive => {
            lock(&out.info).error = Some(msg);
            let cur = MigrationStatus::PostcopyActive;
            out.set_status(shared, host, cur, MigrationStatus::PostcopyPaused);
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
    out.shutdown_all();
    *lock(&out.conn) = None;
    lock(&out.channels).clear();
}

fn run_inner(
    shared: &Shared,
    out: &Outgoing,
    host: &dyn MigrationHost,
    (uri, pre_opened): (&MigrationUri, Option<Conn>),
    stopped: &mut (bool, bool),
    hold_at_start: bool,
) -> Result<(), Abort> {
    let mut conn = match pre_opened {
        Some(c) => c,
        None => transport::connect(uri).map_err(Abort::Failed)?,
    };
    let handle = conn.try_clone().map_err(write_err)?;
    *lock(&out.conn) = Some(handle);
    // As QEMU: the source's own capability and channel count decide.
    let chans = if lock(&shared.caps).multifd() {
        Some(multifd::connect_channels(
            out,
            &mut conn,
            uri,
            shared.params().multifd_channels,
        )?)
    } else {
        None
    };
    if out.status() != MigrationStatus::Setup {
        return Err(Abort::Cancelled);
    }
    let ram = host.ram();
    let id = host.identity();
    let page_count = ram.page_count();
    let words = page_count.div_ceil(64) as usize;
    let counts = |zero: u64, full: u64| {
        let mut i = lock(&out.info);
        i.stats.duplicate += zero;
        i.stats.normal += full;
        i.stats.normal_bytes += full * PAGE_SIZE as u64;
    };
    std::thread::scope(|s| {
        let mfd = match chans {
            Some(c) => Some(MultifdSender::spawn(s, c, ram, &counts).map_err(Abort::Failed)?),
            None => None,
        };
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
            window_wire_start: 0,
            sparse_credit: 0,
            sparse_sent: false,
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
            stale: Default::default(),
            mfd,
            throttle: Default::default(),
            xbz: lock(&shared.caps)
                .xbzrle()
                .then(|| Xbzrle::new(shared.params().xbzrle_cache_size, page_count)),
        };
        // Pages by reference on a unix socket (`stream::splice`); a TCP
        // peer acknowledges data before it reads it.
        if matches!(e.w.get_mut().get_ref(), Conn::Unix(_)) && e.send_from_ram() {
            e.w.splice_pages();
        }
        let r = e.migrate(Header::new(ram.size(), id.vcpus, id.image_id));
        if let (Err(_), Some(m)) = (&r, &e.mfd) {
            // The sender threads must not stay blocked on a socket: the
            // scope waits for them.
            m.shutdown();
        }
        *stopped = (e.stopped_vm, e.vm_was_running);
        r
    })
}
