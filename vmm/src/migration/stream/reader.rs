//! The validating decoder: [`StreamReader`].

use super::direct::{read_raw_exact, DirectPages, StreamInput};
use super::*;
use std::io;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Header read, no pass marker yet.
    BeforeFirstPass,
    /// Pages allowed.
    Ram,
    /// Device state seen, only END allowed.
    AfterDevice,
    /// POSTCOPY seen, only DEVICE allowed.
    PostcopyDevice,
    /// Postcopy running: pending pages and END allowed.
    Postcopy,
    /// END seen, only EOF allowed.
    Ended,
}

/// Reads and validates a stream record by record.
pub struct StreamReader<R: StreamInput> {
    inner: R,
    hasher: StreamDigest,
    offset: u64,
    expect: Expect,
    phase: Phase,
    last_pass: u64,
    /// The last PAGES record: entries, then the full pages' data.
    batch_entries: Vec<u64>,
    batch_data: Vec<u8>,
    /// The raw bytes of the last PAGES record's entries. Kept apart from
    /// `batch_data` so that neither buffer shrinks and regrows per record:
    /// regrowing zeroed up to 1 MiB per record, 28% of the loader's time.
    batch_raw: Vec<u8>,
    /// The last PAGES record's full pages were read straight into guest
    /// RAM (`stream::direct`); `batch_data` is empty then.
    batch_in_place: bool,
    /// A multifd channel (`docs/migration-stream.md`): no header, only
    /// pass markers (syncs) and PAGES, then END.
    channel: bool,
    /// Postcopy: pages announced by POSTCOPY and not received yet.
    pending: Vec<u64>,
    pending_count: u64,
}

impl<R: StreamInput> StreamReader<R> {
    /// A reader for a stream that must match `expect`.
    pub fn new(inner: R, expect: Expect) -> StreamReader<R> {
        StreamReader {
            inner,
            hasher: StreamDigest::new(),
            offset: 0,
            expect,
            phase: Phase::BeforeFirstPass,
            last_pass: 0,
            batch_entries: Vec::new(),
            batch_data: Vec::new(),
            batch_raw: Vec::new(),
            batch_in_place: false,
            channel: false,
            pending: Vec::new(),
            pending_count: 0,
        }
    }

    /// A reader for the body of a multifd channel (after its hello):
    /// `PASS (PASS|PAGES)* END <eof>`, the END digest covering the body.
    pub fn channel(inner: R, expect: Expect) -> StreamReader<R> {
        StreamReader {
            channel: true,
            ..StreamReader::new(inner, expect)
        }
    }

    /// A reader for a resumed postcopy connection after its resume hello
    /// (`(ZERO|PAGE|PAGES)* END <eof>`, END's digest covering these bytes):
    /// exactly the pages of `pending` (the destination's missing pages).
    pub fn resumed(inner: R, expect: Expect, pending: Vec<u64>) -> StreamReader<R> {
        StreamReader {
            phase: Phase::Postcopy,
            pending_count: pending.iter().map(|w| u64::from(w.count_ones())).sum(),
            pending,
            ..StreamReader::new(inner, expect)
        }
    }

    /// On a multifd channel only pass markers, PAGES and END may appear.
    fn main_only(&self, at: u64, record: &'static str) -> Result<(), StreamError> {
        if self.channel {
            return Err(self.out_of_order(at, record, "on a multifd channel"));
        }
        Ok(())
    }

    /// The entries and full-page data of the last [`Record::Pages`]: entry
    /// `k` without [`ZERO_ENTRY`] owns the next 4096 bytes of data.
    /// The data is `None` when the full pages were read straight into
    /// their targets ([`StreamReader::next_record_direct`]).
    pub fn batch(&self) -> (&[u64], Option<&[u8]>) {
        let data = (!self.batch_in_place).then_some(&self.batch_data[..]);
        (&self.batch_entries, data)
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
        self.fill_data(buf, what)?;
        self.hasher.update(buf);
        Ok(())
    }

    /// [`fill`](Self::fill) for page data, which the digest does not cover.
    fn fill_data(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), StreamError> {
        let start = self.offset;
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read_some(&mut buf[got..]) {
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
        self.take_pending(at, page)?;
        Ok(page)
    }

    /// In postcopy, a page may come only if it is pending, and only once.
    fn take_pending(&mut self, at: u64, page: u64) -> Result<(), StreamError> {
        if self.phase != Phase::Postcopy {
            return Ok(());
        }
        let (w, bit) = ((page / 64) as usize, 1u64 << (page % 64));
        if self.pending.get(w).is_some_and(|v| v & bit != 0) {
            self.pending[w] &= !bit;
            self.pending_count -= 1;
            return Ok(());
        }
        Err(self.err(
            at,
            StreamErrorKind::Postcopy {
                reason: format!("page {page} is not pending (sent twice or not announced)"),
            },
        ))
    }

    /// The body of a POSTCOPY record: the bitmap, checked against the RAM.
    fn read_postcopy(&mut self) -> Result<Vec<u64>, StreamError> {
        let words = self.expect.bitmap_words();
        let pages = self.expect.pages();
        // Bounded by the local RAM size, not by anything in the stream.
        let mut raw = vec![0u8; words * 8];
        let at = self.offset;
        self.fill(&mut raw, "postcopy bitmap")?;
        let bitmap: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if !pages.is_multiple_of(64) {
            if let Some(last) = bitmap.last() {
                if last >> (pages % 64) != 0 {
                    return Err(self.err(
                        at + (words as u64 - 1) * 8,
                        StreamErrorKind::Postcopy {
                            reason: format!(
                                "bitmap marks pages beyond the last page {}",
                                pages - 1
                            ),
                        },
                    ));
                }
            }
        }
        self.pending_count = bitmap.iter().map(|w| u64::from(w.count_ones())).sum();
        self.pending = bitmap.clone();
        Ok(bitmap)
    }

    /// The body of a PAGES record; every entry checked before the data is read.
    fn read_batch(&mut self, direct: Option<&dyn DirectPages>) -> Result<u32, StreamError> {
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
        let mut raw = std::mem::take(&mut self.batch_raw);
        raw.resize(count as usize * 8, 0);
        let entries_at = self.offset;
        let filled = self.fill(&mut raw, "page batch entries");
        self.batch_raw = raw;
        filled?;
        self.batch_entries.clear();
        let pages = self.expect.pages();
        let mut full = 0u32;
        for (k, e) in self.batch_raw.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(e);
            let entry = u64::from_be_bytes(b);
            let page = entry & !ZERO_ENTRY;
            let at = entries_at + k as u64 * 8;
            if page >= pages {
                return Err(self.err(at, StreamErrorKind::PageOutOfRange { page, pages }));
            }
            if entry & ZERO_ENTRY == 0 {
                full += 1;
            }
            self.batch_entries.push(entry);
        }
        for k in 0..self.batch_entries.len() {
            let page = self.batch_entries[k] & !ZERO_ENTRY;
            self.take_pending(entries_at + k as u64 * 8, page)?;
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
        self.batch_in_place = false;
        if let Some(target) = direct.filter(|_| self.inner.raw() && full > 0) {
            if self.read_batch_direct(target, full)? {
                return Ok(count);
            }
        }
        // Bounded by MAX_BATCH_DATA_PAGES above.
        let mut data = std::mem::take(&mut self.batch_data);
        data.resize(full as usize * PAGE_SIZE, 0);
        let filled = self.fill_data(&mut data, "page batch data");
        self.batch_data = data;
        filled?;
        Ok(count)
    }

    /// The data of the `full` pages of the batch just validated, read
    /// straight into `target`'s pages; `Ok(false)` if the target has no
    /// place for one of them (nothing read yet).
    fn read_batch_direct(
        &mut self,
        target: &dyn DirectPages,
        full: u32,
    ) -> Result<bool, StreamError> {
        // Entries in strictly increasing page order (what the source
        // sends) name no page twice, so reading every full page first and
        // applying the zero entries after gives what applying the entries
        // in order gives. Any other record goes through the batch buffer.
        let page = |e: &u64| e & !ZERO_ENTRY;
        if !self
            .batch_entries
            .windows(2)
            .all(|w| page(&w[0]) < page(&w[1]))
        {
            return Ok(false);
        }
        let mut iov = Vec::with_capacity(full as usize);
        for e in &self.batch_entries {
            if e & ZERO_ENTRY == 0 {
                let Some(ptr) = target.page_target(page(e)) else {
                    return Ok(false);
                };
                iov.push(libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: PAGE_SIZE,
                });
            }
        }
        let start = self.offset;
        let what = "page batch data";
        // SAFETY: the target's pages are valid for writes (its contract) and
        // no Rust reference to them exists during the read.
        match unsafe { read_raw_exact(&mut self.inner, &mut iov) } {
            Ok(true) => {}
            Ok(false) => return Err(self.err(start, StreamErrorKind::Truncated { what })),
            Err(e) => {
                let reason = os_error_text(&e);
                return Err(self.err(start, StreamErrorKind::Io { what, reason }));
            }
        }
        self.offset += u64::from(full) * PAGE_SIZE as u64;
        self.batch_in_place = true;
        Ok(true)
    }

    /// The body of an XBZRLE (`sparse` false) or SPARSE record: index,
    /// length, then the encoding, validated whole (runs inside the page and
    /// the record) before it is handed on.
    fn read_encoded(&mut self, sparse: bool) -> Result<Record, StreamError> {
        let (len_what, data_what) = if sparse {
            ("sparse page length", "sparse page data")
        } else {
            ("xbzrle page length", "xbzrle page data")
        };
        let page = self.page_index()?;
        let len_at = self.offset;
        let mut l = [0u8; 2];
        self.fill(&mut l, len_what)?;
        let len = u16::from_be_bytes(l);
        let max = crate::migration::xbzrle::MAX_ENCODED as u16;
        if len == 0 || len > max {
            let kind = if sparse {
                StreamErrorKind::SparseLength { len, max }
            } else {
                StreamErrorKind::XbzrleLength { len, max }
            };
            return Err(self.err(len_at, kind));
        }
        // Bounded by MAX_ENCODED (one page) above.
        let mut data = vec![0u8; len as usize];
        let data_at = self.offset;
        self.fill(&mut data, data_what)?;
        crate::migration::xbzrle::walk(&data, |_, _| {}).map_err(|e| {
            let reason = e.reason;
            let kind = if sparse {
                StreamErrorKind::Sparse { page, reason }
            } else {
                StreamErrorKind::Xbzrle { page, reason }
            };
            self.err(data_at + e.at as u64, kind)
        })?;
        Ok(if sparse {
            Record::Sparse(page, data)
        } else {
            Record::Xbzrle(page, data)
        })
    }

    /// Checks that a page record may appear now.
    fn page_allowed(&self, at: u64, record: &'static str) -> Result<(), StreamError> {
        match self.phase {
            Phase::BeforeFirstPass => {
                Err(self.out_of_order(at, record, "before the first pass marker"))
            }
            Phase::Ram | Phase::Postcopy => Ok(()),
            Phase::AfterDevice => Err(self.out_of_order(at, record, "after the device state")),
            Phase::PostcopyDevice => {
                Err(self.out_of_order(at, record, "between postcopy and the device state"))
            }
            Phase::Ended => Err(self.err(at, StreamErrorKind::TrailingData)),
        }
    }

    /// Reads the next record (the header must have been read). After
    /// `Record::End` call [`StreamReader::finish`].
    pub fn next_record(&mut self) -> Result<Record, StreamError> {
        self.next_record_direct(None)
    }

    /// [`StreamReader::next_record`], a PAGES record's full pages read
    /// straight into `direct`'s pages when given and the input can
    /// ([`StreamReader::batch`] then has no data for them).
    pub fn next_record_direct(
        &mut self,
        direct: Option<&dyn DirectPages>,
    ) -> Result<Record, StreamError> {
        let at = self.offset;
        let mut t = [0u8; 1];
        let what = match self.phase {
            Phase::BeforeFirstPass => "first record (expected a pass marker)",
            Phase::Ram => "record type (expected a page, pass marker or device state)",
            Phase::AfterDevice => "record type (expected the end record)",
            Phase::PostcopyDevice => "record type (expected the device state)",
            Phase::Postcopy => "record type (expected a page or the end record)",
            Phase::Ended => "record type",
        };
        // The END tag is not part of the digest: remember it before reading.
        let digest_before = self.hasher.digest();
        self.fill(&mut t, what)?;
        match t[0] {
            tag::PASS => {
                match self.phase {
                    Phase::BeforeFirstPass | Phase::Ram => {}
                    Phase::AfterDevice | Phase::Postcopy => {
                        return Err(self.out_of_order(at, "pass marker", "after the device state"))
                    }
                    Phase::PostcopyDevice => {
                        return Err(self.out_of_order(at, "pass marker", "after postcopy started"))
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
                self.main_only(at, "zero page")?;
                self.page_allowed(at, "zero page")?;
                let page = self.page_index()?;
                Ok(Record::ZeroPage(page))
            }
            tag::PAGE => {
                self.main_only(at, "page")?;
                self.page_allowed(at, "page")?;
                let page = self.page_index()?;
                let mut data = Box::new([0u8; PAGE_SIZE]);
                self.fill_data(&mut data[..], "page data")?;
                Ok(Record::Page(page, data))
            }
            tag::PAGES => {
                self.page_allowed(at, "page batch")?;
                self.read_batch(direct).map(Record::Pages)
            }
            tag::XBZRLE | tag::SPARSE => {
                let sparse = t[0] == tag::SPARSE;
                let what = if sparse { "sparse page" } else { "xbzrle page" };
                self.main_only(at, what)?;
                if self.phase == Phase::Postcopy {
                    return Err(self.out_of_order(at, what, "in postcopy"));
                }
                self.page_allowed(at, what)?;
                self.read_encoded(sparse)
            }
            tag::DEVICE => {
                self.main_only(at, "device state")?;
                match self.phase {
                    Phase::BeforeFirstPass => {
                        return Err(self.out_of_order(
                            at,
                            "device state",
                            "before the first pass marker",
                        ))
                    }
                    Phase::Ram | Phase::PostcopyDevice => {}
                    Phase::AfterDevice | Phase::Postcopy => {
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
                self.phase = if self.phase == Phase::PostcopyDevice {
                    Phase::Postcopy
                } else {
                    Phase::AfterDevice
                };
                Ok(Record::DeviceState(json))
            }
            tag::POSTCOPY => {
                self.main_only(at, "postcopy")?;
                match self.phase {
                    Phase::Ram => {}
                    Phase::BeforeFirstPass => {
                        return Err(self.out_of_order(
                            at,
                            "postcopy",
                            "before the first pass marker",
                        ))
                    }
                    Phase::Ended => return Err(self.err(at, StreamErrorKind::TrailingData)),
                    _ => return Err(self.out_of_order(at, "postcopy", "appears a second time")),
                }
                let bitmap = self.read_postcopy()?;
                self.phase = Phase::PostcopyDevice;
                Ok(Record::Postcopy(bitmap))
            }
            tag::END => {
                match (self.phase, self.channel) {
                    (Phase::AfterDevice, false) | (Phase::Ram, true) => {}
                    (Phase::Postcopy, false) if self.pending_count > 0 => {
                        return Err(self.err(
                            at,
                            StreamErrorKind::Postcopy {
                                reason: format!(
                                    "end of stream with {} pages never sent",
                                    self.pending_count
                                ),
                            },
                        ))
                    }
                    (Phase::Postcopy, false) => {}
                    (Phase::Ended, _) => return Err(self.err(at, StreamErrorKind::TrailingData)),
                    (_, true) => {
                        return Err(self.out_of_order(at, "end", "before the first pass marker"))
                    }
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
            match self.inner.read_some(&mut b) {
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
