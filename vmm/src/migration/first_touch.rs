//! Huge pages given up on a host that backs them slowly.
//!
//! A destination's RAM is fresh memory advised for huge pages (as QEMU
//! advises it): the first write into each 2 MiB faults in a whole huge page,
//! about 0.2 ms of zeroing. On a guest of a hypervisor with free page
//! reporting (this project's CI machines), a huge page taken from a block
//! the kernel has reported waits for the hypervisor to back it again: 6 to
//! 28 ms per 2 MiB were measured on the first SPARSE page of each chunk of
//! an A-B sweep's destination, 0.5-0.6 s per migration where the rest of it
//! took 50 ms (docs/performance.md, eleventh round). 4 KiB pages come from
//! small free blocks, which are never reported, and fault in at ~2 GB/s.
//!
//! So the loader times its first write into each 2 MiB chunk; after
//! [`SLOW_CHUNKS`] such writes took longer than [`SLOW`], the rest of guest
//! RAM is advised `MADV_NOHUGEPAGE` (huge pages already in place stay). Where
//! the host backs huge pages at once, nothing changes. Pages read in place
//! (dense runs) are not timed: the read waits for the socket too, and the
//! look-ahead of [`super::prefault`] already takes 4 KiB pages for them.

use std::time::{Duration, Instant};

use super::host::MigrationRam;
use crate::guest::PAGE_SIZE;

/// Pages in one 2 MiB huge page.
const CHUNK_PAGES: u64 = 512;
/// A first write into a chunk slower than this waited for the host (a huge
/// page backed at once takes about 0.2 ms).
pub(crate) const SLOW: Duration = Duration::from_millis(2);
/// Slow first writes before huge pages are given up (one could be the loader
/// descheduled while it wrote).
pub(crate) const SLOW_CHUNKS: u32 = 2;

/// One loader's record of the chunks it has written and how slowly.
pub(crate) struct FirstTouch {
    /// One bit per 2 MiB chunk of guest RAM: written by this loader.
    seen: Vec<u64>,
    slow: u32,
    /// Huge pages given up (or nothing left to watch).
    done: bool,
}

impl FirstTouch {
    /// A watch over RAM of `ram_bytes`.
    pub(crate) fn new(ram_bytes: u64) -> Self {
        let chunks = ram_bytes.div_ceil(PAGE_SIZE as u64 * CHUNK_PAGES);
        FirstTouch {
            seen: vec![0; chunks.div_ceil(64) as usize],
            slow: 0,
            done: false,
        }
    }

    /// Runs `load` (a write of page `page` into `ram`), timing it when it is
    /// this loader's first write into the page's chunk.
    pub(crate) fn load<T>(
        &mut self,
        ram: &dyn MigrationRam,
        page: u64,
        load: impl FnOnce() -> T,
    ) -> T {
        if self.done || !self.first_in_chunk(page) {
            return load();
        }
        let start = Instant::now();
        let out = load();
        self.timed(ram, start.elapsed());
        out
    }

    /// Whether `page` is the first this loader writes into its chunk (marks
    /// the chunk).
    fn first_in_chunk(&mut self, page: u64) -> bool {
        let chunk = page / CHUNK_PAGES;
        let Some(word) = self.seen.get_mut((chunk / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (chunk % 64);
        let first = *word & bit == 0;
        *word |= bit;
        first
    }

    fn timed(&mut self, ram: &dyn MigrationRam, took: Duration) {
        if took <= SLOW {
            return;
        }
        self.slow += 1;
        if self.slow >= SLOW_CHUNKS {
            self.done = true;
            ram.small_pages();
        }
    }

    /// Whether huge pages were given up.
    #[cfg(test)]
    fn gave_up(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::GuestRam;

    const MIB: u64 = 1 << 20;

    #[test]
    fn fast_first_writes_keep_huge_pages() {
        let ram = GuestRam::new(16 * MIB).unwrap();
        let mut w = FirstTouch::new(16 * MIB);
        for page in (0..4096).step_by(7) {
            w.load(&ram, page, || ());
        }
        assert!(!w.gave_up());
        assert!(!vm_flags(&ram).split_whitespace().any(|f| f == "nh"));
    }

    #[test]
    fn two_slow_first_writes_give_huge_pages_up() {
        let ram = GuestRam::new(16 * MIB).unwrap();
        let mut w = FirstTouch::new(16 * MIB);
        let slow = || std::thread::sleep(SLOW * 2);
        w.load(&ram, 0, slow);
        assert!(!w.gave_up(), "one slow write could be a preemption");
        // A later write into the same chunk is not a first touch: not timed.
        w.load(&ram, 1, slow);
        assert!(!w.gave_up());
        w.load(&ram, CHUNK_PAGES, slow);
        assert!(w.gave_up());
        let flags = vm_flags(&ram);
        assert!(flags.split_whitespace().any(|f| f == "nh"), "{flags}");
    }

    #[test]
    fn pages_beyond_ram_are_not_watched() {
        let ram = GuestRam::new(2 * MIB).unwrap();
        let mut w = FirstTouch::new(2 * MIB);
        let slow = || std::thread::sleep(SLOW * 2);
        w.load(&ram, 10 * CHUNK_PAGES, slow);
        w.load(&ram, 200 * CHUNK_PAGES, slow);
        assert!(!w.gave_up());
    }

    /// The `VmFlags` of `ram`'s mapping (`nh`: `MADV_NOHUGEPAGE`).
    fn vm_flags(ram: &GuestRam) -> String {
        crate::guest::memory::vm_flags(ram.load_target(0).unwrap() as usize)
    }
}
