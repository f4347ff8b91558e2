//! `-mem-prealloc`: guest RAM allocated before the VM starts, as QEMU's
//! option (in QEMU 7.2 it sets `prealloc=on`, with `prealloc-threads` =
//! `-smp` CPUs, on every memory backend, so all guest RAM is faulted in
//! while the backend is created, before the monitor answers).
//!
//! Pages are faulted in writable with `MADV_POPULATE_WRITE` (Linux 5.14),
//! which neither reads nor changes their contents; on an older kernel each
//! page gets an atomic compare-exchange of its first word with itself instead (a write
//! fault that leaves the data alone, QEMU's fallback of touching every
//! page). Either way the pages stay zero and are not marked written, so the
//! zero-page logic of migration is unchanged: what changes is only that no
//! first touch of a page faults any more (docs/performance.md, fifth round).

use std::sync::atomic::{AtomicU64, Ordering};

use super::memory::PAGE_SIZE;

/// `MADV_POPULATE_WRITE` (not in every libc crate version).
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Faults in all of `words` (one mapping's whole length, page aligned) on
/// `threads` threads (at least one). Returns the OS error text on failure.
pub(super) fn populate(words: &[AtomicU64], threads: u32) -> Result<(), String> {
    let words_per_page = PAGE_SIZE / 8;
    let pages = words.len() / words_per_page;
    let threads = (threads.max(1) as usize).min(pages.max(1));
    let per = pages.div_ceil(threads) * words_per_page;
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = words
            .chunks(per)
            .map(|chunk| s.spawn(move || populate_chunk(chunk)))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(r) => r.err(),
                Err(_) => Some("a preallocation thread panicked".to_string()),
            })
            .collect()
    });
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `MADV_POPULATE_WRITE` on `chunk` (whole pages of guest RAM), nothing
/// else: the kernel's error if it refused.
pub(super) fn populate_only(chunk: &[AtomicU64]) -> std::io::Result<()> {
    let len = std::mem::size_of_val(chunk);
    // SAFETY: `chunk` is a live, page-aligned part of the guest RAM mapping
    // (chunks are whole pages); MADV_POPULATE_WRITE only populates page
    // tables and never changes the memory's contents.
    let rc = unsafe { libc::madvise(chunk.as_ptr().cast_mut().cast(), len, MADV_POPULATE_WRITE) };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn populate_chunk(chunk: &[AtomicU64]) -> Result<(), String> {
    let Err(err) = populate_only(chunk) else {
        return Ok(());
    };
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(err.to_string());
    }
    touch_pages(chunk);
    Ok(())
}

/// Without `MADV_POPULATE_WRITE`: a write to every page that keeps its data.
/// A compare-exchange of the word with itself (an idempotent `fetch_or(0)`
/// may be compiled to a plain load, which would only map the zero page);
/// `lock cmpxchg` is a write access whether or not it succeeds.
fn touch_pages(chunk: &[AtomicU64]) {
    for w in chunk.iter().step_by(PAGE_SIZE / 8) {
        let v = w.load(Ordering::Relaxed);
        let _ = w.compare_exchange(v, v, Ordering::Relaxed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memmap2::MmapMut;

    const PAGES: usize = 64;

    fn mapping() -> MmapMut {
        MmapMut::map_anon(PAGES * PAGE_SIZE).unwrap()
    }

    fn words(map: &MmapMut) -> &[AtomicU64] {
        // SAFETY: page-aligned live mapping, accessed only atomically here.
        unsafe { std::slice::from_raw_parts(map.as_ptr().cast(), map.len() / 8) }
    }

    fn resident_pages(map: &MmapMut) -> usize {
        let mut vec = vec![0u8; PAGES];
        // SAFETY: one live mapping of PAGES pages, `vec` has a byte per page.
        let rc =
            unsafe { libc::mincore(map.as_ptr().cast_mut().cast(), map.len(), vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|b| **b & 1 == 1).count()
    }

    #[test]
    fn populate_makes_every_page_resident_on_any_thread_count() {
        for threads in [0, 1, 3, 64, 200] {
            let map = mapping();
            assert_eq!(resident_pages(&map), 0, "fresh mapping");
            populate(words(&map), threads).unwrap();
            assert_eq!(resident_pages(&map), PAGES, "{threads} threads");
            assert!(words(&map).iter().all(|w| w.load(Ordering::Relaxed) == 0));
        }
    }

    #[test]
    fn touching_makes_pages_resident_and_keeps_their_data() {
        let map = mapping();
        let w = words(&map);
        w[3 * PAGE_SIZE / 8].store(0xfeed, Ordering::Relaxed);
        touch_pages(w);
        assert_eq!(resident_pages(&map), PAGES);
        for (i, x) in w.iter().enumerate() {
            let expect = if i == 3 * PAGE_SIZE / 8 { 0xfeed } else { 0 };
            assert_eq!(x.load(Ordering::Relaxed), expect, "word {i}");
        }
    }

    #[test]
    fn guest_ram_prealloc_keeps_contents_and_zero_pages() {
        let ram = crate::guest::memory::GuestRam::new(PAGES as u64 * PAGE_SIZE as u64).unwrap();
        ram.write_u8(5 * PAGE_SIZE as u64 + 7, 0x5a).unwrap();
        ram.prealloc(2).unwrap();
        for page in 0..PAGES as u64 {
            let expect = if page == 5 { 0x5a } else { 0 };
            assert_eq!(
                ram.read_u8(page * PAGE_SIZE as u64 + 7).unwrap(),
                expect,
                "page {page}"
            );
            assert_eq!(ram.page_is_zero(page), page != 5, "page {page}");
        }
    }
}
