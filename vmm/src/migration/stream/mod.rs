//! The migtest migration stream: encoder and validating decoder.
//!
//! Format (version 6, all integers big-endian; see `docs/migration-stream.md`):
//!
//! ```text
//! header  := magic[8]="MIGTSTRM" version:u32 page_size:u32 ram_size:u64
//!            vcpus:u32 reserved:u32=0 image_id:u64                    (40 bytes)
//! record  := tag:u8 body
//!   0x01 PASS   pass:u64                 (strictly increasing, first >= 1)
//!   0x02 ZERO   page:u64
//!   0x03 PAGE   page:u64 data[4096]
//!   0x04 DEVICE len:u32 (1..=1 MiB) json[len]  {"runstate", "devices"}
//!   0x05 END    digest:u64               (xxh3-64 of every byte before this tag
//!                                         but the page data of PAGE and PAGES)
//!   0x06 PAGES  count:u32 (1..=4096) entry[count]:u64 data[n * 4096]
//!               entry = page index, bit 63 set for a zero page (no data);
//!               n = entries without bit 63, at most 256
//!   0x07 POSTCOPY bitmap[ceil(pages / 64)]:u64
//!               the pages still to come (bit i of word w = page 64w+i);
//!               the guest runs on the destination from the DEVICE after it
//!   0x08 XBZRLE page:u64 len:u16 (1..=4096) data[len]
//!               the page as QEMU's XBZRLE delta against the destination's
//!               current copy (`migration::xbzrle`); precopy, main stream only
//!   0x09 SPARSE page:u64 len:u16 (1..=4096) data[len]
//!               a page that is zero but for a few bytes, as its XBZRLE
//!               delta against an all-zero page; precopy, main stream only
//! stream  := header PASS (PASS|ZERO|PAGE|PAGES|XBZRLE|SPARSE)*
//!            ( DEVICE END | POSTCOPY DEVICE (ZERO|PAGE|PAGES)* END ) <eof>
//!            (after POSTCOPY, every page of the bitmap exactly once and
//!            no other page)
//! ```
//!
//! The decoder trusts nothing: every field is checked before it is acted
//! upon, no buffer is sized from an unchecked length, and every violation is
//! reported as a [`StreamError`] naming the byte offset where it was found.

use super::host::PAGE_SIZE;
use migtest_qmp::schema::RunState;

mod digest;
mod direct;
mod error;
mod load;
mod reader;
mod splice;
mod writer;

pub use digest::StreamDigest;
pub use direct::{DirectPages, FdInput, StreamInput};
pub use error::{os_error_text, StreamError, StreamErrorKind};
pub use load::{load, load_batch, load_resumed, LoadSummary, NullSink, StreamSink, VecSink};
pub use reader::StreamReader;
pub use writer::StreamWriter;

/// Stream magic.
pub const MAGIC: [u8; 8] = *b"MIGTSTRM";
/// Current (and only) stream version (2 added the PAGES batch record, 3
/// the POSTCOPY record, 4 the XBZRLE record; 5 took page data out of the
/// END digest; 6 added the SPARSE record).
pub const VERSION: u32 = 6;
/// Header length in bytes.
pub const HEADER_LEN: usize = 40;
/// Largest device-state record accepted.
pub const MAX_DEVICE_STATE: u32 = 1 << 20;
/// Most entries in one PAGES record.
pub const MAX_BATCH_ENTRIES: u32 = 4096;
/// Most full pages (data) in one PAGES record: 1 MiB.
pub const MAX_BATCH_DATA_PAGES: u32 = 256;
/// Bit 63 of a PAGES entry: a zero page, no data follows for it.
pub const ZERO_ENTRY: u64 = 1 << 63;

/// Record tags.
pub mod tag {
    /// Start of a pass (after a dirty-bitmap sync).
    pub const PASS: u8 = 0x01;
    /// A page that is all zero.
    pub const ZERO: u8 = 0x02;
    /// A full page.
    pub const PAGE: u8 = 0x03;
    /// The device state (JSON).
    pub const DEVICE: u8 = 0x04;
    /// End of stream with digest.
    pub const END: u8 = 0x05;
    /// A batch of zero and full pages.
    pub const PAGES: u8 = 0x06;
    /// Switch to postcopy: the bitmap of pages still to come.
    pub const POSTCOPY: u8 = 0x07;
    /// A page XBZRLE-encoded against the destination's copy.
    pub const XBZRLE: u8 = 0x08;
    /// A page that is zero but for a few bytes, XBZRLE-encoded against zero.
    pub const SPARSE: u8 = 0x09;
}

/// The stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Stream version.
    pub version: u32,
    /// Page size in bytes.
    pub page_size: u32,
    /// Guest RAM size in bytes.
    pub ram_size: u64,
    /// vCPU count.
    pub vcpus: u32,
    /// Guest image identity (0 = unknown).
    pub image_id: u64,
}

impl Header {
    /// A current-version header for a guest.
    pub fn new(ram_size: u64, vcpus: u32, image_id: u64) -> Header {
        Header {
            version: VERSION,
            page_size: PAGE_SIZE as u32,
            ram_size,
            vcpus,
            image_id,
        }
    }

    /// The 40 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_be_bytes());
        b[12..16].copy_from_slice(&self.page_size.to_be_bytes());
        b[16..24].copy_from_slice(&self.ram_size.to_be_bytes());
        b[24..28].copy_from_slice(&self.vcpus.to_be_bytes());
        // 28..32 reserved, zero
        b[32..40].copy_from_slice(&self.image_id.to_be_bytes());
        b
    }
}

/// What the destination expects of an incoming stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// Local RAM size in bytes.
    pub ram_size: u64,
    /// Local vCPU count; 0 accepts any.
    pub vcpus: u32,
    /// Local image identity; 0 accepts any.
    pub image_id: u64,
}

impl Expect {
    fn pages(&self) -> u64 {
        self.ram_size / PAGE_SIZE as u64
    }

    /// Words of a POSTCOPY bitmap for this RAM.
    pub fn bitmap_words(&self) -> usize {
        self.pages().div_ceil(64) as usize
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Start of pass `n`.
    Pass(u64),
    /// Zero page.
    ZeroPage(u64),
    /// Full page.
    Page(u64, Box<[u8; PAGE_SIZE]>),
    /// Device state JSON bytes.
    DeviceState(Vec<u8>),
    /// End marker with the digest of everything before it but page data.
    End(u64),
    /// A batch of this many entries; read them with [`StreamReader::batch`].
    Pages(u32),
    /// Postcopy starts: the bitmap of the pages still to come.
    Postcopy(Vec<u64>),
    /// An XBZRLE-encoded page (the encoding already validated).
    Xbzrle(u64, Vec<u8>),
    /// A sparse page: XBZRLE-encoded against an all-zero page (validated).
    Sparse(u64, Vec<u8>),
}

/// The JSON carried by the DEVICE record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    /// The source's run state just before it stopped for switchover (QEMU's
    /// "global state"): `running` lets the destination start (unless `-S`),
    /// anything else is the destination's run state after loading.
    pub runstate: RunState,
    /// The guest's device state (`Guest::save_state()` as JSON).
    pub devices: serde_json::Value,
}

impl DeviceRecord {
    /// Parses and checks a DEVICE record's JSON.
    pub fn decode(json: &[u8]) -> Result<DeviceRecord, String> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        let rec: DeviceRecord = serde_json::from_value(v).map_err(|e| e.to_string())?;
        if matches!(rec.runstate, RunState::Inmigrate | RunState::FinishMigrate) {
            return Err(format!(
                "source run state '{}' cannot be restored",
                rec.runstate.as_str()
            ));
        }
        Ok(rec)
    }

    /// The record's JSON bytes.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|e| e.to_string())
    }
}
