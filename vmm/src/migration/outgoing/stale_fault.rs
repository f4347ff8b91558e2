//! Planted bug `StalePostcopyPage` (test-only, see `faults.rs`): in postcopy the source sends
//! pages, the ones the destination requests and the ones it sends in the background, from a
//! stale cache, the copies it first sent in precopy (a cache filled once and never updated),
//! instead of their final content. The destination's guest then goes on from stale data (the
//! sweep guest's counters in those pages stay behind: its A-B check fails).
//!
//! Why this much, for a fault the A-B check must see on every run:
//! - every differing page, not just one: a single stale page one increment behind can sit at
//!   the sweep's boundary, where the check cannot tell it from the sweep's own progress (1
//!   replay in 10 passed when only the first was);
//! - background pages and zero pages too: when the sweep guest's one-byte counters had just
//!   wrapped to zero at the switch, every page left was a zero page, the first background
//!   burst carried them all and the destination requested none;
//! - the first copy, not the last: pages whose last copy is one sweep behind their final
//!   content, all of them, look like an earlier sweep position and pass the check (a vCPU
//!   that waited for a core through the last passes); the first pass is many sweeps back.

use super::*;

/// What the source first sent in precopy, page by page (only while the fault is on).
#[derive(Default)]
pub(super) struct StaleShadow {
    /// One page per guest page, allocated at the first page sent.
    copies: Vec<u8>,
    /// The pages `copies` holds (bit per page, words of 64).
    recorded: Vec<u64>,
    /// Pages sent stale so far.
    planted: u64,
}

impl Engine<'_> {
    /// In precopy (guest running), remembers what was sent of `page` (`data`, or a zero page
    /// when `None`) if it is the first copy sent.
    pub(super) fn stale_record(&mut self, page: u64, data: Option<&[u8; PAGE_SIZE]>) {
        if !faults::on(Fault::StalePostcopyPage) || self.stopped_vm {
            return;
        }
        let s = &mut self.stale;
        if s.copies.is_empty() {
            s.copies = vec![0; self.page_count as usize * PAGE_SIZE];
            s.recorded = vec![0; (self.page_count as usize).div_ceil(64)];
        }
        let (word, bit) = (page as usize / 64, 1 << (page % 64));
        if s.recorded[word] & bit != 0 {
            return;
        }
        s.recorded[word] |= bit;
        let at = page as usize * PAGE_SIZE;
        let copy = &mut s.copies[at..at + PAGE_SIZE];
        match data {
            Some(d) => copy.copy_from_slice(d),
            None => copy.fill(0),
        }
    }

    /// In postcopy, `page` has just been added to the batch: when precopy sent it and the
    /// first copy differs from the final content, that older copy is sent instead.
    pub(super) fn stale_send(&mut self, page: u64) {
        if !faults::on(Fault::StalePostcopyPage) {
            return;
        }
        let s = &self.stale;
        let sent = s
            .recorded
            .get(page as usize / 64)
            .is_some_and(|w| w & (1 << (page % 64)) != 0);
        if !sent {
            return;
        }
        let at = page as usize * PAGE_SIZE;
        let old: &[u8; PAGE_SIZE] = s.copies[at..at + PAGE_SIZE].try_into().expect("one page");
        let old = (old.iter().any(|b| *b != 0)).then_some(old);
        if self.batch.replace_last(page, old) {
            self.stale.planted += 1;
            if self.stale.planted == 1 {
                eprintln!("migtest-vmm: planted fault: page {page} sent in postcopy with stale data (and every later page that changed since precopy)");
            }
        }
    }
}
