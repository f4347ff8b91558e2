//! Pages onto the wire: the PAGES batch, the rate limit and the bandwidth window.

use super::*;

/// The PAGES record being built: entries and the copied full pages; and
/// the XBZRLE records written after it (`xbz`: the encodings one after the
/// other, `xbz_pages`: page and length of each).
pub(super) struct Batch {
    pub(super) entries: Vec<u64>,
    data: Vec<u8>,
    full: usize,
    pub(super) xbz: Vec<u8>,
    pub(super) xbz_pages: Vec<(u64, usize)>,
}

impl Batch {
    pub(super) fn new() -> Batch {
        Batch {
            entries: Vec::with_capacity(BATCH_ENTRIES),
            data: vec![0; BATCH_DATA_PAGES * PAGE_SIZE],
            full: 0,
            xbz: Vec::new(),
            xbz_pages: Vec::new(),
        }
    }

    /// Drops what was added (the channel it was for is gone).
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.full = 0;
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn is_full(&self) -> bool {
        self.full == BATCH_DATA_PAGES
            || self.entries.len() == BATCH_ENTRIES
            || self.xbz.len() + MAX_ENCODED > BATCH_DATA_PAGES * PAGE_SIZE
    }

    /// Bytes the record will take on the wire.
    pub(super) fn wire_len(&self) -> u64 {
        (5 + self.entries.len() * 9 + self.full * PAGE_SIZE) as u64
            + (self.xbz.len() + self.xbz_pages.len() * 11) as u64
    }

    /// Planted bug `StalePostcopyPage`: makes the last entry, when it is `page`, carry `data`
    /// (a zero page when `None`) instead of what it carries; whether that changed anything.
    pub(super) fn replace_last(&mut self, page: u64, data: Option<&[u8; PAGE_SIZE]>) -> bool {
        let Some(last) = self.entries.last_mut() else {
            return false;
        };
        if *last & !ZERO_ENTRY != page {
            return false;
        }
        let s = self.full.saturating_sub(1) * PAGE_SIZE;
        match (*last & ZERO_ENTRY != 0, data) {
            (true, None) => false,
            (false, None) => {
                *last = page | ZERO_ENTRY;
                self.full -= 1;
                true
            }
            (true, Some(_)) if self.full == BATCH_DATA_PAGES => false,
            (true, Some(d)) => {
                *last = page;
                let s = self.full * PAGE_SIZE;
                self.data[s..s + PAGE_SIZE].copy_from_slice(d);
                self.full += 1;
                true
            }
            (false, Some(d)) if self.data[s..s + PAGE_SIZE] == d[..] => false,
            (false, Some(d)) => {
                self.data[s..s + PAGE_SIZE].copy_from_slice(d);
                true
            }
        }
    }

    /// The slot the next full page is copied into.
    pub(super) fn slot(&mut self) -> &mut [u8; PAGE_SIZE] {
        let s = self.full * PAGE_SIZE;
        (&mut self.data[s..s + PAGE_SIZE])
            .try_into()
            .expect("slot is one page")
    }
}

impl Engine<'_> {
    /// Takes the next page from the migration bitmap.
    pub(super) fn next_dirty(&mut self) -> Option<u64> {
        if self.pending_pages == 0 {
            return None;
        }
        let n = self.bitmap.len();
        for k in 0..n {
            let w = (self.scan_word + k) % n;
            let bits = self.bitmap[w];
            if bits != 0 {
                let b = bits.trailing_zeros() as u64;
                self.bitmap[w] &= !(1u64 << b);
                self.scan_word = w;
                self.pending_pages -= 1;
                return Some(w as u64 * 64 + b);
            }
        }
        self.pending_pages = 0;
        None
    }

    /// Adds `page` to the batch: a zero entry, or its copy in the next slot.
    pub(super) fn add_page(&mut self, page: u64) -> Result<(), Abort> {
        let slot = self.batch.slot();
        let nonzero = self
            .ram
            .copy_page_nonzero(page, slot)
            .map_err(|m| Abort::Failed(format!("cannot read guest page {page}: {m}")))?;
        if faults::on(Fault::SkipOneDirtyPage) && self.skip_planted_page(page)? {
            return Ok(());
        }
        if faults::on(Fault::StalePostcopyPage) {
            let copy = nonzero.then(|| *self.batch.slot());
            self.stale_record(page, copy.as_ref());
        }
        if self.xbzrle_page(page, nonzero) {
            return Ok(());
        }
        if nonzero {
            self.batch.entries.push(page);
            self.batch.full += 1;
        } else {
            self.batch.entries.push(page | ZERO_ENTRY);
        }
        Ok(())
    }

    /// Writes the batch as one PAGES record (one vectored write) and counts it.
    pub(super) fn emit_batch(&mut self) -> Result<(), Abort> {
        if self.batch.entries.is_empty() && self.batch.xbz_pages.is_empty() {
            return Ok(());
        }
        let full = self.batch.full;
        let zero = self.batch.entries.len() - full;
        if !self.batch.entries.is_empty() {
            self.w
                .pages(&self.batch.entries, &self.batch.data[..full * PAGE_SIZE])
                .map_err(write_err)?;
        }
        self.emit_xbzrle()?;
        self.batch.entries.clear();
        self.batch.full = 0;
        self.count_pages(zero, full);
        Ok(())
    }

    /// Counts `zero` zero and `full` full pages just written.
    pub(super) fn count_pages(&mut self, zero: usize, full: usize) {
        self.window_pages += (zero + full) as u64;
        let mut i = lock(&self.out.info);
        i.stats.duplicate += zero as u64;
        i.stats.normal += full as u64;
        i.stats.normal_bytes += (full * PAGE_SIZE) as u64;
    }

    /// Planted bug `SkipOneDirtyPage`: in the stop-and-copy pass (guest stopped), drops the
    /// first page whose destination copy is stale, so the loss always shows. The page has
    /// just been copied into the batch's next slot.
    pub(super) fn skip_planted_page(&mut self, page: u64) -> Result<bool, Abort> {
        let digest = page_digest(self.batch.slot());
        if self.stopped_vm && self.skipped_page.is_none() && self.sent_digest(page) != digest {
            self.skipped_page = Some(page);
            return Ok(true);
        }
        self.sent_digest(page);
        self.sent_digest[page as usize] = digest;
        Ok(false)
    }

    /// `SkipOneDirtyPage`: the digest of what the destination holds of `page`.
    pub(super) fn sent_digest(&mut self, page: u64) -> u64 {
        if self.sent_digest.is_empty() {
            // A page never sent is zero on the destination.
            let zero = page_digest(&[0u8; PAGE_SIZE]);
            self.sent_digest = vec![zero; self.page_count as usize];
        }
        self.sent_digest[page as usize]
    }

    /// Bytes that may be written now under `max-bandwidth` (in postcopy:
    /// `max-postcopy-bandwidth`) (None =
    /// unlimited): a token bucket filling at the cap, holding at most one
    /// [`WINDOW`]'s worth (QEMU's per-window budget) so an idle spell does
    /// not turn into a burst.
    pub(super) fn budget(&mut self) -> Option<u64> {
        let p = self.shared.params();
        let bw = if self.out.status() == MigrationStatus::PostcopyActive {
            p.max_postcopy_bandwidth
        } else {
            p.max_bandwidth
        };
        if bw == 0 {
            return None;
        }
        let written = self.charged();
        // At least one full page with its record overhead, so a cap below
        // 41 KB/s still sends (one page per bucket).
        let burst = (bw / 10).max(PAGE_SIZE as u64 + 64);
        if bw != self.bucket_rate {
            self.bucket_rate = bw;
            self.bucket_start = Instant::now();
            self.bucket_bytes_start = written;
        }
        let earned = (self.bucket_start.elapsed().as_secs_f64() * bw as f64) as u64;
        let spent = written - self.bucket_bytes_start;
        let credit = (earned + burst).saturating_sub(spent);
        if credit > burst {
            // Forget credit beyond one burst: restart the bucket full.
            self.bucket_start = Instant::now();
            self.bucket_bytes_start = written;
            return Some(burst);
        }
        Some(credit)
    }

    /// Sends one batch (up to 1 MiB of pages) within the rate limit; when
    /// the budget is spent, flushes and sleeps until a page's worth is earned.
    pub(super) fn send_batch(&mut self) -> Result<(), Abort> {
        let budget = self.budget();
        if let Some(credit) = budget {
            if credit < PAGE_SIZE as u64 + 16 {
                self.w.flush().map_err(write_err)?;
                let need = (PAGE_SIZE as u64 + 16 - credit) as f64;
                let wait = Duration::from_secs_f64(need / self.bucket_rate.max(1) as f64);
                std::thread::sleep(
                    wait.clamp(Duration::from_micros(200), Duration::from_millis(10)),
                );
                return Ok(());
            }
        }
        if self.mfd.is_some() {
            let per_page = PAGE_SIZE as u64 + 8;
            self.send_job(budget.map_or(usize::MAX, |c| (c / per_page) as usize))?;
        } else if self.send_from_ram() {
            self.emit_from_ram(budget)?;
        } else {
            while !self.batch.is_full() {
                if budget.is_some_and(|c| self.batch.wire_len() + PAGE_SIZE as u64 + 9 > c) {
                    break;
                }
                let Some(page) = self.next_dirty() else { break };
                self.add_page(page)?;
            }
            self.emit_batch()?;
        }
        let mut i = lock(&self.out.info);
        i.stats.transferred = self.written();
        i.stats.precopy_bytes = self.written();
        i.stats.remaining = self.pending_bytes();
        Ok(())
    }

    /// QEMU's `migration_update_counters`, once per window.
    pub(super) fn update_window(&mut self) {
        let el = self.window_start.elapsed();
        if el < WINDOW {
            return;
        }
        let el_ms = el.as_secs_f64() * 1000.0;
        let bytes = self.charged() - self.window_bytes_start;
        let wire = self.written() - self.window_wire_start;
        if bytes > 0 {
            self.bandwidth = bytes as f64 / el_ms;
        }
        let p = self.shared.params();
        self.threshold = switchover::threshold(
            self.bandwidth,
            p.downtime_limit,
            p.avail_switchover_bandwidth,
        );
        {
            let mut i = lock(&self.out.info);
            i.stats.mbps = wire as f64 * 8.0 / el_ms / 1000.0;
            i.stats.pages_per_second = (self.window_pages as f64 * 1000.0 / el_ms) as u64;
            i.expected_downtime = if self.bandwidth > 0.0 {
                (self.pending_bytes() as f64 / self.bandwidth) as u64
            } else {
                0
            };
            i.stats.transferred = self.written();
            i.stats.remaining = self.pending_bytes();
        }
        self.window_start = Instant::now();
        self.window_bytes_start = self.charged();
        self.window_wire_start = self.written();
        self.window_pages = 0;
    }
}

/// FNV-1a of a page (planted bug `SkipOneDirtyPage` only).
fn page_digest(page: &[u8; PAGE_SIZE]) -> u64 {
    page.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_with(page: u64, data: Option<u8>) -> Batch {
        let mut b = Batch::new();
        match data {
            Some(v) => {
                b.slot().fill(v);
                b.entries.push(page);
                b.full += 1;
            }
            None => b.entries.push(page | ZERO_ENTRY),
        }
        b
    }

    #[test]
    fn replace_last_swaps_data_zero_and_full() {
        let old = [7u8; PAGE_SIZE];
        // Full page replaced by other data.
        let mut b = batch_with(3, Some(1));
        assert!(b.replace_last(3, Some(&old)));
        assert_eq!((b.full, b.entries[0]), (1, 3));
        assert_eq!(b.data[..PAGE_SIZE], old[..]);
        // The same data: nothing changes.
        assert!(!b.replace_last(3, Some(&old)));
        // A zero entry becomes a full page, and back.
        let mut b = batch_with(4, None);
        assert!(b.replace_last(4, Some(&old)));
        assert_eq!((b.full, b.entries[0]), (1, 4));
        assert_eq!(b.wire_len(), (5 + 9 + PAGE_SIZE) as u64);
        assert!(b.replace_last(4, None));
        assert_eq!((b.full, b.entries[0]), (0, 4 | ZERO_ENTRY));
        assert!(!b.replace_last(4, None));
        // Another page than the last entry's: untouched.
        assert!(!b.replace_last(5, Some(&old)));
        assert!(!Batch::new().replace_last(0, None));
    }
}
