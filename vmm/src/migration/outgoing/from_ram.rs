//! Pages written onto the channel straight from guest RAM.
//!
//! On one channel without xbzrle, each PAGES record is its head and the
//! guest pages themselves in one `writev`: no copy into a batch buffer. The
//! stream digest does not cover page data (`docs/migration-stream.md`), so
//! nothing else needs to read a page; a vCPU writing a page while the
//! kernel copies it makes the source send that page again, as QEMU does
//! (`docs/performance.md`, eighth round). Zero pages are found as before
//! (never-touched pages without reading them).

use super::*;
use crate::migration::stream::ZERO_ENTRY;

impl Engine<'_> {
    /// Whether pages may go straight from guest RAM: one channel, no
    /// xbzrle (its cache wants copies), no planted bug inspecting the
    /// copies, and a RAM that can.
    pub(super) fn send_from_ram(&self) -> bool {
        self.mfd.is_none()
            && self.xbz.is_none()
            && !faults::on(Fault::SkipOneDirtyPage)
            && !faults::on(Fault::StalePostcopyPage)
            && self.ram.send_source(0).is_some()
    }

    /// One PAGES record of dirty pages written from guest RAM, within
    /// `budget` bytes when given (the caller leaves room for one page).
    pub(super) fn emit_from_ram(&mut self, budget: Option<u64>) -> Result<(), Abort> {
        let ram = self.ram;
        let mut entries = std::mem::take(&mut self.batch.entries);
        entries.clear();
        let mut pages: Vec<*const u8> = Vec::with_capacity(BATCH_DATA_PAGES);
        while pages.len() < BATCH_DATA_PAGES && entries.len() < BATCH_ENTRIES {
            let wire = (5 + entries.len() * 9 + pages.len() * PAGE_SIZE) as u64;
            if budget.is_some_and(|c| wire + PAGE_SIZE as u64 + 9 > c) {
                break;
            }
            let Some(page) = self.next_dirty() else { break };
            if ram.page_is_zero(page) {
                entries.push(page | ZERO_ENTRY);
                continue;
            }
            match ram.send_source(page) {
                Some(ptr) => {
                    entries.push(page);
                    pages.push(ptr);
                }
                None => {
                    return Err(Abort::Failed(format!("cannot read guest page {page}")));
                }
            }
        }
        let written = if entries.is_empty() {
            Ok(())
        } else {
            // SAFETY: each pointer is a whole page of guest RAM, which
            // outlives the engine, and is never read through a reference.
            unsafe { self.w.pages_raw(&entries, &pages) }.map_err(write_err)
        };
        let (zero, full) = (entries.len() - pages.len(), pages.len());
        entries.clear();
        self.batch.entries = entries;
        written?;
        self.count_pages(zero, full);
        Ok(())
    }
}
