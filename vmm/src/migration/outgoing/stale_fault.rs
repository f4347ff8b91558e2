//! Planted bug `StalePostcopyPage` (test-only, see `faults.rs`): the source answers one page
//! the destination requested during postcopy with an older copy of it, the one it sent in
//! precopy, instead of the page's final content. The destination's guest then goes on from
//! stale data (the sweep guest's counter in that page stays behind: its A-B check fails).

use super::*;

/// What the source sent in precopy, page by page (only while the fault is on).
#[derive(Default)]
pub(super) struct StaleShadow {
    /// One page per guest page, allocated at the first page sent.
    copies: Vec<u8>,
    /// The page answered stale, once.
    planted: Option<u64>,
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

    /// In postcopy, `page` was requested and has just been added to the batch: the first
    /// time its precopy copy differs from the final content, that older copy is sent instead.
    pub(super) fn stale_answer(&mut self, page: u64) {
        if !faults::on(Fault::StalePostcopyPage) || self.stale.planted.is_some() {
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
            self.stale.planted = Some(page);
            eprintln!("migtest-vmm: planted fault: page {page} answered with stale data");
        }
    }
}
