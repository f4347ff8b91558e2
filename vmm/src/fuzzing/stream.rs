//! The `stream_decoder` check: a whole incoming migration stream loaded
//! into a fresh destination, as the destination's load thread does it.
//!
//! The destination is chosen by the stream's header: a real VM (guest RAM,
//! vCPU threads parked, device-state loading) when the header names one of
//! [`STREAM_GUESTS`], which is what the seeding tool records real streams
//! from; otherwise the engine's in-memory test host with the geometry of
//! `fixtures/streams/` ([`FIXTURE_PAGES`] pages, 1 vCPU, image `0x5eed`),
//! which refuses any other header. What must hold:
//!
//! - no panic; the result is `Ok` or a [`StreamError`] whose offset lies
//!   inside the input;
//! - the loader applied exactly the page records the decoder produced, in
//!   order; every page the stream did not announce still holds its
//!   pre-load content, every announced page the content of its last record;
//! - the full load agrees with a pure decode ([`stream::load`]): the same
//!   error, or success (the guest may still refuse the device state);
//! - an accepted stream is exactly the canonical encoding of its records;
//! - a refused stream leaves the device state as it was; an accepted one
//!   leaves exactly the state it carried, and the guest can run from it.
//!
//! When the stream format changes (batched pages, multifd, xbzrle), the
//! [`Recorder`] and [`reencode`] follow the new records; the rest stays.

use crate::guest::image::GuestImage;
use crate::guest::serial::Serial;
use crate::guest::workload::{Sleeper, StepCtx, Workload};
use crate::guest::{DeviceState, Guest, GuestConfig, SerialConfig};
use crate::host_impl::guest_identity;
use crate::migration::host::{GuestIdentity, MigrationHost, MigrationRam, PAGE_SIZE};
use crate::migration::stream::{
    self, Expect, Header, LoadSummary, StreamError, StreamErrorKind, StreamSink, StreamWriter,
    HEADER_LEN,
};
use crate::migration::testing::TestHost;
use crate::migration::xbzrle;
use crate::migration::{load_into_host, lock};
use crate::vm::Vm;
use migtest_qmp::schema::RunState;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use xxhash_rust::xxh3::xxh3_64;

/// A destination real streams are recorded for and loaded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamGuest {
    /// Guest image name (`guest-images/<image>.toml`).
    pub image: &'static str,
    /// The image file's text.
    pub text: &'static str,
    /// RAM size in bytes (`-m`).
    pub ram_size: u64,
    /// vCPUs (`-smp`).
    pub vcpus: u32,
}

/// RAM of the recorded guests: 350 pages, the smallest size every image fits
/// (sweep needs its 1M start below the quarter reserved for `[secondary]`).
pub const STREAM_GUEST_RAM: u64 = 1400 << 10;

/// A [`StreamGuest`] of `guest-images/<image>.toml` with `vcpus` vCPUs and
/// [`STREAM_GUEST_RAM`].
macro_rules! stream_guest {
    ($image:literal, $vcpus:expr) => {
        StreamGuest {
            image: $image,
            text: include_str!(concat!("../../../guest-images/", $image, ".toml")),
            ram_size: STREAM_GUEST_RAM,
            vcpus: $vcpus,
        }
    };
}

/// The destinations of recorded streams (the seeding tool records one or
/// more streams from a source of each).
pub const STREAM_GUESTS: [StreamGuest; 5] = [
    stream_guest!("idle", 1),
    stream_guest!("sweep", 2),
    stream_guest!("hotset", 1),
    stream_guest!("rate", 2),
    stream_guest!("random", 2),
];

/// Pages of the fallback destination (the geometry of `fixtures/streams/`).
pub const FIXTURE_PAGES: u64 = 4;

/// Steps each vCPU's workload runs from an accepted device state.
const RUN_STEPS: usize = 256;

impl StreamGuest {
    /// The configuration a destination for this guest is built from.
    pub fn config(&self) -> GuestConfig {
        let image = GuestImage::parse_named(self.text, self.image)
            .unwrap_or_else(|e| panic!("guest-images/{}.toml: {e}", self.image));
        GuestConfig {
            ram_size: self.ram_size,
            vcpus: self.vcpus,
            backing: Default::default(),
            image,
            serial: SerialConfig::None,
        }
    }

    /// The identity a source of this guest puts in the stream header.
    pub fn identity(&self) -> GuestIdentity {
        guest_identity(&self.config())
    }
}

/// Runs the `stream_decoder` check on one input (see the module docs).
pub fn check_stream(data: &[u8]) {
    match header_fields(data).and_then(real_guest) {
        Some(guest) => check_on_vm(data, guest),
        None => {
            let (host, _migration) = TestHost::new(FIXTURE_PAGES, RunState::Inmigrate);
            let loaded_state = || lock(&host.loaded_state).clone();
            let outcome = check_load(data, host.as_ref(), &loaded_state);
            if outcome.is_ok() {
                assert!(loaded_state().is_some(), "accepted stream loaded no state");
            }
        }
    }
}

/// `(ram_size, vcpus, image_id)` from a header-long prefix, unchecked.
fn header_fields(data: &[u8]) -> Option<(u64, u32, u64)> {
    let h = data.get(..HEADER_LEN)?;
    let be = |r: std::ops::Range<usize>| h[r].iter().fold(0u64, |a, b| a << 8 | u64::from(*b));
    Some((be(16..24), be(24..28) as u32, be(32..40)))
}

fn real_guest((ram_size, vcpus, image_id): (u64, u32, u64)) -> Option<&'static StreamGuest> {
    static IDS: OnceLock<Vec<GuestIdentity>> = OnceLock::new();
    let ids = IDS.get_or_init(|| STREAM_GUESTS.iter().map(StreamGuest::identity).collect());
    STREAM_GUESTS.iter().zip(ids).find_map(|(g, id)| {
        (g.ram_size == ram_size && id.vcpus == vcpus && id.image_id == image_id).then_some(g)
    })
}

fn check_on_vm(data: &[u8], guest: &StreamGuest) {
    let config = guest.config();
    let layout = config
        .image
        .layout(config.ram_size, config.vcpus)
        .expect("a recorded guest fits its RAM");
    let vm = Vm::new(
        Guest::new(config).expect("destination guest starts"),
        None,
        RunState::Inmigrate,
        false,
    );
    let state = || vm.save_device_state().ok();
    let Ok(runstate) = check_load(data, &vm, &state) else {
        return;
    };
    assert!(
        !matches!(runstate, RunState::Inmigrate | RunState::FinishMigrate),
        "accepted a source run state that cannot be restored: {runstate:?}"
    );
    // The guest runs from the state it accepted: a vCPU thread would step
    // these workloads next, so stepping must not panic.
    let loaded = vm
        .guest()
        .save_state()
        .expect("paused guest saves its state");
    let serial = Serial::open(&SerialConfig::None).expect("serial none");
    for (i, (plan, vcpu)) in layout.vcpus.iter().zip(loaded.vcpus).enumerate() {
        let mut w = Workload::new(*plan, i == 0);
        w.validate(&vcpu)
            .expect("an accepted vCPU state validates again");
        w.set_state(vcpu);
        let ctx = StepCtx {
            ram: vm.guest().ram(),
            serial: &serial,
            console: i == 0,
            sleeper: &NoSleep,
        };
        for _ in 0..RUN_STEPS {
            w.step(&ctx);
        }
    }
}

/// Workload pacing without waiting: every sleep is over at once.
struct NoSleep;

impl Sleeper for NoSleep {
    fn sleep(&self, _: Duration) -> bool {
        true
    }
    fn idle(&self) {}
}

/// A pure decode, then the destination's load into `host`, with every
/// invariant of the module docs checked. `state` reads the host's device
/// state. Returns the source run state of an accepted stream.
fn check_load(
    data: &[u8],
    host: &dyn MigrationHost,
    state: &dyn Fn() -> Option<Value>,
) -> Result<RunState, StreamError> {
    let ram = host.ram();
    let pages = ram.page_count();
    for p in 0..pages {
        ram.load_page(p, &pattern(p)).expect("fill destination RAM");
    }
    let id = host.identity();
    let expect = Expect {
        ram_size: ram.size(),
        vcpus: id.vcpus,
        image_id: id.image_id,
    };
    let mut decoded = Recorder::default();
    let pure = stream::load(data, expect, &mut decoded);
    let before = state();
    let tracking = TrackingHost {
        inner: host,
        ram: TrackingRam {
            inner: ram,
            log: Mutex::new(Vec::new()),
        },
    };
    let loaded = load_into_host(&tracking, data);
    let log = tracking
        .ram
        .log
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());

    assert_eq!(
        log,
        decoded.page_writes(),
        "the loader applied other pages than the decoder produced"
    );
    check_ram(ram, &log);
    if let Err(e) = &loaded {
        assert!(
            e.offset <= data.len() as u64,
            "error offset {} beyond the {}-byte input: {e}",
            e.offset,
            data.len()
        );
        assert_eq!(state(), before, "a refused stream changed the device state");
    }
    match (&pure, &loaded) {
        // This destination has no return path: it refuses a POSTCOPY
        // record the pure decode went past.
        (Err(p), Err(l))
            if matches!(l.kind, StreamErrorKind::Postcopy { .. })
                && l.offset < p.offset
                && decoded
                    .records
                    .iter()
                    .any(|r| matches!(r, Rec::Postcopy(_))) => {}
        (Err(p), Err(l)) => assert_eq!(p, l, "decode and load disagree"),
        (Err(p), Ok(_)) => panic!("the load accepted what the decoder refused: {p}"),
        (Ok(sum), Err(l)) => assert!(
            (matches!(l.kind, StreamErrorKind::DeviceStateInvalid { .. })
                && l.offset == sum.device_state_offset)
                || (sum.postcopy && matches!(l.kind, StreamErrorKind::Postcopy { .. })),
            "a decodable stream failed to load other than at its device state or postcopy: {l}"
        ),
        (Ok(sum), Ok((loaded_sum, _))) => {
            assert_eq!(sum, loaded_sum, "decode and load summaries differ");
            assert_eq!(
                sum.bytes,
                data.len() as u64,
                "accepted stream length differs from the input"
            );
            assert_eq!(
                reencode(sum, &decoded.records),
                data,
                "an accepted stream is not the canonical encoding of its records"
            );
            let rec = stream::DeviceRecord::decode(&sum.device_state)
                .expect("the accepted device record decodes");
            if let Some(now) = state().and_then(|v| serde_json::from_value::<DeviceState>(v).ok()) {
                let carried: DeviceState = serde_json::from_value(rec.devices)
                    .expect("a real guest accepted a well-formed device state");
                assert_eq!(
                    now, carried,
                    "the guest holds another state than it accepted"
                );
            }
        }
    }
    loaded.map(|(_, runstate)| runstate)
}

/// Every page holds what the last write of `log` put there, or its pattern.
fn check_ram(ram: &dyn MigrationRam, log: &[(u64, Option<u64>)]) {
    let pages = ram.page_count();
    let mut expected: Vec<Option<Option<u64>>> = vec![None; pages as usize];
    for (page, digest) in log {
        assert!(
            *page < pages,
            "page {page} applied beyond RAM of {pages} pages"
        );
        expected[*page as usize] = Some(*digest);
    }
    let mut buf = [0u8; PAGE_SIZE];
    for (p, want) in expected.into_iter().enumerate() {
        let p = p as u64;
        ram.read_page(p, &mut buf).expect("read destination page");
        match want {
            None => assert!(
                buf == pattern(p),
                "page {p} changed although no record announced it"
            ),
            Some(None) => assert!(buf.iter().all(|b| *b == 0), "zero page {p} is not zero"),
            Some(Some(d)) => assert_eq!(xxh3_64(&buf), d, "page {p} differs from its record"),
        }
    }
}

/// The content a destination page has before the load: distinct per page
/// and never zero, so a misplaced zero-page write shows.
fn pattern(page: u64) -> [u8; PAGE_SIZE] {
    let mut b = [0u8; PAGE_SIZE];
    for (i, w) in b.chunks_exact_mut(8).enumerate() {
        let v = (page << 16 | i as u64) ^ 0xa5a5_5a5a_0f0f_f0f0;
        w.copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// One record as the decoder handed it to its sink.
#[derive(Debug)]
enum Rec {
    Pass(u64),
    Zero(u64),
    Page(u64, Box<[u8; PAGE_SIZE]>),
    /// A PAGES record: the next `n` records are its entries.
    Batch(usize),
    /// A POSTCOPY record.
    Postcopy(Vec<u64>),
    /// The device state where a postcopy stream carries it.
    Device,
    /// An XBZRLE record: page and encoding.
    Xbzrle(u64, Vec<u8>),
    /// A SPARSE record: page and encoding.
    Sparse(u64, Vec<u8>),
}

/// A sink keeping every record (bounded by the input: each page record
/// kept is a page of input).
#[derive(Debug, Default)]
struct Recorder {
    records: Vec<Rec>,
}

impl Recorder {
    /// The RAM writes the records mean: `(page, digest)`, `None` = zeroed.
    /// A destination without a return path (the fuzz check's) refuses
    /// the POSTCOPY record: only the writes before it count then.
    /// An XBZRLE record is decoded against the page as the records before
    /// it left it (or its [`pattern`]), as the destination does.
    fn page_writes(&self) -> Vec<(u64, Option<u64>)> {
        let mut pages: HashMap<u64, Box<[u8; PAGE_SIZE]>> = HashMap::new();
        self.records
            .iter()
            .take_while(|r| !matches!(r, Rec::Postcopy(_)))
            .filter_map(|r| match r {
                Rec::Pass(_) | Rec::Batch(_) | Rec::Postcopy(_) | Rec::Device => None,
                Rec::Zero(p) => {
                    pages.insert(*p, Box::new([0; PAGE_SIZE]));
                    Some((*p, None))
                }
                Rec::Page(p, data) => {
                    pages.insert(*p, data.clone());
                    Some((*p, Some(xxh3_64(&data[..]))))
                }
                Rec::Xbzrle(p, enc) => {
                    let page = pages.entry(*p).or_insert_with(|| Box::new(pattern(*p)));
                    xbzrle::decode(enc, page).expect("the decoder validated the encoding");
                    Some((*p, Some(xxh3_64(&page[..]))))
                }
                Rec::Sparse(p, enc) => {
                    let page =
                        xbzrle::decode_sparse(enc).expect("the decoder validated the encoding");
                    let digest = xxh3_64(&page[..]);
                    pages.insert(*p, page);
                    Some((*p, Some(digest)))
                }
            })
            .collect()
    }
}

impl StreamSink for Recorder {
    fn pass(&mut self, n: u64) {
        self.records.push(Rec::Pass(n));
    }
    fn zero_page(&mut self, page: u64) -> Result<(), String> {
        self.records.push(Rec::Zero(page));
        Ok(())
    }
    fn page(&mut self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), String> {
        self.records.push(Rec::Page(page, Box::new(*data)));
        Ok(())
    }
    fn batch(&mut self, entries: usize) {
        self.records.push(Rec::Batch(entries));
    }
    fn postcopy(&mut self, bitmap: &[u64]) -> Result<(), String> {
        self.records.push(Rec::Postcopy(bitmap.to_vec()));
        Ok(())
    }
    fn postcopy_device(&mut self, _json: &[u8]) -> Result<(), String> {
        self.records.push(Rec::Device);
        Ok(())
    }
    fn xbzrle(&mut self, page: u64, encoded: &[u8]) -> Result<(), String> {
        self.records.push(Rec::Xbzrle(page, encoded.to_vec()));
        Ok(())
    }
    fn sparse(&mut self, page: u64, encoded: &[u8]) -> Result<(), String> {
        self.records.push(Rec::Sparse(page, encoded.to_vec()));
        Ok(())
    }
}

/// The canonical encoding of a decoded stream, written by the source's
/// [`StreamWriter`].
fn reencode(sum: &LoadSummary, records: &[Rec]) -> Vec<u8> {
    let header: Header = sum.header.expect("accepted stream has a header");
    let mut w = StreamWriter::new(Vec::new());
    let io = "writing to a Vec";
    w.header(&header).expect(io);
    let mut rest = records;
    while let Some((r, tail)) = rest.split_first() {
        rest = tail;
        match r {
            Rec::Pass(n) => w.pass(*n),
            Rec::Zero(p) => w.zero_page(*p),
            Rec::Page(p, data) => w.page(*p, data),
            Rec::Batch(n) => {
                let (batch, tail) = rest.split_at((*n).min(rest.len()));
                rest = tail;
                let (entries, data) = batch_parts(batch);
                w.pages(&entries, &data)
            }
            Rec::Postcopy(bitmap) => w.postcopy(bitmap),
            Rec::Device => w.device_state(&sum.device_state),
            Rec::Xbzrle(p, enc) => w.xbzrle(*p, enc),
            Rec::Sparse(p, enc) => w.sparse(*p, enc),
        }
        .expect(io);
    }
    if !sum.postcopy {
        w.device_state(&sum.device_state).expect(io);
    }
    w.end().expect(io);
    w.into_inner()
}

/// The entries and full-page data of a PAGES record's recorded pages.
fn batch_parts(batch: &[Rec]) -> (Vec<u64>, Vec<u8>) {
    let mut entries = Vec::with_capacity(batch.len());
    let mut data = Vec::new();
    for r in batch {
        match r {
            Rec::Zero(p) => entries.push(p | stream::ZERO_ENTRY),
            Rec::Page(p, d) => {
                entries.push(*p);
                data.extend_from_slice(&d[..]);
            }
            Rec::Pass(_)
            | Rec::Batch(_)
            | Rec::Postcopy(_)
            | Rec::Device
            | Rec::Xbzrle(..)
            | Rec::Sparse(..) => {
                unreachable!("a PAGES record holds only pages")
            }
        }
    }
    (entries, data)
}

/// The destination's RAM with a log of every page write the loader makes.
struct TrackingRam<'a> {
    inner: &'a dyn MigrationRam,
    log: Mutex<Vec<(u64, Option<u64>)>>,
}

impl MigrationRam for TrackingRam<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_page(&self, page: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), String> {
        self.inner.read_page(page, buf)
    }
    fn page_is_zero(&self, page: u64) -> bool {
        self.inner.page_is_zero(page)
    }
    fn load_page(&self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), String> {
        lock(&self.log).push((page, Some(xxh3_64(data))));
        self.inner.load_page(page, data)
    }
    fn zero_page(&self, page: u64) -> Result<(), String> {
        lock(&self.log).push((page, None));
        self.inner.zero_page(page)
    }
    /// The real RAM's own SPARSE write, logged as what it left in the page.
    fn load_sparse(&self, page: u64, encoded: &[u8]) -> Result<(), String> {
        self.inner.load_sparse(page, encoded)?;
        let mut now = [0u8; PAGE_SIZE];
        self.inner.read_page(page, &mut now)?;
        lock(&self.log).push((page, Some(xxh3_64(&now))));
        Ok(())
    }
    fn dirty_set_all(&self) {
        self.inner.dirty_set_all()
    }
    fn dirty_take(&self) -> Vec<u64> {
        self.inner.dirty_take()
    }
    fn dirty_count(&self) -> u64 {
        self.inner.dirty_count()
    }
}

/// A destination host whose RAM is a [`TrackingRam`]; everything else is
/// the real host's.
struct TrackingHost<'a> {
    inner: &'a dyn MigrationHost,
    ram: TrackingRam<'a>,
}

impl MigrationHost for TrackingHost<'_> {
    fn ram(&self) -> &dyn MigrationRam {
        &self.ram
    }
    fn identity(&self) -> GuestIdentity {
        self.inner.identity()
    }
    fn save_device_state(&self) -> Result<Value, String> {
        self.inner.save_device_state()
    }
    fn load_device_state(&self, state: Value) -> Result<(), String> {
        self.inner.load_device_state(state)
    }
    fn runstate(&self) -> RunState {
        self.inner.runstate()
    }
    fn set_runstate(&self, s: RunState) {
        self.inner.set_runstate(s)
    }
    fn vm_stop(&self, new_state: RunState) {
        self.inner.vm_stop(new_state)
    }
    fn vm_start(&self) {
        self.inner.vm_start()
    }
    fn autostart(&self) -> bool {
        self.inner.autostart()
    }
    fn emit(&self, event: &str, data: Option<Value>) {
        self.inner.emit(event, data)
    }
    fn exit_process(&self, code: i32) -> ! {
        self.inner.exit_process(code)
    }
}
