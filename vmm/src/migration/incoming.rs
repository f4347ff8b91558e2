//! The destination: listening, loading and validating the stream.

use super::first_touch::FirstTouch;
use super::host::{MigrationHost, MigrationRam, PAGE_SIZE};
use super::multifd;
use super::postcopy::incoming::{start_guest, PostcopyDest};
use super::prefault::Prefault;
use super::stream::{
    self, DeviceRecord, DirectPages, Expect, FdInput, StreamError, StreamInput, StreamSink,
};
use super::transport::{Conn, Listener, MigrationUri};
use super::{lock, Shared};
use migtest_qmp::schema::{MigrationInfo, MigrationStatus, RunState, SocketAddress};
use migtest_qmp::ErrorBody;
use std::sync::Arc;

/// How `-incoming` was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Mode {
    /// No `-incoming`.
    #[default]
    None,
    /// `-incoming defer`, waiting for `migrate-incoming`.
    Deferred,
    /// Listening or done.
    Started,
}

/// The incoming migration state (QEMU's `MigrationIncomingState`).
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub mode: Mode,
    pub status: MigrationStatus,
    pub error: Option<String>,
    pub socket_address: Option<Vec<SocketAddress>>,
    /// Whether this migration switched to postcopy.
    pub postcopy: bool,
    /// `migrate-recover` is listening (QEMU 7.2's `postcopy_recover_triggered`).
    pub recover_triggered: bool,
    /// `exit-on-error` of `migrate-incoming` (kept for a recovery).
    pub exit_on_error: bool,
}

impl Default for Incoming {
    fn default() -> Incoming {
        Incoming {
            mode: Mode::None,
            status: MigrationStatus::None,
            error: None,
            socket_address: None,
            postcopy: false,
            recover_triggered: false,
            exit_on_error: true,
        }
    }
}

impl Incoming {
    /// The destination's `query-migrate` reply, if an incoming migration exists.
    pub fn info(&self) -> Option<MigrationInfo> {
        if self.status == MigrationStatus::None {
            return None;
        }
        // QEMU 7.2 reports only the status once done (the listening
        // address is dropped with the incoming state); migtest-vmm adds
        // `error-desc` on failure, as newer QEMU does with exit-on-error off.
        let done = self.status.is_terminal();
        Some(MigrationInfo {
            status: Some(self.status),
            error_desc: if self.status == MigrationStatus::Failed {
                self.error.clone()
            } else {
                None
            },
            socket_address: if done {
                None
            } else {
                self.socket_address.clone()
            },
            ..MigrationInfo::default()
        })
    }
}

/// `-incoming defer|URI`.
pub(crate) fn cmdline_start(
    shared: &Arc<Shared>,
    host: Arc<dyn MigrationHost>,
    uri: &str,
) -> Result<(), String> {
    host.set_runstate(RunState::Inmigrate);
    if uri == "defer" {
        lock(&shared.incoming).mode = Mode::Deferred;
        return Ok(());
    }
    let parsed = MigrationUri::parse(uri).map_err(|e| e.desc)?;
    start(shared, host, parsed, true)
}

/// `migrate-incoming`.
pub(crate) fn qmp_start(
    shared: &Arc<Shared>,
    host: Arc<dyn MigrationHost>,
    uri: &str,
    exit_on_error: bool,
) -> Result<(), ErrorBody> {
    let mode = lock(&shared.incoming).mode;
    if mode == Mode::Started {
        return Err(ErrorBody::generic(
            "The incoming migration has already been started",
        ));
    }
    if mode == Mode::None || host.runstate() != RunState::Inmigrate {
        return Err(ErrorBody::generic(
            "'-incoming' was not specified on the command line",
        ));
    }
    let parsed = MigrationUri::parse(uri)?;
    start(shared, host, parsed, exit_on_error).map_err(ErrorBody::generic)
}

fn start(
    shared: &Arc<Shared>,
    host: Arc<dyn MigrationHost>,
    uri: MigrationUri,
    exit_on_error: bool,
) -> Result<(), String> {
    let listener = Listener::bind(&uri)?;
    {
        let mut i = lock(&shared.incoming);
        i.mode = Mode::Started;
        i.exit_on_error = exit_on_error;
        i.socket_address = listener.socket_address().map(|a| vec![a]);
    }
    shared.set_incoming(host.as_ref(), MigrationStatus::None, MigrationStatus::Setup);
    let sh = shared.clone();
    std::thread::Builder::new()
        .name("mig/dst/load".into())
        .spawn(move || run(&sh, host.as_ref(), listener, exit_on_error))
        .map_err(|e| format!("cannot start the incoming migration thread: {e}"))?;
    Ok(())
}

/// Writes validated pages into guest RAM (whole-page copies, see
/// `GuestRam::load_page`; the destination's vCPUs stay parked until the
/// load is over).
/// In postcopy, pages go through the RAM's postcopy gate instead.
pub(crate) struct RamSink<'a> {
    ram: &'a dyn MigrationRam,
    postcopy: Option<PostcopyDest<'a>>,
    /// The main stream of a live load: huge pages faulted in ahead of
    /// dense runs of whole pages.
    prefault: Option<&'a Prefault<'a>>,
    /// Huge pages given up when the host backs them slowly.
    first_touch: FirstTouch,
}

impl<'a> RamSink<'a> {
    /// A sink writing straight into `ram` (precopy, multifd page channels).
    pub(crate) fn new(ram: &'a dyn MigrationRam) -> Self {
        RamSink {
            ram,
            postcopy: None,
            prefault: None,
            first_touch: FirstTouch::new(ram.size()),
        }
    }

    /// A sink for the rest of a resumed postcopy migration: pages go
    /// through the postcopy gate.
    pub(crate) fn postcopy_resumed(shared: &'a Shared, host: &'a dyn MigrationHost) -> Self {
        RamSink {
            ram: host.ram(),
            postcopy: Some(PostcopyDest::resumed(shared, host)),
            prefault: None,
            first_touch: FirstTouch::new(host.ram().size()),
        }
    }

    fn in_postcopy(&self) -> Option<&PostcopyDest<'_>> {
        self.postcopy.as_ref().filter(|p| p.active)
    }
}

impl StreamSink for RamSink<'_> {
    fn zero_page(&mut self, page: u64) -> Result<(), String> {
        match self.in_postcopy() {
            Some(p) => p.fill(page, None),
            None => self.ram.zero_page(page),
        }
    }
    fn page(&mut self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), String> {
        match self.in_postcopy() {
            Some(p) => p.fill(page, Some(data)),
            None => {
                let ram = self.ram;
                self.first_touch
                    .load(ram, page, || ram.load_page(page, data))
            }
        }
    }
    fn xbzrle(&mut self, page: u64, encoded: &[u8]) -> Result<(), String> {
        if self.in_postcopy().is_some() {
            return Err("xbzrle page in postcopy".into());
        }
        let mut buf = [0u8; PAGE_SIZE];
        self.ram.read_page(page, &mut buf)?;
        super::xbzrle::decode(encoded, &mut buf).map_err(|e| e.reason)?;
        let ram = self.ram;
        self.first_touch
            .load(ram, page, || ram.load_page(page, &buf))
    }
    fn sparse(&mut self, page: u64, encoded: &[u8]) -> Result<(), String> {
        if self.in_postcopy().is_some() {
            return Err("sparse page in postcopy".into());
        }
        let ram = self.ram;
        self.first_touch
            .load(ram, page, || ram.load_sparse(page, encoded))
    }
    fn postcopy(&mut self, bitmap: &[u64]) -> Result<(), String> {
        match self.postcopy.as_mut() {
            Some(p) => p.start(bitmap),
            None => Err("postcopy is not possible on this destination".into()),
        }
    }
    fn postcopy_device(&mut self, json: &[u8]) -> Result<(), String> {
        match self.postcopy.as_mut() {
            Some(p) => p.run_guest(json),
            None => Err("postcopy is not possible on this destination".into()),
        }
    }
    fn direct(&self) -> Option<&dyn DirectPages> {
        // In postcopy pages go through the gate (the guest runs).
        match self.postcopy {
            Some(ref p) if p.active => None,
            _ => Some(self),
        }
    }
}

impl DirectPages for RamSink<'_> {
    fn page_target(&self, page: u64) -> Option<*mut u8> {
        if let Some(p) = self.prefault {
            p.note(page);
        }
        self.ram.load_target(page)
    }
}

/// Read buffer of a resumed postcopy connection: small records come from
/// it, page batch data is read past it straight into the batch buffer. (A
/// live precopy load reads through `stream::FdInput`, page data straight
/// into guest RAM.)
pub(crate) const READ_BUFFER: usize = 64 * 1024;

/// What the destination expects of a stream header.
pub(crate) fn expect(host: &dyn MigrationHost) -> Expect {
    let id = host.identity();
    Expect {
        ram_size: host.ram().size(),
        vcpus: id.vcpus,
        image_id: id.image_id,
    }
}

/// Loads and validates a whole stream from `r`, pages into guest RAM; the
/// device state is returned in the summary, not applied.
pub(crate) fn stream_load<R: StreamInput>(
    host: &dyn MigrationHost,
    r: R,
) -> Result<stream::LoadSummary, StreamError> {
    stream::load(r, expect(host), &mut RamSink::new(host.ram()))
}

/// Applies the device state of a fully verified stream; returns the
/// source's run state.
pub(crate) fn apply_device_state(
    host: &dyn MigrationHost,
    sum: &stream::LoadSummary,
) -> Result<RunState, StreamError> {
    let invalid = |reason| StreamError {
        offset: sum.device_state_offset,
        kind: stream::StreamErrorKind::DeviceStateInvalid { reason },
    };
    let rec = DeviceRecord::decode(&sum.device_state).map_err(invalid)?;
    host.load_device_state(rec.devices).map_err(invalid)?;
    Ok(rec.runstate)
}

/// Loads a stream from `r` into the host: every record validated before it
/// is applied; the device state is loaded only after the end record and EOF
/// were verified.
pub(crate) fn load_into_host<R: StreamInput>(
    host: &dyn MigrationHost,
    r: R,
) -> Result<(stream::LoadSummary, RunState), StreamError> {
    load_with_postcopy(host, r, None)
}

/// [`load_into_host`] for a live incoming migration: with `postcopy`, a
/// POSTCOPY record runs the guest from the device state on and the pages
/// after it fill the missing ones.
fn load_with_postcopy<'a, R: StreamInput>(
    host: &'a dyn MigrationHost,
    r: R,
    postcopy: Option<PostcopyDest<'a>>,
) -> Result<(stream::LoadSummary, RunState), StreamError> {
    let ram = host.ram();
    let prefault = Prefault::new(ram);
    let sum = std::thread::scope(|s| {
        // Best effort: without the thread, the loader takes every fault.
        let _ = std::thread::Builder::new()
            .name("mig/dst/prefault".into())
            .spawn_scoped(s, || prefault.run());
        let mut sink = RamSink {
            ram,
            postcopy,
            prefault: Some(&prefault),
            first_touch: FirstTouch::new(ram.size()),
        };
        let _finish = prefault.finish_on_drop();
        stream::load(r, expect(host), &mut sink)
    })?;
    if sum.postcopy {
        // The device state was loaded when it arrived; every page is here.
        ram.postcopy_disarm();
        let rec = DeviceRecord::decode(&sum.device_state).map_err(|reason| StreamError {
            offset: sum.device_state_offset,
            kind: stream::StreamErrorKind::DeviceStateInvalid { reason },
        })?;
        return Ok((sum, rec.runstate));
    }
    let runstate = apply_device_state(host, &sum)?;
    Ok((sum, runstate))
}

/// The error text of a single-channel load; a multifd hello there means
/// the capability is on at the source only.
fn single_channel_error(e: StreamError) -> String {
    match e.kind {
        stream::StreamErrorKind::BadMagic { ref found }
            if found.as_bytes().get(1..9) == Some(&multifd::HELLO_MAGIC[..]) =>
        {
            "multifd: a multifd channel arrived, but the multifd capability \
             is not enabled on the destination"
                .to_string()
        }
        _ => e.to_string(),
    }
}

/// What [`accept_and_load`] gives: whether postcopy ran and the source's run
/// state, or the error and whether it was the channel that broke; and a
/// handle on the main channel.
type AcceptResult = (Result<(bool, RunState), (String, bool)>, Option<Conn>);

/// Accepts the migration's connection(s) and loads it.
fn accept_and_load(shared: &Shared, host: &dyn MigrationHost, listener: Listener) -> AcceptResult {
    let to_active = || {
        shared.set_incoming(host, MigrationStatus::Setup, MigrationStatus::Active);
    };
    // As QEMU: the destination's own capability and channel count decide.
    if lock(&shared.caps).multifd() {
        let n = shared.params().multifd_channels;
        let ch = match multifd::recv::accept_all(&listener, n, to_active) {
            Ok(ch) => ch,
            Err(e) => return (Err((e, false)), None),
        };
        drop(listener);
        let handle = ch.main.try_clone().ok();
        let r = multifd::recv::load(host, ch)
            .map(|rs| (false, rs))
            .map_err(|e| (e, false));
        return (r, handle);
    }
    match listener.accept() {
        Ok(conn) => {
            drop(listener);
            to_active();
            let handle = conn.try_clone().ok();
            // For `migrate-pause` on this side.
            *lock(&shared.incoming_conn) = conn.try_clone().ok();
            let pc = PostcopyDest::new(shared, host, conn.try_clone().ok());
            let r = load_with_postcopy(host, FdInput::new(conn), Some(pc))
                .map(|(sum, rs)| (sum.postcopy, rs))
                .map_err(|e| {
                    // A channel that broke (rather than a damaged stream).
                    let lost = matches!(
                        e.kind,
                        stream::StreamErrorKind::Truncated { .. }
                            | stream::StreamErrorKind::Io { .. }
                    );
                    (single_channel_error(e), lost)
                });
            (r, handle)
        }
        Err(e) => (
            Err((
                format!(
                    "Failed to accept a migration connection: {}",
                    stream::os_error_text(&e)
                ),
                false,
            )),
            None,
        ),
    }
}

fn run(shared: &Shared, host: &dyn MigrationHost, listener: Listener, exit_on_error: bool) {
    let (result, conn) = accept_and_load(shared, host, listener);
    finish(shared, host, result, conn, exit_on_error);
}

/// The end of an incoming migration (or of a resumed postcopy): `completed`
/// (closing `conn` tells the source), `postcopy-paused` for a channel lost
/// in postcopy, else `failed` (and exit with `exit_on_error`).
pub(crate) fn finish(
    shared: &Shared,
    host: &dyn MigrationHost,
    result: Result<(bool, RunState), (String, bool)>,
    conn: Option<Conn>,
    exit_on_error: bool,
) {
    *lock(&shared.incoming_conn) = None;
    match result {
        Ok((postcopy, source_runstate)) => {
            // In postcopy the guest was started when the device state came.
            let from = if postcopy {
                MigrationStatus::PostcopyActive
            } else {
                start_guest(host, source_runstate);
                MigrationStatus::Active
            };
            shared.set_incoming(host, from, MigrationStatus::Completed);
            // Closing the channel tells the source the guest is ready here:
            // its `downtime` ends when it sees this EOF.
            if let Some(c) = conn {
                c.shutdown();
            }
        }
        Err((msg, lost)) => {
            lock(&shared.incoming).error = Some(msg.clone());
            let cur = lock(&shared.incoming).status;
            let in_postcopy = matches!(
                cur,
                MigrationStatus::PostcopyActive | MigrationStatus::PostcopyRecover
            );
            if lost && in_postcopy {
                // As QEMU: the guest runs here and keeps what it has; the
                // missing pages wait for a recovery. No exit.
                if let Some(c) = conn {
                    c.shutdown();
                }
                lock(&shared.incoming).recover_triggered = false;
                shared.set_incoming(host, cur, MigrationStatus::PostcopyPaused);
                eprintln!("migtest-vmm: postcopy paused: {msg}");
                return;
            }
            shared.set_incoming(host, cur, MigrationStatus::Failed);
            eprintln!("migtest-vmm: load of migration failed: {msg}");
            if exit_on_error {
                host.exit_process(1);
            }
        }
    }
}
