//! The encoder: [`StreamWriter`].

use super::direct::{advance_iovecs, moved};
use super::splice::Splicer;
use super::StreamDigest;
use super::{tag, Header, MAX_BATCH_DATA_PAGES, MAX_BATCH_ENTRIES, MAX_DEVICE_STATE, PAGE_SIZE};
use std::io::{self, BufWriter, IoSlice, Write};
use std::os::fd::AsRawFd;

/// Writes a stream, counting bytes and digesting them for the end record
/// (every byte except page data: `docs/migration-stream.md`).
pub struct StreamWriter<W: Write> {
    inner: W,
    hasher: StreamDigest,
    written: u64,
    /// Page data of [`pages_raw`](StreamWriter::pages_raw) goes by
    /// reference (see [`StreamWriter::splice_pages`]).
    splice: Option<Splicer>,
}

impl<W: Write> StreamWriter<W> {
    /// Wraps a writer (buffer it yourself).
    pub fn new(inner: W) -> StreamWriter<W> {
        StreamWriter {
            inner,
            hasher: StreamDigest::new(),
            written: 0,
            splice: None,
        }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.put_data(b)?;
        self.hasher.update(b);
        Ok(())
    }

    /// Page data: written, not digested.
    fn put_data(&mut self, b: &[u8]) -> io::Result<()> {
        self.inner.write_all(b)?;
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
        self.put_data(data)
    }

    /// A PAGES record: `entries` (page indices, [`ZERO_ENTRY`] set for zero
    /// pages) and the data of the full pages in entry order, written with
    /// vectored I/O straight from `data`. The caller keeps within
    /// [`MAX_BATCH_ENTRIES`] and [`MAX_BATCH_DATA_PAGES`].
    pub fn pages(&mut self, entries: &[u64], data: &[u8]) -> io::Result<()> {
        self.pages_vectored(entries, &[data])
    }

    /// [`StreamWriter::pages`] with the full pages' data in pieces (e.g.
    /// one slice per page, straight from guest RAM): one vectored write of
    /// the record head and every piece.
    pub fn pages_vectored(&mut self, entries: &[u64], data: &[&[u8]]) -> io::Result<()> {
        let len: usize = data.iter().map(|d| d.len()).sum();
        debug_assert!(len <= MAX_BATCH_DATA_PAGES as usize * PAGE_SIZE);
        let head = self.pages_head(entries);
        let mut slices = Vec::with_capacity(1 + data.len());
        slices.push(IoSlice::new(&head));
        for d in data {
            slices.push(IoSlice::new(d));
        }
        self.written += (head.len() + len) as u64;
        write_all_vectored(&mut self.inner, &mut slices)
    }

    /// The head of a PAGES record (tag, count, entries), digested.
    fn pages_head(&mut self, entries: &[u64]) -> Vec<u8> {
        debug_assert!(!entries.is_empty() && entries.len() <= MAX_BATCH_ENTRIES as usize);
        let mut head = Vec::with_capacity(5 + entries.len() * 8);
        head.push(tag::PAGES);
        head.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for e in entries {
            head.extend_from_slice(&e.to_be_bytes());
        }
        self.hasher.update(&head);
        head
    }

    /// An XBZRLE record: `page` encoded by `migration::xbzrle::encode`
    /// (1..=4096 bytes; the caller keeps within that).
    pub fn xbzrle(&mut self, page: u64, encoded: &[u8]) -> io::Result<()> {
        self.encoded(tag::XBZRLE, page, encoded)
    }

    /// A SPARSE record: `page` encoded by `migration::xbzrle::encode_sparse`
    /// (its delta against an all-zero page, 1..=4096 bytes).
    pub fn sparse(&mut self, page: u64, encoded: &[u8]) -> io::Result<()> {
        self.encoded(tag::SPARSE, page, encoded)
    }

    fn encoded(&mut self, tag: u8, page: u64, encoded: &[u8]) -> io::Result<()> {
        debug_assert!(!encoded.is_empty() && encoded.len() <= PAGE_SIZE);
        let mut b = [0u8; 11];
        b[0] = tag;
        b[1..9].copy_from_slice(&page.to_be_bytes());
        b[9..].copy_from_slice(&(encoded.len() as u16).to_be_bytes());
        self.put(&b)?;
        self.put(encoded)
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

    /// The POSTCOPY record: the bitmap of the pages still to come (as
    /// many words as the RAM has 64-page groups).
    pub fn postcopy(&mut self, bitmap: &[u64]) -> io::Result<()> {
        let mut b = Vec::with_capacity(1 + bitmap.len() * 8);
        b.push(tag::POSTCOPY);
        for w in bitmap {
            b.extend_from_slice(&w.to_be_bytes());
        }
        self.put(&b)
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

impl<C: Write + AsRawFd> StreamWriter<BufWriter<C>> {
    /// From now on [`pages_raw`](Self::pages_raw) hands page data to the
    /// channel by reference (`vmsplice` + `splice`, see `stream::splice`),
    /// when the kernel gives a pipe for it: only for a unix socket whose
    /// peer reads the stream to its end before the source reports
    /// `completed`. Whether it will.
    pub fn splice_pages(&mut self) -> bool {
        if self.splice.is_none() {
            self.splice = Splicer::new().ok();
        }
        self.splice.is_some()
    }

    /// A PAGES record whose page data the kernel reads straight from
    /// `pages` (4096 bytes each, in entry order, e.g. guest RAM that vCPUs
    /// may be writing): what is buffered is flushed, then the record head
    /// and the pages go in one `writev(2)` (more on a partial write), or,
    /// after [`splice_pages`](Self::splice_pages), the head is written and
    /// the pages are spliced.
    ///
    /// # Safety
    /// Each pointer is valid for 4096 bytes of reads for the call (spliced:
    /// stays mapped until the peer has read it), and is not written through
    /// a Rust reference meanwhile (hardware-level writes, such as a vCPU's
    /// atomics, may race: the bytes sent are then some mix, which the
    /// source's dirty log makes it send again).
    pub unsafe fn pages_raw(&mut self, entries: &[u64], pages: &[*const u8]) -> io::Result<()> {
        debug_assert!(pages.len() <= MAX_BATCH_DATA_PAGES as usize);
        let head = self.pages_head(entries);
        self.inner.flush()?;
        let fd = self.inner.get_ref().as_raw_fd();
        if let Some(s) = &self.splice {
            self.inner.get_mut().write_all(&head)?;
            self.written += (head.len() + pages.len() * PAGE_SIZE) as u64;
            // SAFETY: the caller's contract (pages of RAM that stays mapped).
            return unsafe { s.send(fd, pages) };
        }
        let mut iov = Vec::with_capacity(1 + pages.len());
        iov.push(libc::iovec {
            iov_base: head.as_ptr().cast_mut().cast(),
            iov_len: head.len(),
        });
        iov.extend(pages.iter().map(|p| libc::iovec {
            iov_base: p.cast_mut().cast(),
            iov_len: PAGE_SIZE,
        }));
        self.written += (head.len() + pages.len() * PAGE_SIZE) as u64;
        // SAFETY: the head lives to the end of this call; the pages are the
        // caller's contract.
        unsafe { writev_all(fd, &mut iov) }
    }
}

/// `writev(2)` until every region is written, retrying on `EINTR`.
///
/// # Safety
/// Every region is valid for reads of its length during the call.
unsafe fn writev_all(fd: std::os::fd::RawFd, mut iov: &mut [libc::iovec]) -> io::Result<()> {
    while !iov.is_empty() {
        let n = iov.len().min(1024) as libc::c_int;
        // SAFETY: `iov` holds at least `n` valid regions (the caller's contract).
        let r = unsafe { libc::writev(fd, iov.as_ptr(), n) };
        if let Some(n) = moved(r)? {
            iov = advance_iovecs(iov, n);
        }
    }
    Ok(())
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
