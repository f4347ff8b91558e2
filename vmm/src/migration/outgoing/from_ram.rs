//! Pages written onto the channel straight from guest RAM.
//!
//! On one channel without xbzrle, each PAGES record is its head and the
//! guest pages themselves in one `writev`: no copy into a batch buffer. The
//! stream digest does not cover page data (`docs/migration-stream.md`), so
//! nothing else needs to read a page; a vCPU writing a page while the
//! kernel copies it makes the source send that page again, as QEMU does
//! (`docs/performance.md`, eighth round). Zero pages are found as before
//! (never-touched pages without reading them), and a page that is zero but
//! for a few words goes as a SPARSE record instead (its non-zero runs only).

use super::*;
use crate::migration::stream::ZERO_ENTRY;
use crate::migration::xbzrle::{encode_sparse, SPARSE_MAX_ENCODED, SPARSE_WORDS};

/// Most SPARSE pages in one call of [`Engine::emit_from_ram`].
const SPARSE_BATCH: usize = 1024;
/// Bytes the destination may leave unread before a batch with SPARSE pages
/// is followed by more (see [`Engine::await_destination`]).
const SPARSE_LAG: usize = 4096;
/// Longest wait for the destination to read; then the source goes on (and
/// blocks on the socket as usual if the destination is stuck).
const SPARSE_LAG_WAIT: Duration = Duration::from_secs(1);

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
    /// `budget` bytes when given (the caller leaves room for one page), and
    /// a SPARSE record for each page that is zero but for at most
    /// [`SPARSE_WORDS`] words (counted against `budget` as a full page).
    pub(super) fn emit_from_ram(&mut self, budget: Option<u64>) -> Result<(), Abort> {
        if self.sparse_sent {
            self.await_destination()?;
        }
        let ram = self.ram;
        let mut entries = std::mem::take(&mut self.batch.entries);
        entries.clear();
        let mut pages: Vec<*const u8> = Vec::with_capacity(BATCH_DATA_PAGES);
        let mut words = [(0u16, 0u64); SPARSE_WORDS];
        let mut enc = [0u8; SPARSE_MAX_ENCODED];
        let mut sparse = 0usize;
        let result = loop {
            if pages.len() == BATCH_DATA_PAGES
                || entries.len() == BATCH_ENTRIES
                || sparse == SPARSE_BATCH
            {
                break Ok(());
            }
            let charged = 5 + entries.len() * 9 + (pages.len() + sparse) * PAGE_SIZE;
            if budget.is_some_and(|c| charged as u64 + PAGE_SIZE as u64 + 11 > c) {
                break Ok(());
            }
            let Some(page) = self.next_dirty() else {
                break Ok(());
            };
            match ram.sparse_words(page, &mut words) {
                Ok(Some(0)) => entries.push(page | ZERO_ENTRY),
                Ok(Some(n)) => {
                    let len = encode_sparse(&words[..n], &mut enc);
                    if let Err(e) = self.w.sparse(page, &enc[..len]) {
                        break Err(write_err(e));
                    }
                    self.sparse_credit += (PAGE_SIZE - len) as u64;
                    sparse += 1;
                }
                Ok(None) => match ram.send_source(page) {
                    Some(ptr) => {
                        entries.push(page);
                        pages.push(ptr);
                    }
                    None => break Err(Abort::Failed(format!("cannot read guest page {page}"))),
                },
                Err(m) => break Err(Abort::Failed(format!("cannot read guest page {page}: {m}"))),
            }
        };
        let written = match result {
            Err(e) => Err(e),
            Ok(()) if entries.is_empty() => Ok(()),
            // SAFETY: each pointer is a whole page of guest RAM, which
            // outlives the engine, and is never read through a reference.
            Ok(()) => unsafe { self.w.pages_raw(&entries, &pages) }.map_err(write_err),
        };
        self.sparse_sent = sparse > 0;
        let (zero, full) = (entries.len() - pages.len(), pages.len() + sparse);
        entries.clear();
        self.batch.entries = entries;
        written?;
        self.count_pages(zero, full);
        Ok(())
    }

    /// After a batch with SPARSE pages: flushes, then waits (up to
    /// [`SPARSE_LAG_WAIT`]) until the destination has read all but
    /// [`SPARSE_LAG`] bytes. A SPARSE page is a few bytes on the wire but a
    /// page write at the destination (a fault into fresh memory), so the
    /// socket buffer, which paces whole pages, would let the destination
    /// fall far behind; its backlog would then land in the downtime.
    fn await_destination(&mut self) -> Result<(), Abort> {
        self.w.flush().map_err(write_err)?;
        let deadline = Instant::now() + SPARSE_LAG_WAIT;
        while self
            .w
            .get_mut()
            .get_ref()
            .unread()
            .is_some_and(|n| n > SPARSE_LAG)
        {
            if self.cancelled() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }
}
