//! Why a stream was rejected: [`StreamError`] and its kinds.

use std::io;

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
    /// A postcopy rule broken (bitmap, page not pending, pages missing at
    /// the end, postcopy not enabled here, device state not loadable).
    #[error("postcopy: {reason}")]
    Postcopy {
        /// What is wrong.
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
    /// XBZRLE record whose length is out of range.
    #[error("xbzrle page length {len} is outside 1..={max}")]
    XbzrleLength {
        /// Length in the stream.
        len: u16,
        /// Limit.
        max: u16,
    },
    /// A malformed XBZRLE encoding (offset: the offending byte).
    #[error("xbzrle page {page}: {reason}")]
    Xbzrle {
        /// Page index.
        page: u64,
        /// What is wrong.
        reason: String,
    },
    /// A SPARSE record's length outside 1..=max.
    #[error("sparse page length {len} is outside 1..={max}")]
    SparseLength {
        /// Length in the stream.
        len: u16,
        /// Limit.
        max: u16,
    },
    /// A malformed SPARSE encoding (offset: the offending byte).
    #[error("sparse page {page}: {reason}")]
    Sparse {
        /// Page index.
        page: u64,
        /// What is wrong.
        reason: String,
    },
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
