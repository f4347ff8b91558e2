//! The migtest migration stream: encoder and validating decoder.
//!
//! Format (version 2, all integers big-endian; see `docs/migration-stream.md`):
//!
//! ```text
//! header  := magic[8]="MIGTSTRM" version:u32 page_size:u32 ram_size:u64
//!            vcpus:u32 reserved:u32=0 image_id:u64                    (40 bytes)
//! record  := tag:u8 body
//!   0x01 PASS   pass:u64                 (strictly increasing, first >= 1)
//!   0x02 ZERO   page:u64
//!   0x03 PAGE   page:u64 data[4096]
//!   0x04 DEVICE len:u32 (1..=1 MiB) json[len]  {"runstate", "devices"}
//!   0x05 END    digest:u64               (xxh3-64 of every byte before this tag)
//!   0x06 PAGES  count:u32 (1..=4096) entry[count]:u64 data[n * 4096]
//!               entry = page index, bit 63 set for a zero page (no data);
//!               n = entries without bit 63, at most 256
//! stream  := header PASS (PASS|ZERO|PAGE|PAGES)* DEVICE END <eof>
//! ```
//!
//! The decoder trusts nothing: every field is checked before it is acted
//! upon, no buffer is sized from an unchecked length, and every violation is
//! reported as a [`StreamError`] naming the byte offset where it was found.

use super::host::PAGE_SIZE;
use migtest_qmp::schema::RunState;
use std::io::{self, IoSlice, Read, Write};
use xxhash_rust::xxh3::Xxh3;

/// Stream magic.
pub const MAGIC: [u8; 8] = *b"MIGTSTRM";
/// Current (and only) stream version (2 added the PAGES batch record).
pub const VERSION: u32 = 2;
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
    /// End marker with the digest of everything before it.
    End(u64),
    /// A batch of this many entries; read them with [`StreamReader::batch`].
    Pages(u32),
}

/// Why a stream was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamErrorKind {
    /// The first 8 bytes are not the magic.
    #[error("bad magic {found} (expected \"MIGTSTRM\")")]
    BadMagic {
        /// The bytes found, escaped.
        found: String,
    },
    /// Unknown stream version.
    #[error("unsupported version {found} (this VMM reads version {supported})")]
    UnsupportedVersion {
        /// Version in the stream.
        found: u32,
        /// Version this decoder reads.
        supported: u32,
    },
    /// Page size differs.
    #[error("page size {found} does not match the local page size {expected}")]
    PageSize {
        /// In the stream.
        found: u32,
        /// Local.
        expected: u32,
    },
    /// Reserved header field not zero.
    #[error("reserved header field is {found:#x}, must be 0")]
    Reserved {
        /// The value found.
        found: u32,
    },
    /// RAM size differs from the local guest.
    #[error("RAM size {stream} bytes does not match the local RAM size {local} bytes")]
    RamSize {
        /// In the stream.
        stream: u64,
        /// Local.
        local: u64,
    },
    /// vCPU count differs.
    #[error("vCPU count {stream} does not match the local vCPU count {local}")]
    Vcpus {
        /// In the stream.
        stream: u32,
        /// Local.
        local: u32,
    },
    /// Guest image differs.
    #[error("guest image {stream:#018x} does not match the local guest image {local:#018x}")]
    Image {
        /// In the stream.
        stream: u64,
        /// Local.
        local: u64,
    },
    /// EOF inside or instead of something.
    #[error("unexpected end of stream in {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// A read error other than EOF.
    #[error("read error in {what}: {reason}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// The OS error text.
        reason: String,
    },
    /// Unknown record tag.
    #[error("unknown record type {tag:#04x}")]
    UnknownRecord {
        /// The tag byte.
        tag: u8,
    },
    /// Page index beyond RAM.
    #[error("page {page} out of range (RAM has {pages} pages)")]
    PageOutOfRange {
        /// Index in the stream.
        page: u64,
        /// Local page count.
        pages: u64,
    },
    /// Device state length too large.
    #[error("device state length {len} exceeds the limit of {max} bytes")]
    DeviceStateTooLarge {
        /// Length in the stream.
        len: u32,
        /// Limit.
        max: u32,
    },
    /// PAGES record with a count out of range.
    #[error("page batch of {count} entries is outside 1..={max}")]
    BatchCount {
        /// Count in the stream.
        count: u32,
        /// Limit.
        max: u32,
    },
    /// PAGES record with too many full pages.
    #[error("page batch carries {pages} full pages, more than {max}")]
    BatchData {
        /// Full pages in the record.
        pages: u32,
        /// Limit.
        max: u32,
    },
    /// Device state length zero.
    #[error("device state record is empty")]
    DeviceStateEmpty,
    /// Device state is not valid JSON or was refused by the guest.
    #[error("invalid device state: {reason}")]
    DeviceStateInvalid {
        /// Decoder or guest message.
        reason: String,
    },
    /// A record that is not allowed at this point.
    #[error("{record} record {why}")]
    OutOfOrder {
        /// Record name.
        record: &'static str,
        /// Why not here.
        why: &'static str,
    },
    /// Pass numbers must increase.
    #[error("pass {found} does not follow pass {previous}")]
    PassNotIncreasing {
        /// In the stream.
        found: u64,
        /// The previous pass number (0 before the first).
        previous: u64,
    },
    /// Digest in the end record does not match.
    #[error("digest mismatch: end record says {stream:#018x}, data hashes to {computed:#018x}")]
    Digest {
        /// In the stream.
        stream: u64,
        /// Computed.
        computed: u64,
    },
    /// Bytes after the end record.
    #[error("trailing data after end of stream")]
    TrailingData,
    /// The RAM refused a page.
    #[error("cannot load page {page}: {reason}")]
    Load {
        /// Page index.
        page: u64,
        /// Message.
        reason: String,
    },
}

/// A rejected stream: what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream: {kind} at offset {offset}")]
pub struct StreamError {
    /// Byte offset of the offending field or record.
    pub offset: u64,
    /// What is wrong.
    pub kind: StreamErrorKind,
}

/// The OS error text without Rust's " (os error N)" suffix, as QEMU prints it.
pub fn os_error_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let mut buf = [0 as libc::c_char; 256];
            // SAFETY: buf is valid for buf.len() bytes; the XSI strerror_r
            // writes a NUL-terminated string into it.
            let rc = unsafe { libc::strerror_r(code, buf.as_mut_ptr(), buf.len()) };
            if rc == 0 {
                // SAFETY: strerror_r succeeded, so buf holds a NUL-terminated string.
                let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
                s.to_string_lossy().into_owned()
            } else {
                e.to_string()
            }
        }
        None => e.to_string(),
    }
}

/// Writes a stream, counting bytes and hashing them for the end record.
pub struct StreamWriter<W: Write> {
    inner: W,
    hasher: Xxh3,
    written: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Wraps a writer (buffer it yourself).
    pub fn new(inner: W) -> StreamWriter<W> {
        StreamWriter {
            inner,
            hasher: Xxh3::new(),
            written: 0,
        }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.inner.write_all(b)?;
        self.hasher.update(b);
        self.written += b.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The header.
    pub fn header(&mut self, h: &Header) -> io::Result<()> {
        self.put(&h.to_bytes())
    }

    /// A pass marker.
    pub fn pass(&mut self, n: u64) -> io::Result<()> {
        let mut b = [0u8; 9];
        b[0] = tag::PASS;
        b[1..].copy_from_slice(&n.to_be_bytes());
        self.put(&b)
    }

    /// A zero page.
    pub fn zero_page(&mut self, page: u64) -> io::Result<()> {
        let mut b = [0u8; 9];
        b[0] = tag::ZERO;
        b[1..].copy_from_slice(&page.to_be_bytes());
        self.put(&b)
    }

    /// A full page.
    pub fn page(&mut self, page: u64, data: &[u8; PAGE_SIZE]) -> io::Result<()> {
        let mut b = [0u8; 9];
        b[0] = tag::PAGE;
        b[1..].copy_from_slice(&page.to_be_bytes());
        self.put(&b)?;
        self.put(data)
    }

    /// A PAGES record: `entries` (page indices, [`ZERO_ENTRY`] set for zero
    /// pages) and the data of the full pages in entry order, written with
    /// vectored I/O straight from `data`. The caller keeps within
    /// [`MAX_BATCH_ENTRIES`] and [`MAX_BATCH_DATA_PAGES`].
    pub fn pages(&mut self, entries: &[u64], data: &[u8]) -> io::Result<()> {
        debug_assert!(!entries.is_empty() && entries.len() <= MAX_BATCH_ENTRIES as usize);
        debug_assert!(data.len() <= MAX_BATCH_DATA_PAGES as usize * PAGE_SIZE);
        let mut head = Vec::with_capacity(5 + entries.len() * 8);
        head.push(tag::PAGES);
        head.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for e in entries {
            head.extend_from_slice(&e.to_be_bytes());
        }
        self.hasher.update(&head);
        self.hasher.update(data);
        self.written += (head.len() + data.len()) as u64;
        write_all_vectored(
            &mut self.inner,
            &mut [IoSlice::new(&head), IoSlice::new(data)],
        )
    }

    /// The device state; refuses empty or oversize states.
    pub fn device_state(&mut self, json: &[u8]) -> io::Result<()> {
        if json.is_empty() || json.len() > MAX_DEVICE_STATE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "device state of {} bytes is outside 1..={} bytes",
                    json.len(),
                    MAX_DEVICE_STATE
                ),
            ));
        }
        let mut b = [0u8; 5];
        b[0] = tag::DEVICE;
        b[1..].copy_from_slice(&(json.len() as u32).to_be_bytes());
        self.put(&b)?;
        self.put(json)
    }

    /// The end record (digest of everything before it), then a flush.
    pub fn end(&mut self) -> io::Result<()> {
        let digest = self.hasher.digest();
        let mut b = [0u8; 9];
        b[0] = tag::END;
        b[1..].copy_from_slice(&digest.to_be_bytes());
        self.put(&b)?;
        self.inner.flush()
    }

    /// Flushes the inner writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Unwraps the inner writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// `Write::write_all_vectored` (not stable yet): loops over partial writes.
fn write_all_vectored<W: Write>(w: &mut W, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Header read, no pass marker yet.
    BeforeFirstPass,
    /// Pages allowed.
    Ram,
    /// Device state seen, only END allowed.
    AfterDevice,
    /// END seen, only EOF allowed.
    Ended,
}

/// Reads and validates a stream record by record.
pub struct StreamReader<R: Read> {
    inner: R,
    hasher: Xxh3,
    offset: u64,
    expect: Expect,
    phase: Phase,
    last_pass: u64,
    /// The last PAGES record: entries, then the full pages' data.
    batch_entries: Vec<u64>,
    batch_data: Vec<u8>,
}

impl<R: Read> StreamReader<R> {
    /// A reader for a stream that must match `expect`.
    pub fn new(inner: R, expect: Expect) -> StreamReader<R> {
        StreamReader {
            inner,
            hasher: Xxh3::new(),
            offset: 0,
            expect,
            phase: Phase::BeforeFirstPass,
            last_pass: 0,
            batch_entries: Vec::new(),
            batch_data: Vec::new(),
        }
    }

    /// The entries and full-page data of the last [`Record::Pages`]: entry
    /// `k` without [`ZERO_ENTRY`] owns the next 4096 bytes of data.
    pub fn batch(&self) -> (&[u64], &[u8]) {
        (&self.batch_entries, &self.batch_data)
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn err(&self, offset: u64, kind: StreamErrorKind) -> StreamError {
        StreamError { offset, kind }
    }

    /// Fills `buf` or fails with `Truncated { what }` at the field's offset.
    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), StreamError> {
        let start = self.offset;
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => return Err(self.err(start, StreamErrorKind::Truncated { what })),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(self.err(
                        start,
                        StreamErrorKind::Io {
                            what,
                            reason: os_error_text(&e),
                        },
                    ))
                }
            }
        }
        self.hasher.update(buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn u64_field(&mut self, what: &'static str) -> Result<u64, StreamError> {
        let mut b = [0u8; 8];
        self.fill(&mut b, what)?;
        Ok(u64::from_be_bytes(b))
    }

    /// Reads and checks the header.
    pub fn header(&mut self) -> Result<Header, StreamError> {
        let mut b = [0u8; HEADER_LEN];
        self.fill(&mut b[..8], "header magic")?;
        if b[..8] != MAGIC {
            let found = b[..8].escape_ascii().to_string();
            return Err(self.err(
                0,
                StreamErrorKind::BadMagic {
                    found: format!("\"{found}\""),
                },
            ));
        }
        self.fill(&mut b[8..HEADER_LEN], "header")?;
        let be32 = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[r]);
            u32::from_be_bytes(a)
        };
        let be64 = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[r]);
            u64::from_be_bytes(a)
        };
        let h = Header {
            version: be32(8..12),
            page_size: be32(12..16),
            ram_size: be64(16..24),
            vcpus: be32(24..28),
            image_id: be64(32..40),
        };
        let reserved = be32(28..32);
        if h.version != VERSION {
            return Err(self.err(
                8,
                StreamErrorKind::UnsupportedVersion {
                    found: h.version,
                    supported: VERSION,
                },
            ));
        }
        if h.page_size != PAGE_SIZE as u32 {
            return Err(self.err(
                12,
                StreamErrorKind::PageSize {
                    found: h.page_size,
                    expected: PAGE_SIZE as u32,
                },
            ));
        }
        if h.ram_size != self.expect.ram_size {
            return Err(self.err(
                16,
                StreamErrorKind::RamSize {
                    stream: h.ram_size,
                    local: self.expect.ram_size,
                },
            ));
        }
        if self.expect.vcpus != 0 && h.vcpus != self.expect.vcpus {
            return Err(self.err(
                24,
                StreamErrorKind::Vcpus {
                    stream: h.vcpus,
                    local: self.expect.vcpus,
                },
            ));
        }
        if reserved != 0 {
            return Err(self.err(28, StreamErrorKind::Reserved { found: reserved }));
        }
        if self.expect.image_id != 0 && h.image_id != self.expect.image_id {
            return Err(self.err(
                32,
                StreamErrorKind::Image {
                    stream: h.image_id,
                    local: self.expect.image_id,
                },
            ));
        }
        Ok(h)
    }

    fn out_of_order(&self, at: u64, record: &'static str, why: &'static str) -> StreamError {
        self.err(at, StreamErrorKind::OutOfOrder { record, why })
    }

    fn page_index(&mut self) -> Result<u64, StreamError> {
        let at = self.offset;
        let page = self.u64_field("page index")?;
        let pages = self.expect.pages();
        if page >= pages {
            return Err(self.err(at, StreamErrorKind::PageOutOfRange { page, pages }));
        }
        Ok(page)
    }

    /// The body of a PAGES record; every entry checked before the data is read.
    fn read_batch(&mut self) -> Result<u32, StreamError> {
        let count_at = self.offset;
        let mut c = [0u8; 4];
        self.fill(&mut c, "page batch count")?;
        let count = u32::from_be_bytes(c);
        if count == 0 || count > MAX_BATCH_ENTRIES {
            return Err(self.err(
                count_at,
                StreamErrorKind::BatchCount {
                    count,
                    max: MAX_BATCH_ENTRIES,
                },
            ));
        }
        // Bounded by MAX_BATCH_ENTRIES above.
        let mut raw = std::mem::take(&mut self.batch_data);
        raw.resize(count as usize * 8, 0);
        let entries_at = self.offset;
        let filled = self.fill(&mut raw, "page batch entries");
        self.batch_data = raw;
        filled?;
        self.batch_entries.clear();
        let pages = self.expect.pages();
        let mut full = 0u32;
        for (k, e) in self.batch_data.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(e);
            let entry = u64::from_be_bytes(b);
            let page = entry & !ZERO_ENTRY;
            if page >= pages {
                let at = entries_at + k as u64 * 8;
                return Err(self.err(at, StreamErrorKind::PageOutOfRange { page, pages }));
            }
            if entry & ZERO_ENTRY == 0 {
                full += 1;
            }
            self.batch_entries.push(entry);
        }
        if full > MAX_BATCH_DATA_PAGES {
            return Err(self.err(
                count_at,
                StreamErrorKind::BatchData {
                    pages: full,
                    max: MAX_BATCH_DATA_PAGES,
                },
            ));
        }
        // Bounded by MAX_BATCH_DATA_PAGES above.
        let mut data = std::mem::take(&mut self.batch_data);
        data.resize(full as usize * PAGE_SIZE, 0);
        let filled = self.fill(&mut data, "page batch data");
        self.batch_data = data;
        filled?;
        Ok(count)
    }

    /// Checks that a page record may appear now.
    fn page_allowed(&self, at: u64, record: &'static str) -> Result<(), StreamError> {
        match self.phase {
            Phase::BeforeFirstPass => {
                Err(self.out_of_order(at, record, "before the first pass marker"))
            }
            Phase::Ram => Ok(()),
            Phase::AfterDevice => Err(self.out_of_order(at, record, "after the device state")),
            Phase::Ended => Err(self.err(at, StreamErrorKind::TrailingData)),
        }
    }

    /// Reads the next record (the header must have been read). After
    /// `Record::End` call [`StreamReader::finish`].
    pub fn next_record(&mut self) -> Result<Record, StreamError> {
        let at = self.offset;
        let mut t = [0u8; 1];
        let what = match self.phase {
            Phase::BeforeFirstPass => "first record (expected a pass marker)",
            Phase::Ram => "record type (expected a page, pass marker or device state)",
            Phase::AfterDevice => "record type (expected the end record)",
            Phase::Ended => "record type",
        };
        // The END tag is not part of the digest: remember it before reading.
        let digest_before = self.hasher.digest();
        self.fill(&mut t, what)?;
        match t[0] {
            tag::PASS => {
                match self.phase {
                    Phase::BeforeFirstPass | Phase::Ram => {}
                    Phase::AfterDevice => {
                        return Err(self.out_of_order(at, "pass marker", "after the device state"))
                    }
                    Phase::Ended => return Err(self.err(at, StreamErrorKind::TrailingData)),
                }
                let n = self.u64_field("pass marker")?;
                if n <= self.last_pass {
                    return Err(self.err(
                        at + 1,
                        StreamErrorKind::PassNotIncreasing {
                            found: n,
                            previous: self.last_pass,
                        },
                    ));
                }
                self.last_pass = n;
                self.phase = Phase::Ram;
                Ok(Record::Pass(n))
            }
            tag::ZERO => {
                self.page_allowed(at, "zero page")?;
                let page = self.page_index()?;
                Ok(Record::ZeroPage(page))
            }
            tag::PAGE => {
                self.page_allowed(at, "page")?;
                let page = self.page_index()?;
                let mut data = Box::new([0u8; PAGE_SIZE]);
                self.fill(&mut data[..], "page data")?;
                Ok(Record::Page(page, data))
            }
            tag::PAGES => {
                self.page_allowed(at, "page batch")?;
                self.read_batch().map(Record::Pages)
            }
            tag::DEVICE => {
                match self.phase {
                    Phase::BeforeFirstPass => {
                        return Err(self.out_of_order(
                            at,
                            "device state",
                            "before the first pass marker",
                        ))
                    }
                    Phase::Ram => {}
                    Phase::AfterDevice => {
                        return Err(self.out_of_order(at, "device state", "appears a second time"))
                    }
                    Phase::Ended => return Err(self.err(at, StreamErrorKind::TrailingData)),
                }
                let mut l = [0u8; 4];
                let len_at = self.offset;
                self.fill(&mut l, "device state length")?;
                let len = u32::from_be_bytes(l);
                if len == 0 {
                    return Err(self.err(len_at, StreamErrorKind::DeviceStateEmpty));
                }
                if len > MAX_DEVICE_STATE {
                    return Err(self.err(
                        len_at,
                        StreamErrorKind::DeviceStateTooLarge {
                            len,
                            max: MAX_DEVICE_STATE,
                        },
                    ));
                }
                // Bounded by MAX_DEVICE_STATE above.
                let mut json = vec![0u8; len as usize];
                let json_at = self.offset;
                self.fill(&mut json, "device state")?;
                if let Err(reason) = DeviceRecord::decode(&json) {
                    return Err(self.err(json_at, StreamErrorKind::DeviceStateInvalid { reason }));
                }
                self.phase = Phase::AfterDevice;
                Ok(Record::DeviceState(json))
            }
            tag::END => {
                match self.phase {
                    Phase::AfterDevice => {}
                    Phase::Ended => return Err(self.err(at, StreamErrorKind::TrailingData)),
                    _ => return Err(self.out_of_order(at, "end", "before the device state")),
                }
                let d = self.u64_field("end record")?;
                if d != digest_before {
                    return Err(self.err(
                        at,
                        StreamErrorKind::Digest {
                            stream: d,
                            computed: digest_before,
                        },
                    ));
                }
                self.phase = Phase::Ended;
                Ok(Record::End(d))
            }
            other => {
                if self.phase == Phase::Ended {
                    return Err(self.err(at, StreamErrorKind::TrailingData));
                }
                Err(self.err(at, StreamErrorKind::UnknownRecord { tag: other }))
            }
        }
    }

    /// After the end record: the stream must be at EOF.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(self.err(self.offset, StreamErrorKind::TrailingData)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(self.err(
                        self.offset,
                        StreamErrorKind::Io {
                            what: "end of stream",
                            reason: os_error_text(&e),
                        },
                    ))
                }
            }
        }
    }
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

/// Where a validated stream's contents go.
pub trait StreamSink {
    /// A pass marker.
    fn pass(&mut self, _n: u64) {}
    /// A zero page (index already range-checked).
    fn zero_page(&mut self, page: u64) -> Result<(), String>;
    /// A full page (index already range-checked).
    fn page(&mut self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), String>;
    /// The start of a PAGES record of `entries` entries, whose pages follow
    /// one by one through [`StreamSink::zero_page`] and [`StreamSink::page`].
    fn batch(&mut self, _entries: usize) {}
}

/// Counters of a loaded stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSummary {
    /// The header.
    pub header: Option<Header>,
    /// Pass markers seen.
    pub passes: u64,
    /// Zero-page records.
    pub zero_pages: u64,
    /// Full-page records.
    pub pages: u64,
    /// Device record JSON (a valid [`DeviceRecord`], not yet loaded).
    pub device_state: Vec<u8>,
    /// Offset of the device state record.
    pub device_state_offset: u64,
    /// Total stream length.
    pub bytes: u64,
}

/// Reads a whole stream into `sink`, validating every field, and checks for
/// EOF after the end record. The device state is returned, not applied, so
/// the caller can load it only once the stream has been fully verified.
pub fn load<R: Read>(
    r: R,
    expect: Expect,
    sink: &mut dyn StreamSink,
) -> Result<LoadSummary, StreamError> {
    let mut rd = StreamReader::new(r, expect);
    let mut sum = LoadSummary::default();
    let h = rd.header()?;
    sum.header = Some(h);
    loop {
        let at = rd.offset();
        match rd.next_record()? {
            Record::Pass(n) => {
                sum.passes += 1;
                sink.pass(n);
            }
            Record::ZeroPage(p) => {
                sink.zero_page(p).map_err(|reason| StreamError {
                    offset: at,
                    kind: StreamErrorKind::Load { page: p, reason },
                })?;
                sum.zero_pages += 1;
            }
            Record::Page(p, data) => {
                sink.page(p, &data).map_err(|reason| StreamError {
                    offset: at,
                    kind: StreamErrorKind::Load { page: p, reason },
                })?;
                sum.pages += 1;
            }
            Record::Pages(_) => {
                let (entries, data) = rd.batch();
                sink.batch(entries.len());
                let mut pages = data.chunks_exact(PAGE_SIZE);
                for &e in entries {
                    let p = e & !ZERO_ENTRY;
                    let loaded = if e & ZERO_ENTRY != 0 {
                        sum.zero_pages += 1;
                        sink.zero_page(p)
                    } else {
                        sum.pages += 1;
                        match pages.next().and_then(|d| d.try_into().ok()) {
                            Some(d) => sink.page(p, d),
                            None => Err("page batch data missing".to_string()),
                        }
                    };
                    loaded.map_err(|reason| StreamError {
                        offset: at,
                        kind: StreamErrorKind::Load { page: p, reason },
                    })?;
                }
            }
            Record::DeviceState(json) => {
                sum.device_state = json;
                sum.device_state_offset = at;
            }
            Record::End(_) => break,
        }
    }
    rd.finish()?;
    sum.bytes = rd.offset();
    Ok(sum)
}

/// A sink that discards everything (pure validation).
pub struct NullSink;

impl StreamSink for NullSink {
    fn zero_page(&mut self, _page: u64) -> Result<(), String> {
        Ok(())
    }
    fn page(&mut self, _page: u64, _data: &[u8; PAGE_SIZE]) -> Result<(), String> {
        Ok(())
    }
}

/// A sink into a flat in-memory image (tests, tools).
pub struct VecSink<'a>(pub &'a mut [u8]);

impl StreamSink for VecSink<'_> {
    fn zero_page(&mut self, page: u64) -> Result<(), String> {
        let s = page as usize * PAGE_SIZE;
        self.0
            .get_mut(s..s + PAGE_SIZE)
            .ok_or_else(|| "page beyond image".to_string())?
            .fill(0);
        Ok(())
    }
    fn page(&mut self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), String> {
        let s = page as usize * PAGE_SIZE;
        self.0
            .get_mut(s..s + PAGE_SIZE)
            .ok_or_else(|| "page beyond image".to_string())?
            .copy_from_slice(data);
        Ok(())
    }
}
