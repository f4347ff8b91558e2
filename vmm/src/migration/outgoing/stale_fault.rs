//! Planted bug `StalePostcopyPage` (test-only, see `faults.rs`): the source answers the pages
//! the destination requests during postcopy from a stale cache, the copies it sent in precopy,
//! instead of their final content. The destination's guest then goes on from stale data (the
//! sweep guest's counters in those pages stay behind: its A-B check fails). Every differing
//! requested page is answered stale, not just one: a single stale page one increment behind
//! can sit at the sweep's boundary, where the A-B check cannot tell it from the sweep's own
//! progress (1 replay in 10 passed when only the first was).

use super::*;

/// What the source sent in precopy, page by page (only while the fault is on).
#[derive(Default)]
pub(super) struct StaleShadow {
    /// One page per guest page, allocated at the first page sent.
    copies: Vec<u8>,
    /// Pages answered stale so far.
    planted: u64,
}

impl Engine<'_> {
    /// In precopy (guest running), remembers what was sent of `page` (just copied into the
    /// batch's last slot).
    pub(super) fn stale_record(&mut self, page: u64, data: &[u8; PAGE_SIZE]) {
        if !faults::on(Fault::StalePostcopyPage) || self.stopped_vm {
            return;
        }
        let s = &mut self.stale.copies;
        if s.is_empty() {
            *s = vec![0; self.page_count as usize * PAGE_SIZE];
        }
        let at = page as usize * PAGE_SIZE;
        s[at..at + PAGE_SIZE].copy_from_slice(data);
    }

    /// In postcopy, `page` was requested and has just been added to the batch: when its
    /// precopy copy differs from the final content, that older copy is sent instead.
    pub(super) fn stale_answer(&mut self, page: u64) {
        if !faults::on(Fault::StalePostcopyPage) {
            return;
        }
        let at = page as usize * PAGE_SIZE;
        let Some(old) = self.stale.copies.get(at..at + PAGE_SIZE) else {
            return;
        };
        let Some(slot) = self.batch.last_full_slot(page) else {
            return;
        };
        if old.iter().any(|b| *b != 0) && slot[..] != old[..] {
            slot.copy_from_slice(old);
            self.stale.planted += 1;
            if self.stale.planted == 1 {
                eprintln!("migtest-vmm: planted fault: page {page} answered with stale data (and every later requested page that changed)");
            }
        }
    }
}
