//! Loading a whole stream into a [`StreamSink`].

use super::direct::{DirectPages, StreamInput};
use super::*;

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
    /// A POSTCOPY record: the pages still to come (each arrives later,
    /// exactly once, through `zero_page`/`page`).
    fn postcopy(&mut self, _bitmap: &[u64]) -> Result<(), String> {
        Ok(())
    }
    /// An XBZRLE page (index range-checked, encoding validated): decode it
    /// against the page's current content.
    fn xbzrle(&mut self, page: u64, encoded: &[u8]) -> Result<(), String>;
    /// A SPARSE page (index range-checked, encoding validated): the page is
    /// zero but for the encoding's runs. By default decoded into a zeroed
    /// buffer and handed to [`StreamSink::page`].
    fn sparse(&mut self, page: u64, encoded: &[u8]) -> Result<(), String> {
        let data = crate::migration::xbzrle::decode_sparse(encoded).map_err(|e| e.reason)?;
        self.page(page, &data)
    }
    /// The device state after a POSTCOPY record (already a valid
    /// [`DeviceRecord`]): the destination may run the guest from here.
    fn postcopy_device(&mut self, _json: &[u8]) -> Result<(), String> {
        Ok(())
    }
    /// Where a PAGES record's full pages may be read straight into (then
    /// [`StreamSink::page`] is not called for them); `None`: through
    /// [`StreamSink::page`].
    fn direct(&self) -> Option<&dyn DirectPages> {
        None
    }
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
    /// XBZRLE records.
    pub xbzrle_pages: u64,
    /// SPARSE records.
    pub sparse_pages: u64,
    /// Device record JSON (a valid [`DeviceRecord`], not yet loaded).
    pub device_state: Vec<u8>,
    /// Offset of the device state record.
    pub device_state_offset: u64,
    /// Total stream length.
    pub bytes: u64,
    /// Whether the stream switched to postcopy (the device state was then
    /// handed to [`StreamSink::postcopy_device`] when it arrived).
    pub postcopy: bool,
}

/// Reads a whole stream into `sink`, validating every field, and checks for
/// EOF after the end record. The device state is returned, not applied, so
/// the caller can load it only once the stream has been fully verified.
pub fn load<R: StreamInput>(
    r: R,
    expect: Expect,
    sink: &mut dyn StreamSink,
) -> Result<LoadSummary, StreamError> {
    let mut rd = StreamReader::new(r, expect);
    let mut sum = LoadSummary::default();
    let h = rd.header()?;
    sum.header = Some(h);
    load_records(rd, sum, sink)
}

/// Reads the rest of a resumed postcopy connection (after the resume
/// hello) into `sink`: the pages of `pending`, each once, then END and EOF.
pub fn load_resumed<R: StreamInput>(
    r: R,
    expect: Expect,
    pending: Vec<u64>,
    sink: &mut dyn StreamSink,
) -> Result<LoadSummary, StreamError> {
    let sum = LoadSummary {
        postcopy: true,
        ..LoadSummary::default()
    };
    load_records(StreamReader::resumed(r, expect, pending), sum, sink)
}

fn load_records<R: StreamInput>(
    mut rd: StreamReader<R>,
    mut sum: LoadSummary,
    sink: &mut dyn StreamSink,
) -> Result<LoadSummary, StreamError> {
    loop {
        let at = rd.offset();
        match rd.next_record_direct(sink.direct())? {
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
                let (zero, full) = load_batch(entries, data, at, sink)?;
                sum.zero_pages += zero;
                sum.pages += full;
            }
            Record::Xbzrle(p, data) => {
                sink.xbzrle(p, &data).map_err(|reason| StreamError {
                    offset: at,
                    kind: StreamErrorKind::Load { page: p, reason },
                })?;
                sum.xbzrle_pages += 1;
            }
            Record::Sparse(p, data) => {
                sink.sparse(p, &data).map_err(|reason| StreamError {
                    offset: at,
                    kind: StreamErrorKind::Load { page: p, reason },
                })?;
                sum.sparse_pages += 1;
            }
            Record::Postcopy(bitmap) => {
                sum.postcopy = true;
                sink.postcopy(&bitmap).map_err(|reason| StreamError {
                    offset: at,
                    kind: StreamErrorKind::Postcopy { reason },
                })?;
            }
            Record::DeviceState(json) => {
                if sum.postcopy {
                    sink.postcopy_device(&json).map_err(|reason| StreamError {
                        offset: at,
                        kind: StreamErrorKind::Postcopy { reason },
                    })?;
                }
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

/// Applies one PAGES record (entries and full-page data as
/// [`StreamReader::batch`] returns them, read at offset `at`) to `sink`;
/// with `data` `None` the full pages are in place already and only the
/// zero pages go to `sink`. Returns the number of zero and full pages.
pub fn load_batch(
    entries: &[u64],
    data: Option<&[u8]>,
    at: u64,
    sink: &mut dyn StreamSink,
) -> Result<(u64, u64), StreamError> {
    sink.batch(entries.len());
    let mut pages = data.map(|d| d.chunks_exact(PAGE_SIZE));
    let (mut zero, mut full) = (0, 0);
    for &e in entries {
        let p = e & !ZERO_ENTRY;
        let loaded = if e & ZERO_ENTRY != 0 {
            zero += 1;
            sink.zero_page(p)
        } else {
            full += 1;
            match pages
                .as_mut()
                .map(|it| it.next().and_then(|d| d.try_into().ok()))
            {
                None => Ok(()),
                Some(Some(d)) => sink.page(p, d),
                Some(None) => Err("page batch data missing".to_string()),
            }
        };
        loaded.map_err(|reason| StreamError {
            offset: at,
            kind: StreamErrorKind::Load { page: p, reason },
        })?;
    }
    Ok((zero, full))
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
    fn xbzrle(&mut self, _page: u64, _encoded: &[u8]) -> Result<(), String> {
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
    fn xbzrle(&mut self, page: u64, encoded: &[u8]) -> Result<(), String> {
        let s = page as usize * PAGE_SIZE;
        let dst: &mut [u8; PAGE_SIZE] = self
            .0
            .get_mut(s..s + PAGE_SIZE)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| "page beyond image".to_string())?;
        crate::migration::xbzrle::decode(encoded, dst).map_err(|e| e.reason)
    }
}
