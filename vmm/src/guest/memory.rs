//! Guest-physical RAM backed by an anonymous or file mapping
//! ([`RamBacking`]), shared by vCPU threads and the migration thread.
//!
//! The mapping is accessed as a slice of [`AtomicU64`] (relaxed loads and
//! stores compile to plain moves), and whole pages are copied in and out by
//! migration with one `rep movsb` in inline assembly (`copy_bytes`), so
//! concurrent access is free of data races in Rust's sense. Every guest write goes through one of the `write_*` /
//! [`GuestRam::fetch_add_u8`] accessors, which store the data and then mark the
//! touched pages in the [`DirtyBitmap`] (see [`crate::guest::dirty`] for the
//! ordering protocol).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::MmapMut;
use thiserror::Error;
use xxhash_rust::xxh3::Xxh3;

use super::backing::RamBacking;
use super::dirty::DirtyBitmap;
use super::postcopy_gate::PostcopyGate;

/// Guest page size in bytes.
pub const PAGE_SIZE: usize = 4096;
const PAGE: u64 = PAGE_SIZE as u64;
const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;

/// Errors from guest RAM creation and access.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GuestRamError {
    /// RAM size is zero, not a multiple of [`PAGE_SIZE`], or too large.
    #[error("invalid guest RAM size {size}: must be a non-zero multiple of 4096 that fits in the address space")]
    InvalidSize {
        /// The requested size.
        size: u64,
    },
    /// The mapping (anonymous or of `mem-path`) could not be created.
    #[error("cannot map {size} bytes of guest RAM: {message}")]
    Map {
        /// The requested size.
        size: u64,
        /// The OS error text.
        message: String,
    },
    /// `-mem-prealloc` could not fault the RAM in.
    #[error("cannot preallocate {size} bytes of guest RAM: {message}")]
    Prealloc {
        /// The RAM size.
        size: u64,
        /// The OS error text.
        message: String,
    },
    /// An access `[addr, addr + len)` reaches outside guest RAM.
    #[error("guest access of {len} bytes at {addr:#x} is outside RAM of {size:#x} bytes")]
    OutOfRange {
        /// First guest-physical address.
        addr: u64,
        /// Access length in bytes.
        len: u64,
        /// RAM size.
        size: u64,
    },
    /// A page index is not below the page count.
    #[error("page {page} is outside guest RAM ({pages} pages)")]
    PageOutOfRange {
        /// The page index.
        page: u64,
        /// Number of pages.
        pages: u64,
    },
}

/// Observer notified of every guest write, after the data is stored and the
/// pages are marked dirty. Used by tests to record a write log.
pub trait WriteObserver: Send + Sync {
    /// `count` pages starting at `first_page` were written.
    fn on_write(&self, first_page: u64, count: u64);
}

/// Guest-physical RAM with software dirty tracking.
pub struct GuestRam {
    /// The mapping; only accessed through [`GuestRam::words`].
    map: MmapMut,
    size: u64,
    dirty: DirtyBitmap,
    /// Pages ever written (set before the data is stored, never cleared):
    /// a page outside it is still the mapping's zero fill, so migration
    /// neither reads it (no fault) nor writes it on the destination.
    touched: Vec<AtomicU64>,
    /// Pages a postcopy destination has not received yet.
    gate: PostcopyGate,
    observer: Option<Arc<dyn WriteObserver>>,
}

impl fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRam")
            .field("size", &self.size)
            .field("dirty_pages", &self.dirty.count())
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl GuestRam {
    /// Maps `size` bytes of zeroed guest RAM. Pages cost nothing until touched.
    pub fn new(size: u64) -> Result<GuestRam, GuestRamError> {
        Self::build(size, &RamBacking::Anonymous, None)
    }

    /// Like [`new`](Self::new), with a [`WriteObserver`] called on every guest write.
    pub fn with_observer(
        size: u64,
        observer: Arc<dyn WriteObserver>,
    ) -> Result<GuestRam, GuestRamError> {
        Self::build(size, &RamBacking::Anonymous, Some(observer))
    }

    /// Maps `size` bytes of guest RAM from `backing` (a file's RAM starts
    /// with the file's contents), with an optional [`WriteObserver`].
    pub fn with_backing(
        size: u64,
        backing: &RamBacking,
        observer: Option<Arc<dyn WriteObserver>>,
    ) -> Result<GuestRam, GuestRamError> {
        Self::build(size, backing, observer)
    }

    fn build(
        size: u64,
        backing: &RamBacking,
        observer: Option<Arc<dyn WriteObserver>>,
    ) -> Result<GuestRam, GuestRamError> {
        if size == 0 || !size.is_multiple_of(PAGE) || size > isize::MAX as u64 {
            return Err(GuestRamError::InvalidSize { size });
        }
        let len = usize::try_from(size).map_err(|_| GuestRamError::InvalidSize { size })?;
        let map = backing
            .map(len)
            .map_err(|message| GuestRamError::Map { size, message })?;
        if super::huge_pages::advise(size) {
            // Best effort, as in QEMU: a host without THP refuses the
            // advice and the RAM works as before.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        // A file's pages may hold data: none of them is known to be zero.
        let touched = if backing.has_contents() { u64::MAX } else { 0 };
        Ok(GuestRam {
            map,
            size,
            dirty: DirtyBitmap::new(size / PAGE),
            touched: (0..(size / PAGE).div_ceil(64))
                .map(|_| AtomicU64::new(touched))
                .collect(),
            gate: PostcopyGate::new(size / PAGE),
            observer,
        })
    }

    /// `-mem-prealloc`: faults in all of guest RAM now, on `threads`
    /// threads, without changing its contents ([`super::prealloc`]).
    pub fn prealloc(&self, threads: u32) -> Result<(), GuestRamError> {
        super::prealloc::populate(self.words(), threads).map_err(|message| {
            GuestRamError::Prealloc {
                size: self.size,
                message,
            }
        })
    }

    /// RAM size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of [`PAGE_SIZE`] pages.
    pub fn page_count(&self) -> u64 {
        self.size / PAGE
    }

    /// The dirty bitmap written by every guest write.
    pub fn dirty(&self) -> &DirtyBitmap {
        &self.dirty
    }

    /// The postcopy gate every guest access goes through.
    pub fn postcopy_gate(&self) -> &PostcopyGate {
        &self.gate
    }

    /// Postcopy loader: writes page `page` (`None`: zero) only if it is
    /// still missing, then lets blocked vCPUs at it. A page that is present
    /// is never overwritten (the destination guest may have newer data).
    pub fn postcopy_fill(&self, page: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), String> {
        self.check_page(page).map_err(|e| e.to_string())?;
        if !self.gate.is_missing(page) {
            return Err(format!("page {page} is not missing on the destination"));
        }
        match data {
            Some(d) => self.load_page(page, d),
            None => self.zero_page(page),
        }
        .map_err(|e| e.to_string())?;
        self.gate.filled(page);
        Ok(())
    }

    /// Blocks while a page of `[addr, addr + len)` (checked, `len > 0`)
    /// has not arrived in postcopy.
    #[inline]
    fn present(&self, addr: u64, len: u64) {
        self.gate.wait_present(addr / PAGE, (addr + len - 1) / PAGE);
    }

    /// The whole RAM as atomic words.
    #[inline]
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so aligned for AtomicU64), its
        // length is a non-zero multiple of 4096 (so of 8), it is readable and
        // writable and lives as long as `self`. AtomicU64 has the size and
        // bit validity of u64 and every bit pattern is valid. No `&`/`&mut
        // [u8]` to the mapping is ever created (`as_ptr` does not go through
        // `Deref`), so all Rust-level accesses are atomic and free of data
        // races; page copies go through `copy_bytes` (inline assembly), and the
        // migration channels' page data is read and written by the kernel
        // (`readv`/`writev` on raw pointers: `load_target`, `send_source`).
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.map.len() / 8)
        }
    }

    fn check(&self, addr: u64, len: u64) -> Result<(), GuestRamError> {
        match addr.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(GuestRamError::OutOfRange {
                addr,
                len,
                size: self.size,
            }),
        }
    }

    fn check_page(&self, page: u64) -> Result<(), GuestRamError> {
        if page < self.page_count() {
            Ok(())
        } else {
            Err(GuestRamError::PageOutOfRange {
                page,
                pages: self.page_count(),
            })
        }
    }

    fn page_words(&self, page: u64) -> &[AtomicU64] {
        let first = page as usize * WORDS_PER_PAGE;
        &self.words()[first..first + WORDS_PER_PAGE]
    }

    /// Records that the pages of `[addr, addr + len)` (bounds-checked,
    /// `len > 0`) are about to be written. Called before the store, so
    /// whoever finds a page dirty (the mark comes after the store and a
    /// fence, see [`crate::guest::dirty`]) also finds it touched.
    #[inline]
    fn touch(&self, addr: u64, len: u64) {
        for page in addr / PAGE..=(addr + len - 1) / PAGE {
            let word = &self.touched[(page / 64) as usize];
            let bit = 1u64 << (page % 64);
            if word.load(Ordering::Relaxed) & bit == 0 {
                word.fetch_or(bit, Ordering::Relaxed);
            }
        }
    }

    /// Whether page `page` (in range) was ever written.
    #[inline]
    fn is_touched(&self, page: u64) -> bool {
        self.touched[(page / 64) as usize].load(Ordering::Relaxed) & (1u64 << (page % 64)) != 0
    }

    /// Marks the pages of `[addr, addr + len)` (already bounds-checked,
    /// `len > 0`) dirty and notifies the observer.
    #[inline]
    fn dirtied(&self, addr: u64, len: u64) {
        let first = addr / PAGE;
        let last = (addr + len - 1) / PAGE;
        for page in first..=last {
            self.dirty.mark(page);
        }
        if let Some(observer) = &self.observer {
            observer.on_write(first, last - first + 1);
        }
    }

    /// Replaces the bytes selected by `mask` in the word at `index`.
    #[inline]
    fn merge_word(&self, index: usize, mask: u64, bits: u64) {
        let word = &self.words()[index];
        let mut old = word.load(Ordering::Relaxed);
        loop {
            let new = (old & !mask) | (bits & mask);
            match word.compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => old = actual,
            }
        }
    }

    /// Writes one byte and marks its page dirty.
    pub fn write_u8(&self, addr: u64, value: u8) -> Result<(), GuestRamError> {
        self.write_bytes(addr, &[value])
    }

    /// Writes a native-endian `u64` (any alignment) and marks the page(s) dirty.
    pub fn write_u64(&self, addr: u64, value: u64) -> Result<(), GuestRamError> {
        if addr.is_multiple_of(8) {
            self.check(addr, 8)?;
            self.present(addr, 8);
            self.touch(addr, 8);
            self.words()[(addr / 8) as usize].store(value, Ordering::Relaxed);
            self.dirtied(addr, 8);
            Ok(())
        } else {
            self.write_bytes(addr, &value.to_ne_bytes())
        }
    }

    /// Writes `data` at `addr` and marks every touched page dirty.
    /// Whole words are stored directly; partial words are merged atomically
    /// so neighbouring bytes are never clobbered.
    pub fn write_bytes(&self, addr: u64, data: &[u8]) -> Result<(), GuestRamError> {
        let len = data.len() as u64;
        self.check(addr, len)?;
        if data.is_empty() {
            return Ok(());
        }
        self.present(addr, len);
        self.touch(addr, len);
        let mut pos = 0usize;
        while pos < data.len() {
            let a = addr + pos as u64;
            let index = (a / 8) as usize;
            let offset = (a % 8) as usize;
            let n = (8 - offset).min(data.len() - pos);
            let mut bytes = [0u8; 8];
            bytes[offset..offset + n].copy_from_slice(&data[pos..pos + n]);
            if n == 8 {
                self.words()[index].store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
            } else {
                let mut mask = [0u8; 8];
                mask[offset..offset + n].fill(0xff);
                self.merge_word(index, u64::from_ne_bytes(mask), u64::from_ne_bytes(bytes));
            }
            pos += n;
        }
        self.dirtied(addr, len);
        Ok(())
    }

    /// Adds `delta` (wrapping) to the byte at `addr`, marks its page dirty and
    /// returns the previous value.
    pub fn fetch_add_u8(&self, addr: u64, delta: u8) -> Result<u8, GuestRamError> {
        self.check(addr, 1)?;
        self.present(addr, 1);
        self.touch(addr, 1);
        let word = &self.words()[(addr / 8) as usize];
        let offset = (addr % 8) as usize;
        let mut old = word.load(Ordering::Relaxed);
        let previous = loop {
            let mut bytes = old.to_ne_bytes();
            let previous = bytes[offset];
            bytes[offset] = previous.wrapping_add(delta);
            match word.compare_exchange_weak(
                old,
                u64::from_ne_bytes(bytes),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break previous,
                Err(actual) => old = actual,
            }
        };
        self.dirtied(addr, 1);
        Ok(previous)
    }

    /// Reads one byte.
    pub fn read_u8(&self, addr: u64) -> Result<u8, GuestRamError> {
        self.check(addr, 1)?;
        self.present(addr, 1);
        let word = self.words()[(addr / 8) as usize].load(Ordering::Relaxed);
        Ok(word.to_ne_bytes()[(addr % 8) as usize])
    }

    /// Reads a native-endian `u64` (any alignment).
    pub fn read_u64(&self, addr: u64) -> Result<u64, GuestRamError> {
        if addr.is_multiple_of(8) {
            self.check(addr, 8)?;
            self.present(addr, 8);
            Ok(self.words()[(addr / 8) as usize].load(Ordering::Relaxed))
        } else {
            let mut bytes = [0u8; 8];
            self.read_bytes(addr, &mut bytes)?;
            Ok(u64::from_ne_bytes(bytes))
        }
    }

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> Result<(), GuestRamError> {
        self.check(addr, buf.len() as u64)?;
        if !buf.is_empty() {
            self.present(addr, buf.len() as u64);
        }
        let mut pos = 0usize;
        while pos < buf.len() {
            let a = addr + pos as u64;
            let offset = (a % 8) as usize;
            let n = (8 - offset).min(buf.len() - pos);
            let bytes = self.words()[(a / 8) as usize]
                .load(Ordering::Relaxed)
                .to_ne_bytes();
            buf[pos..pos + n].copy_from_slice(&bytes[offset..offset + n]);
            pos += n;
        }
        Ok(())
    }

    /// Copies page `page` into `buf`.
    pub fn read_page(&self, page: u64, buf: &mut [u8; PAGE_SIZE]) -> Result<(), GuestRamError> {
        self.check_page(page)?;
        // SAFETY: the page is in the mapping (checked above), `buf` is a
        // distinct page-sized buffer.
        unsafe { copy_bytes(buf.as_mut_ptr(), self.page_ptr(page), PAGE_SIZE) };
        Ok(())
    }

    /// Copies page `page` into `buf` and says whether it holds any non-zero
    /// byte. The zero check reads eight words per branch and stops at the
    /// first non-zero chunk; a non-zero page is then copied with
    /// [`copy_bytes`] (`rep movsb`). A vCPU writing the page meanwhile is
    /// harmless: its write is marked dirty after it lands and is sent again.
    #[inline]
    pub fn copy_page_nonzero(
        &self,
        page: u64,
        buf: &mut [u8; PAGE_SIZE],
    ) -> Result<bool, GuestRamError> {
        if self.try_page_is_zero(page)? {
            return Ok(false);
        }
        // SAFETY: the page is in the mapping (checked above), `buf` is a
        // distinct page-sized buffer.
        unsafe { copy_bytes(buf.as_mut_ptr(), self.page_ptr(page), PAGE_SIZE) };
        Ok(true)
    }

    /// The first byte of page `page` (already range-checked) in the mapping.
    fn page_ptr(&self, page: u64) -> *mut u8 {
        // SAFETY: `page` is in range, so the offset stays inside the mapping.
        // The pointer comes from the mapping itself (not from a reference),
        // so writing through it is allowed.
        unsafe { self.map.as_ptr().add(page as usize * PAGE_SIZE).cast_mut() }
    }

    /// Whether page `page` is all zeroes. Returns `false` for an out-of-range
    /// page (use [`try_page_is_zero`](Self::try_page_is_zero) to get the error).
    pub fn page_is_zero(&self, page: u64) -> bool {
        self.try_page_is_zero(page).unwrap_or(false)
    }

    /// Whether page `page` is all zeroes, or an error if it is out of range.
    /// A page never written is zero without being read; otherwise eight
    /// words are OR-ed per branch, so this runs at memory speed.
    pub fn try_page_is_zero(&self, page: u64) -> Result<bool, GuestRamError> {
        self.check_page(page)?;
        if !self.is_touched(page) {
            return Ok(true);
        }
        let words = self.page_words(page);
        let load = |i: usize| words[i].load(Ordering::Relaxed);
        for i in (0..WORDS_PER_PAGE).step_by(8) {
            let any = (load(i) | load(i + 1))
                | (load(i + 2) | load(i + 3))
                | (load(i + 4) | load(i + 5))
                | (load(i + 6) | load(i + 7));
            if any != 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Source side: the non-zero words of page `page` (index in the page,
    /// value as loaded) into `out`, when it holds at most `out.len()`:
    /// `Some(n)` (0 for a zero page, found without reading a page never
    /// written), `None` as soon as a page has more, or when its first eight
    /// words are all non-zero. Each word is loaded once,
    /// so what is returned is one consistent reading of each word; a vCPU
    /// writing meanwhile marks the page dirty after its write lands.
    pub fn page_sparse_words(
        &self,
        page: u64,
        out: &mut [(u16, u64)],
    ) -> Result<Option<usize>, GuestRamError> {
        self.check_page(page)?;
        if !self.is_touched(page) {
            return Ok(Some(0));
        }
        let words = self.page_words(page);
        let mut n = 0;
        for i in (0..WORDS_PER_PAGE).step_by(8) {
            let chunk: [u64; 8] = std::array::from_fn(|k| words[i + k].load(Ordering::Relaxed));
            if chunk.iter().fold(0, |a, w| a | w) == 0 {
                continue;
            }
            let nonzero = chunk.iter().filter(|w| **w != 0).count();
            // A full first cache line: dense data, not worth reading on (the
            // kernel's copy then finds the line cached).
            if n + nonzero > out.len() || (i == 0 && nonzero == 8) {
                return Ok(None);
            }
            for (k, &w) in chunk.iter().enumerate() {
                if w != 0 {
                    out[n] = ((i + k) as u16, w);
                    n += 1;
                }
            }
        }
        Ok(Some(n))
    }

    /// Destination-side loader write of a page that is zero but for `runs`
    /// (`(offset, bytes)` inside the page): each cache line of the page that
    /// holds a non-zero word is zeroed (a page never written is not even
    /// read; an A-B page has one such line: reading a page is cheaper than
    /// writing all of it), then
    /// each run is copied in. Not marked dirty, as
    /// [`load_page`](Self::load_page); the loader must be the only writer.
    pub fn load_runs<'a>(
        &self,
        page: u64,
        runs: impl IntoIterator<Item = (usize, &'a [u8])>,
    ) -> Result<(), GuestRamError> {
        self.check_page(page)?;
        if self.is_touched(page) {
            let words = self.page_words(page);
            for chunk in words.chunks_exact(8) {
                let any = chunk.iter().fold(0, |a, w| a | w.load(Ordering::Relaxed));
                if any != 0 {
                    for w in chunk {
                        w.store(0, Ordering::Relaxed);
                    }
                }
            }
        }
        let target = self.load_target(page)?;
        for (offset, bytes) in runs {
            if offset + bytes.len() > PAGE_SIZE {
                return Err(GuestRamError::OutOfRange {
                    addr: page * PAGE + offset as u64,
                    len: bytes.len() as u64,
                    size: self.size,
                });
            }
            // SAFETY: the run lies inside the page (checked above), which is
            // in the mapping; `bytes` is a separate buffer.
            unsafe { copy_bytes(target.add(offset), bytes.as_ptr(), bytes.len()) };
        }
        Ok(())
    }

    /// Destination-side loader write of a whole page, one `rep movsb`
    /// ([`copy_bytes`]) rather than word by word.
    ///
    /// Does not mark the page dirty: incoming RAM is not tracked (the
    /// destination is not itself migrating while it loads, and tracking
    /// restarts with [`DirtyBitmap::set_all`] when a migration begins).
    pub fn load_page(&self, page: u64, data: &[u8; PAGE_SIZE]) -> Result<(), GuestRamError> {
        self.check_page(page)?;
        self.touch(page * PAGE, PAGE);
        // SAFETY: the page is in the mapping (checked above); `data` is a
        // separate buffer.
        unsafe { copy_bytes(self.page_ptr(page), data.as_ptr(), PAGE_SIZE) };
        Ok(())
    }

    /// Source side: the first of page `page`'s 4096 bytes, for the kernel
    /// to read straight from guest RAM (`writev(2)` onto the migration
    /// channel) while vCPUs may write it. Never read it through a Rust
    /// reference: a vCPU's write meanwhile is a hardware-level race, which
    /// the dirty log settles (the page is marked after the write lands and
    /// sent again).
    pub fn send_source(&self, page: u64) -> Result<*const u8, GuestRamError> {
        self.check_page(page)?;
        Ok(self.page_ptr(page).cast_const())
    }

    /// Destination side: marks page `page` written and gives the first of
    /// its 4096 bytes, for the loader to read a stream's page data straight
    /// into (a `read(2)`/`readv(2)` by the kernel, or [`copy_bytes`]), and
    /// then to digest in place while no other thread writes guest RAM.
    /// Not marked dirty, as [`load_page`](Self::load_page).
    pub fn load_target(&self, page: u64) -> Result<*mut u8, GuestRamError> {
        self.check_page(page)?;
        self.touch(page * PAGE, PAGE);
        Ok(self.page_ptr(page))
    }

    /// Faults pages `[first, first + count)` in for writing, as 4 KiB
    /// pages, without changing them: a dense load's look-ahead
    /// ([`crate::migration`]'s prefault). The range is first advised
    /// `MADV_NOHUGEPAGE` (huge pages already there stay). Best effort: out
    /// of range, or a kernel without `MADV_POPULATE_WRITE`, does nothing.
    pub fn prefault(&self, first: u64, count: u64) {
        if first
            .checked_add(count)
            .is_none_or(|end| end > self.page_count())
        {
            return;
        }
        let _ = self.map.advise_range(
            memmap2::Advice::NoHugePage,
            (first * PAGE) as usize,
            (count * PAGE) as usize,
        );
        let words =
            &self.words()[first as usize * WORDS_PER_PAGE..][..count as usize * WORDS_PER_PAGE];
        // Best effort: an old kernel without it faults on first write instead.
        let _ = super::prealloc::populate_only(words);
    }

    /// Destination side: pages faulted in from now on are 4 KiB pages
    /// (`MADV_NOHUGEPAGE` over all of guest RAM; huge pages already in
    /// place stay), for a host that backs huge pages slowly
    /// (`migration::first_touch`). Best effort.
    pub fn small_pages(&self) {
        let _ = self
            .map
            .advise_range(memmap2::Advice::NoHugePage, 0, self.map.len());
    }

    /// Destination-side loader write zeroing a page; not marked dirty, for
    /// the same reason as [`load_page`](Self::load_page). A page that is
    /// already zero is only read, so a fresh destination's untouched RAM
    /// stays unallocated (as QEMU's `ram_handle_zero`).
    pub fn zero_page(&self, page: u64) -> Result<(), GuestRamError> {
        if self.try_page_is_zero(page)? {
            return Ok(());
        }
        for word in self.page_words(page) {
            word.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The first byte of every page in `[start, end)` (clipped to RAM), in
    /// address order: the input of
    /// [`check_ab_invariant`](crate::guest::abcheck::check_ab_invariant).
    pub fn page_first_bytes(&self, start: u64, end: u64) -> impl Iterator<Item = u8> + '_ {
        let first = start.div_ceil(PAGE);
        let last = end.min(self.size).div_ceil(PAGE);
        (first..last).filter_map(move |page| self.read_u8(page * PAGE).ok())
    }

    /// XXH3-64 digest of all of RAM (for comparing source and destination).
    pub fn digest(&self) -> u64 {
        let mut hasher = Xxh3::new();
        let mut buf = [0u8; PAGE_SIZE];
        for page in 0..self.page_count() {
            // In range by construction of the loop.
            if self.read_page(page, &mut buf).is_ok() {
                hasher.update(&buf);
            }
        }
        hasher.digest()
    }
}

/// Copies `len` bytes between guest RAM and a buffer at memory speed.
///
/// On x86-64 this is one `rep movsb` (what glibc's `memcpy` uses for such
/// sizes). Being inline assembly, the copy is a hardware-level access like
/// a device's DMA: vCPU threads may store to the same guest memory with
/// their atomics meanwhile without that being a data race in Rust's sense
/// (a plain `copy_nonoverlapping` would be one). Elsewhere it falls back
/// to relaxed atomic word copies.
///
/// # Safety
/// `src` is valid for `len` reads and `dst` for `len` writes; the ranges do
/// not overlap; one side is guest RAM, the other a buffer nothing else
/// uses; guest-side pointers are 8-byte aligned and `len` is a multiple of 8
/// (on x86-64 any alignment and length will do).
#[inline]
pub(crate) unsafe fn copy_bytes(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract; the direction flag is clear (ABI).
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    for k in (0..len).step_by(8) {
        // SAFETY: the caller's contract (aligned, in bounds); atomics make
        // the guest-side access race-free, the buffer side is exclusive.
        unsafe {
            let v = (*src.add(k).cast::<AtomicU64>()).load(Ordering::Relaxed);
            (*dst.add(k).cast::<AtomicU64>()).store(v, Ordering::Relaxed);
        }
    }
}

/// Tests: the `VmFlags` line of the mapping that starts at `addr` in
/// /proc/self/smaps (`hg`: `MADV_HUGEPAGE`, `nh`: `MADV_NOHUGEPAGE`).
#[cfg(test)]
pub(crate) fn vm_flags(addr: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let start = format!("{addr:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
    assert!(lines.next().is_some(), "no mapping at {addr:x}");
    lines
        .find(|l| l.starts_with("VmFlags:"))
        .expect("a VmFlags line")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::dirty::iter_pages;
    use proptest::prelude::*;

    fn dirty_pages(ram: &GuestRam) -> Vec<u64> {
        iter_pages(&ram.dirty().take()).collect()
    }

    #[test]
    fn rejects_bad_sizes() {
        for size in [0, 100, 4097, u64::MAX - 4095] {
            assert!(GuestRam::new(size).is_err(), "{size}");
        }
    }

    #[test]
    fn small_pages_advises_all_ram_and_keeps_contents() {
        let ram = GuestRam::new(8 << 20).unwrap();
        ram.write_u64(3 * PAGE + 16, 0xfeed).unwrap();
        assert!(!vm_flags(ram.page_ptr(0) as usize).contains(" nh"));
        ram.small_pages();
        let flags = vm_flags(ram.page_ptr(0) as usize);
        assert!(flags.split_whitespace().any(|f| f == "nh"), "{flags}");
        assert_eq!(ram.read_u64(3 * PAGE + 16).unwrap(), 0xfeed);
    }

    #[test]
    fn prefault_makes_pages_resident_as_small_pages_and_keeps_them() {
        let ram = GuestRam::new(8 << 20).unwrap();
        ram.write_u64(5 * PAGE + 8, 0x1234).unwrap();
        let resident = |first: u64, count: u64| {
            let mut vec = vec![0u8; count as usize];
            // SAFETY: the range lies inside the mapping; mincore writes one
            // byte per page into `vec`.
            let rc = unsafe {
                libc::mincore(
                    ram.page_ptr(first).cast(),
                    (count * PAGE) as usize,
                    vec.as_mut_ptr(),
                )
            };
            assert_eq!(rc, 0);
            vec.iter().filter(|b| *b & 1 != 0).count() as u64
        };
        assert!(resident(600, 512) < 512);
        ram.prefault(512, 1024);
        assert_eq!(resident(512, 1024), 1024, "prefaulted pages are resident");
        let flags = vm_flags(ram.page_ptr(512) as usize);
        assert!(flags.split_whitespace().any(|f| f == "nh"), "{flags}");
        assert_eq!(ram.read_u64(5 * PAGE + 8).unwrap(), 0x1234);
        assert!(
            (512..1536).all(|p| ram.page_is_zero(p)),
            "contents unchanged"
        );
        ram.prefault(2040, 100); // out of range: nothing
    }

    #[test]
    fn ram_is_advised_for_huge_pages_when_the_host_has_them_free() {
        let size = 64 << 20;
        let ram = GuestRam::new(size).unwrap();
        let flags = vm_flags(ram.map.as_ptr() as usize);
        let advised = flags.split_whitespace().any(|f| f == "hg");
        assert_eq!(advised, super::super::huge_pages::advise(size), "{flags}");
    }

    #[test]
    fn starts_zeroed_and_clean() {
        let ram = GuestRam::new(1 << 20).unwrap();
        assert_eq!(ram.size(), 1 << 20);
        assert_eq!(ram.page_count(), 256);
        assert!(ram.page_is_zero(0) && ram.page_is_zero(255));
        assert_eq!(ram.dirty().count(), 0);
    }

    #[test]
    fn writes_round_trip_and_mark_pages() {
        let ram = GuestRam::new(4 * PAGE).unwrap();
        ram.write_u8(5, 0xab).unwrap();
        ram.write_u64(PAGE + 8, 0x1122_3344_5566_7788).unwrap();
        ram.write_u64(2 * PAGE + 3, u64::MAX - 1).unwrap();
        assert_eq!(ram.read_u8(5).unwrap(), 0xab);
        assert_eq!(ram.read_u8(4).unwrap(), 0);
        assert_eq!(ram.read_u8(6).unwrap(), 0);
        assert_eq!(ram.read_u64(PAGE + 8).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(ram.read_u64(2 * PAGE + 3).unwrap(), u64::MAX - 1);
        assert_eq!(dirty_pages(&ram), vec![0, 1, 2]);
        assert!(!ram.page_is_zero(0));
        assert!(ram.page_is_zero(3));
    }

    #[test]
    fn write_bytes_across_pages_marks_both() {
        let ram = GuestRam::new(4 * PAGE).unwrap();
        let data: Vec<u8> = (1..=20).collect();
        ram.write_bytes(2 * PAGE - 7, &data).unwrap();
        let mut back = [0u8; 22];
        ram.read_bytes(2 * PAGE - 8, &mut back).unwrap();
        assert_eq!(back[0], 0);
        assert_eq!(&back[1..21], &data[..]);
        assert_eq!(back[21], 0);
        assert_eq!(dirty_pages(&ram), vec![1, 2]);
    }

    #[test]
    fn fetch_add_wraps_and_marks() {
        let ram = GuestRam::new(2 * PAGE).unwrap();
        ram.write_u8(PAGE + 1, 0xff).unwrap();
        ram.write_u8(PAGE + 2, 0x11).unwrap();
        ram.dirty().take();
        assert_eq!(ram.fetch_add_u8(PAGE + 1, 1).unwrap(), 0xff);
        assert_eq!(ram.read_u8(PAGE + 1).unwrap(), 0);
        assert_eq!(ram.read_u8(PAGE + 2).unwrap(), 0x11);
        assert_eq!(dirty_pages(&ram), vec![1]);
    }

    #[test]
    fn loader_writes_do_not_mark() {
        let ram = GuestRam::new(2 * PAGE).unwrap();
        let mut page = [0u8; PAGE_SIZE];
        page[100] = 7;
        ram.load_page(1, &page).unwrap();
        assert_eq!(ram.dirty().count(), 0);
        let mut back = [1u8; PAGE_SIZE];
        ram.read_page(1, &mut back).unwrap();
        assert_eq!(back, page);
        ram.zero_page(1).unwrap();
        assert!(ram.page_is_zero(1));
        assert_eq!(ram.dirty().count(), 0);
    }

    #[test]
    fn untouched_pages_are_zero_and_stay_unread() {
        let ram = GuestRam::new(4 * PAGE).unwrap();
        assert!(!ram.is_touched(2));
        assert!(ram.page_is_zero(2));
        ram.zero_page(2).unwrap();
        assert!(!ram.is_touched(2), "zeroing a zero page writes nothing");
        ram.write_u8(2 * PAGE + 5, 0).unwrap();
        assert!(ram.is_touched(2) && ram.page_is_zero(2));
        let mut buf = [9u8; PAGE_SIZE];
        assert!(!ram.copy_page_nonzero(3, &mut buf).unwrap());
        ram.load_page(3, &[1; PAGE_SIZE]).unwrap();
        assert!(ram.is_touched(3));
        assert!(ram.copy_page_nonzero(3, &mut buf).unwrap());
        assert_eq!(buf, [1; PAGE_SIZE]);
        ram.zero_page(3).unwrap();
        assert!(ram.page_is_zero(3));
    }

    #[test]
    fn sparse_words_list_the_non_zero_words_up_to_the_limit() {
        let ram = GuestRam::new(4 * PAGE).unwrap();
        let mut out = [(0u16, 0u64); 4];
        assert_eq!(ram.page_sparse_words(0, &mut out).unwrap(), Some(0));
        assert!(!ram.is_touched(0), "a page never written is not read");
        ram.write_u8(PAGE, 7).unwrap();
        ram.write_u64(PAGE + 8 * 100, u64::MAX).unwrap();
        assert_eq!(ram.page_sparse_words(1, &mut out).unwrap(), Some(2));
        assert_eq!(out[..2], [(0, 7u64.to_le()), (100, u64::MAX)]);
        for w in 0..5u64 {
            ram.write_u64(2 * PAGE + 8 * (w * 50), w + 1).unwrap();
        }
        assert_eq!(ram.page_sparse_words(2, &mut out).unwrap(), None);
        ram.write_bytes(3 * PAGE, &[1; 64]).unwrap();
        let mut wide = [(0u16, 0u64); 16];
        assert_eq!(ram.page_sparse_words(3, &mut wide).unwrap(), None);
        assert!(ram.page_sparse_words(4, &mut out).is_err());
    }

    #[test]
    fn load_runs_leaves_the_page_zero_but_for_the_runs() {
        let ram = GuestRam::new(2 * PAGE).unwrap();
        ram.load_page(0, &[0xaa; PAGE_SIZE]).unwrap();
        ram.load_runs(0, [(1, &[1u8, 2][..]), (4095, &[9u8][..])])
            .unwrap();
        let mut buf = [0u8; PAGE_SIZE];
        ram.read_page(0, &mut buf).unwrap();
        assert_eq!(&buf[..4], &[0, 1, 2, 0]);
        assert_eq!(buf[4095], 9);
        assert_eq!(buf.iter().filter(|b| **b != 0).count(), 3);
        ram.load_runs(1, [(0, &[5u8][..])]).unwrap();
        assert!(ram.is_touched(1));
        assert_eq!(ram.read_u8(PAGE).unwrap(), 5);
        assert!(ram.load_runs(1, [(4095, &[1u8, 2][..])]).is_err());
        assert!(ram.load_runs(2, [(0, &[1u8][..])]).is_err());
    }

    #[test]
    fn out_of_range_is_an_error() {
        let ram = GuestRam::new(PAGE).unwrap();
        assert!(matches!(
            ram.write_u8(PAGE, 1),
            Err(GuestRamError::OutOfRange { .. })
        ));
        assert!(ram.write_u64(PAGE - 4, 1).is_err());
        assert!(ram.read_u64(u64::MAX - 3).is_err());
        assert!(ram.write_bytes(u64::MAX, &[1, 2]).is_err());
        assert!(ram.read_page(1, &mut [0; PAGE_SIZE]).is_err());
        assert!(ram.load_page(1, &[0; PAGE_SIZE]).is_err());
        assert!(ram.zero_page(1).is_err());
        assert!(!ram.page_is_zero(1));
        assert!(ram.try_page_is_zero(1).is_err());
        assert_eq!(ram.dirty().count(), 0);
        assert_eq!(
            ram.write_u8(PAGE, 1).unwrap_err().to_string(),
            "guest access of 1 bytes at 0x1000 is outside RAM of 0x1000 bytes"
        );
    }

    #[test]
    fn digest_tracks_content() {
        let ram = GuestRam::new(2 * PAGE).unwrap();
        let d0 = ram.digest();
        ram.write_u8(PAGE + 3, 1).unwrap();
        let d1 = ram.digest();
        assert_ne!(d0, d1);
        ram.write_u8(PAGE + 3, 0).unwrap();
        assert_eq!(ram.digest(), d0);
    }

    proptest! {
        /// No access, however out of range, panics; in-range writes read back.
        #[test]
        fn accesses_never_panic(addr in prop_oneof![0u64..3 * PAGE, any::<u64>()], len in 0usize..300, page in prop_oneof![0u64..4, any::<u64>()]) {
            let ram = GuestRam::new(2 * PAGE).unwrap();
            let data = vec![0x5au8; len];
            let in_range = addr.checked_add(len as u64).is_some_and(|e| e <= 2 * PAGE);
            prop_assert_eq!(ram.write_bytes(addr, &data).is_ok(), in_range);
            let mut back = vec![0u8; len];
            prop_assert_eq!(ram.read_bytes(addr, &mut back).is_ok(), in_range);
            if in_range {
                prop_assert_eq!(&back, &data);
            }
            let _ = ram.write_u8(addr, 1);
            let _ = ram.write_u64(addr, 1);
            let _ = ram.fetch_add_u8(addr, 1);
            let _ = ram.read_u8(addr);
            let _ = ram.read_u64(addr);
            let mut buf = [0u8; PAGE_SIZE];
            prop_assert_eq!(ram.read_page(page, &mut buf).is_ok(), page < 2);
            prop_assert_eq!(ram.load_page(page, &buf).is_ok(), page < 2);
            prop_assert_eq!(ram.zero_page(page).is_ok(), page < 2);
            let _ = ram.page_is_zero(page);
        }
    }
}
