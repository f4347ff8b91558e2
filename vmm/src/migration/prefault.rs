//! Destination RAM faulted in ahead of a dense precopy load.
//!
//! A destination's RAM is fresh memory: the first write to each page
//! faults, and with RAM advised for huge pages (as QEMU advises it) each
//! 2 MiB faults at once. On a guest of a hypervisor with free page
//! reporting (this project's CI machines), the kernel's free 2 MiB blocks
//! are handed back to the hypervisor a few seconds after they are freed,
//! and a huge-page fault then waits for the hypervisor to back the block
//! again: about 12 ms per 2 MiB, where 4 KiB pages, taken from blocks
//! still backed, fault in at ~2 GB/s (docs/performance.md, tenth round).
//!
//! So while the stream brings dense runs of whole pages in page order, a
//! helper thread faults in (`MADV_POPULATE_WRITE`, contents unchanged) the
//! 2 MiB chunks just ahead of the one being loaded, as 4 KiB pages
//! (`MADV_NOHUGEPAGE` first): two threads take the faults instead of one,
//! and none of them waits for the hypervisor. (Trying huge pages first and
//! switching after a slow one was slower: the probes and the loader's own
//! huge faults cost more than huge pages save where they are backed.)
//! Zero, XBZRLE and SPARSE pages never start it: a sweep guest's
//! destination stays as sparse, and as huge, as before.

use super::host::MigrationRam;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

/// Pages in one 2 MiB huge page: the unit of look-ahead.
const CHUNK_PAGES: u64 = 512;
/// Whole pages loaded in place into a chunk for it to count as dense.
const DENSE_PAGES: u64 = CHUNK_PAGES / 2;
/// Chunks populated ahead of the one being loaded (16 MiB).
const AHEAD: u64 = 8;

/// Shared by the loading thread ([`Prefault::note`]) and the helper
/// ([`Prefault::run`]).
pub(crate) struct Prefault<'a> {
    ram: &'a dyn MigrationRam,
    /// Chunk the loader is in, and how many whole pages it loaded there.
    chunk: AtomicU64,
    dense: AtomicU64,
    /// The helper populates chunks in `[floor, target)`.
    floor: AtomicU64,
    target: AtomicU64,
    stop: AtomicBool,
    helper: OnceLock<Thread>,
}

impl<'a> Prefault<'a> {
    /// Look-ahead for loads into `ram`; nothing runs until [`run`](Self::run).
    pub(crate) fn new(ram: &'a dyn MigrationRam) -> Self {
        Prefault {
            ram,
            chunk: AtomicU64::new(u64::MAX),
            dense: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            target: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            helper: OnceLock::new(),
        }
    }

    /// Loading thread: whole page `page` is about to be read in place.
    pub(crate) fn note(&self, page: u64) {
        let chunk = page / CHUNK_PAGES;
        let last = self.chunk.load(Ordering::Relaxed);
        if chunk == last {
            self.dense
                .store(self.dense.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            return;
        }
        let dense = self.dense.swap(1, Ordering::Relaxed);
        self.chunk.store(chunk, Ordering::Relaxed);
        self.floor.store(chunk + 1, Ordering::Relaxed);
        if chunk == last.wrapping_add(1) && dense >= DENSE_PAGES {
            self.target.store(chunk + 1 + AHEAD, Ordering::Release);
            if let Some(t) = self.helper.get() {
                t.unpark();
            }
        }
    }

    /// The helper thread's loop, until [`finish`](Self::finish).
    pub(crate) fn run(&self) {
        let _ = self.helper.set(std::thread::current());
        let chunks = self.ram.page_count().div_ceil(CHUNK_PAGES);
        let (mut done, mut last_floor) = (0u64, 0u64);
        while !self.stop.load(Ordering::Acquire) {
            let floor = self.floor.load(Ordering::Relaxed);
            // A new pass starts over from a lower page.
            done = if floor < last_floor {
                floor
            } else {
                done.max(floor)
            };
            last_floor = floor;
            let target = self.target.load(Ordering::Acquire).min(chunks);
            if done < target {
                let first = done * CHUNK_PAGES;
                let count = CHUNK_PAGES.min(self.ram.page_count() - first);
                self.ram.prefault(first, count);
                done += 1;
            } else {
                std::thread::park_timeout(Duration::from_millis(20));
            }
        }
    }

    /// Ends [`run`](Self::run) after the chunk it is populating.
    pub(crate) fn finish(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.helper.get() {
            t.unpark();
        }
    }

    /// A guard that calls [`finish`](Self::finish) when dropped, also when
    /// the load unwinds (a scope joins the helper before it re-panics).
    pub(crate) fn finish_on_drop(&self) -> impl Drop + '_ {
        struct Finish<'p, 'a>(&'p Prefault<'a>);
        impl Drop for Finish<'_, '_> {
            fn drop(&mut self) {
                self.0.finish();
            }
        }
        Finish(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::host::PAGE_SIZE;
    use std::sync::Mutex;

    /// RAM of `pages` pages that records the ranges it is asked to prefault.
    struct Recording {
        pages: u64,
        asked: Mutex<Vec<(u64, u64)>>,
    }

    impl Recording {
        fn new(pages: u64) -> Self {
            Recording {
                pages,
                asked: Mutex::new(Vec::new()),
            }
        }
    }

    impl MigrationRam for Recording {
        fn size(&self) -> u64 {
            self.pages * PAGE_SIZE as u64
        }
        fn prefault(&self, first: u64, count: u64) {
            self.asked.lock().unwrap().push((first, count));
        }
        fn read_page(&self, _: u64, _: &mut [u8; PAGE_SIZE]) -> Result<(), String> {
            unreachable!("the look-ahead reads no page")
        }
        fn page_is_zero(&self, _: u64) -> bool {
            unreachable!("the look-ahead reads no page")
        }
        fn load_page(&self, _: u64, _: &[u8; PAGE_SIZE]) -> Result<(), String> {
            unreachable!("the look-ahead writes no page")
        }
        fn zero_page(&self, _: u64) -> Result<(), String> {
            unreachable!("the look-ahead writes no page")
        }
        fn dirty_set_all(&self) {}
        fn dirty_take(&self) -> Vec<u64> {
            Vec::new()
        }
        fn dirty_count(&self) -> u64 {
            0
        }
    }

    /// Notes `pages` as a loader would, then stops the helper once it has
    /// populated everything up to the target the notes set.
    fn load(ram: &Recording, pages: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
        let p = Prefault::new(ram);
        std::thread::scope(|s| {
            s.spawn(|| p.run());
            while p.helper.get().is_none() {
                std::thread::yield_now();
            }
            for page in pages {
                p.note(page);
            }
            let chunks = ram.page_count().div_ceil(CHUNK_PAGES);
            let target = p.target.load(Ordering::Acquire).min(chunks);
            let want = target.saturating_sub(p.floor.load(Ordering::Relaxed)) as usize;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while ram.asked.lock().unwrap().len() < want {
                assert!(
                    std::time::Instant::now() < deadline,
                    "helper populated {:?}, want {want} chunks",
                    ram.asked.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            p.finish();
        });
        let mut asked = ram.asked.lock().unwrap().clone();
        asked.sort();
        asked
    }

    #[test]
    fn dense_runs_populate_the_chunks_ahead() {
        let ram = Recording::new(CHUNK_PAGES * 20 + 7);
        let asked = load(&ram, 0..CHUNK_PAGES * 2);
        // Chunk 0 was dense when the loader entered chunk 1: chunks 2..10.
        let want: Vec<_> = (2..2 + AHEAD)
            .map(|c| (c * CHUNK_PAGES, CHUNK_PAGES))
            .collect();
        assert_eq!(asked, want);
    }

    #[test]
    fn the_last_chunk_is_clipped_to_ram() {
        let ram = Recording::new(CHUNK_PAGES * 3 + 7);
        let asked = load(&ram, 0..CHUNK_PAGES * 2);
        assert_eq!(
            asked,
            vec![(2 * CHUNK_PAGES, CHUNK_PAGES), (3 * CHUNK_PAGES, 7)]
        );
    }

    #[test]
    fn sparse_loads_populate_nothing() {
        let ram = Recording::new(CHUNK_PAGES * 40);
        // One page in eight, as a guest that dirties a few pages per chunk.
        let asked = load(&ram, (0..CHUNK_PAGES * 40).step_by(8));
        assert_eq!(asked, vec![]);
    }
}
