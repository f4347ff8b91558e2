//! The engine's XBZRLE hooks (capability `xbzrle`): which pages go as
//! deltas, the XBZRLE records after each PAGES record, the counters.
//!
//! As QEMU 7.2: pages on multifd channels are never encoded (the engine's
//! multifd path does not come here); zero pages reset their cached copy;
//! postcopy sends whole pages.

use super::*;
use crate::migration::xbzrle::Send;

impl Engine<'_> {
    /// After `page` was copied into the batch's next slot (`nonzero`: not
    /// all zero): true when XBZRLE took care of it (encoded into the batch,
    /// or skipped as unchanged), false when it goes in the PAGES record.
    pub(super) fn xbzrle_page(&mut self, page: u64, nonzero: bool) -> bool {
        let Some(x) = self.xbz.as_mut() else {
            return false;
        };
        if !nonzero {
            x.zero_page(page, self.sync_count);
            return false;
        }
        match x.save_page(page, self.batch.slot(), self.sync_count, self.stopped_vm) {
            Send::Whole => false,
            Send::Skip => true,
            Send::Encoded(n) => {
                self.batch.xbz.extend_from_slice(x.encoded(n));
                self.batch.xbz_pages.push((page, n));
                true
            }
        }
    }

    /// Writes the batch's XBZRLE records and publishes the counters.
    pub(super) fn emit_xbzrle(&mut self) -> Result<(), Abort> {
        let mut at = 0;
        for &(page, n) in &self.batch.xbz_pages {
            self.w
                .xbzrle(page, &self.batch.xbz[at..at + n])
                .map_err(write_err)?;
            at += n;
        }
        self.window_pages += self.batch.xbz_pages.len() as u64;
        self.batch.xbz.clear();
        self.batch.xbz_pages.clear();
        self.xbzrle_publish();
        Ok(())
    }

    /// At a dirty sync; `rates`: a rate period ended (QEMU updates the
    /// XBZRLE rates with the dirty rate).
    pub(super) fn xbzrle_sync(&mut self, rates: bool) {
        let size = self.shared.params().xbzrle_cache_size;
        if let Some(x) = self.xbz.as_mut() {
            x.on_sync(self.sync_count, size);
            if rates {
                x.update_rates();
            }
        }
        self.xbzrle_publish();
    }

    /// Postcopy starts: whole pages from now on.
    pub(super) fn xbzrle_postcopy(&mut self) {
        if let Some(x) = self.xbz.as_mut() {
            x.stop_for_postcopy();
        }
    }

    fn xbzrle_publish(&self) {
        if let Some(x) = &self.xbz {
            lock(&self.out.info).xbzrle = Some(x.stats());
        }
    }
}
