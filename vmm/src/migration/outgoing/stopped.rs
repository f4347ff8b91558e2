//! The stop-and-copy pass on one channel, straight from guest RAM.
//!
//! With the guest stopped nothing writes its RAM, so the final pass needs
//! no copy of a page to send a consistent one: each PAGES record's head and
//! the pages themselves go in one `writev`, the digest reading the same
//! bytes (`docs/performance.md`, fourth round). Zero pages are found as
//! before (never-touched pages without reading them).

use super::*;
use crate::migration::stream::ZERO_ENTRY;

impl Engine<'_> {
    /// Whether the final pass may write pages straight from guest RAM: the
    /// guest stopped, one channel, no xbzrle (its cache wants copies), no
    /// planted bug inspecting the copies, and a RAM that can.
    pub(super) fn send_from_ram(&self) -> bool {
        // SAFETY: the slice is dropped at once.
        self.stopped_vm
            && self.mfd.is_none()
            && self.xbz.is_none()
            && !faults::on(Fault::SkipOneDirtyPage)
            && unsafe { self.ram.stopped_page(0) }.is_some()
    }

    /// One PAGES record of dirty pages, written from guest RAM.
    pub(super) fn emit_from_ram(&mut self) -> Result<(), Abort> {
        let ram = self.ram;
        let mut entries = std::mem::take(&mut self.batch.entries);
        entries.clear();
        let mut pages: Vec<&[u8]> = Vec::with_capacity(BATCH_DATA_PAGES);
        while pages.len() < BATCH_DATA_PAGES && entries.len() < BATCH_ENTRIES {
            let Some(page) = self.next_dirty() else { break };
            if ram.page_is_zero(page) {
                entries.push(page | ZERO_ENTRY);
                continue;
            }
            // SAFETY: the guest is stopped for the whole final pass
            // (`send_from_ram`), and `pages` lives only until the write.
            match unsafe { ram.stopped_page(page) } {
                Some(bytes) => {
                    entries.push(page);
                    pages.push(bytes);
                }
                None => {
                    return Err(Abort::Failed(format!("cannot read guest page {page}")));
                }
            }
        }
        let written = if entries.is_empty() {
            Ok(())
        } else {
            self.w.pages_vectored(&entries, &pages).map_err(write_err)
        };
        let (zero, full) = (entries.len() - pages.len(), pages.len());
        entries.clear();
        self.batch.entries = entries;
        written?;
        self.count_pages(zero, full);
        Ok(())
    }
}
