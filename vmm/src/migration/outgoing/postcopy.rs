//! The source's side of postcopy (`migrate-start-postcopy`).
//!
//! The guest stops here; the pages still dirty become the POSTCOPY bitmap,
//! the device state follows and the destination runs the guest. Then every
//! page of the bitmap is sent exactly once: pages the destination asks for
//! over the return path first, the rest in the background.

use super::*;
use crate::migration::postcopy::{read_return_path, Requests, RpEnd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Background pages per PAGES record in postcopy: small, so a request
/// waits behind at most this many pages.
const BACKGROUND_BATCH: usize = 32;

/// Why postcopy stopped short.
fn paused(msg: String) -> Abort {
    Abort::PostcopyPaused(msg)
}

impl Engine<'_> {
    /// QEMU's `migration_should_start_postcopy`: the flag set by
    /// `migrate-start-postcopy`. RAM is all postcopiable (nothing must go
    /// in precopy), and `switchover-hold` does not enter into it.
    pub(super) fn should_start_postcopy(&self) -> bool {
        self.out.start_postcopy.load(Ordering::SeqCst)
            && lock(&self.shared.caps).get("postcopy-ram")
    }

    /// Switches to postcopy and runs it to completion.
    pub(super) fn postcopy(&mut self) -> Result<(), Abort> {
        self.stop_guest();
        if self.cancelled() {
            return Err(Abort::Cancelled);
        }
        if !self.out.set_status(
            self.shared,
            self.host,
            MigrationStatus::Active,
            MigrationStatus::PostcopyActive,
        ) {
            return Err(Abort::Cancelled);
        }
        let precopy = self.w.written();
        self.xbzrle_postcopy();
        self.sync_dirty()?;
        self.w.postcopy(&self.bitmap).map_err(write_err)?;
        self.send_device_state()?;
        self.w.flush().map_err(write_err)?;
        let downtime = self.stop_time.map(|t| ms(t.elapsed())).unwrap_or(0);
        lock(&self.out.info).downtime = Some(downtime);
        // The return path: the other direction of the migration socket.
        let requests = Arc::new(Requests::default());
        let count = Arc::new(AtomicU64::new(0));
        let rp = self.w.get_mut().get_mut().try_clone().map_err(write_err)?;
        {
            let (q, c, pages) = (requests.clone(), count.clone(), self.page_count);
            std::thread::Builder::new()
                .name("mig/src/rp".into())
                .spawn(move || {
                    let end = read_return_path(rp, pages, &q, &|| {
                        c.fetch_add(1, Ordering::Relaxed);
                    });
                    q.close(end);
                })
                .map_err(|e| Abort::Failed(format!("cannot start the return path thread: {e}")))?;
        }
        while self.pending_pages > 0 {
            if self.cancelled() {
                return Err(Abort::Cancelled);
            }
            match requests.end() {
                Some(RpEnd::Error(m)) => return Err(paused(m)),
                Some(RpEnd::Closed) => {
                    return Err(paused(
                        "Detected IO failure for postcopy. Migration paused. (the destination closed the return path)".into(),
                    ))
                }
                None => {}
            }
            // Requested pages first, each in its own record, at once.
            let mut served = false;
            while let Some(page) = requests.pop() {
                if self.take_page(page) {
                    self.add_page(page)?;
                    self.emit_batch()?;
                    served = true;
                }
            }
            if served {
                self.w.flush().map_err(write_err)?;
            }
            while self.batch.len() < BACKGROUND_BATCH {
                let Some(page) = self.next_dirty() else { break };
                self.add_page(page)?;
            }
            self.emit_batch()?;
            self.w.flush().map_err(write_err)?;
            let mut i = lock(&self.out.info);
            i.stats.postcopy_requests = count.load(Ordering::Relaxed);
            i.stats.transferred = self.w.written();
            i.stats.postcopy_bytes = self.w.written() - precopy;
            i.stats.remaining = self.pending_bytes();
        }
        self.w.end().map_err(write_err)?;
        self.w.get_mut().get_mut().shutdown_write();
        // The destination closes the channel once it has every page.
        match requests.wait_end(READY_TIMEOUT) {
            Some(RpEnd::Closed) => {}
            Some(RpEnd::Error(m)) => return Err(paused(m)),
            None => {
                return Err(paused(
                    "Detected IO failure for postcopy. Migration paused. (no reply from the destination)".into(),
                ))
            }
        }
        {
            let mut i = lock(&self.out.info);
            i.stats.postcopy_requests = count.load(Ordering::Relaxed);
            i.stats.transferred = self.w.written();
            i.stats.precopy_bytes = precopy;
            i.stats.postcopy_bytes = self.w.written() - precopy;
            i.stats.remaining = 0;
        }
        if !self.out.set_status(
            self.shared,
            self.host,
            MigrationStatus::PostcopyActive,
            MigrationStatus::Completed,
        ) {
            return Err(Abort::Cancelled);
        }
        self.host.set_runstate(RunState::Postmigrate);
        Ok(())
    }

    /// Takes `page` out of the bitmap if it is still to be sent.
    fn take_page(&mut self, page: u64) -> bool {
        let (w, bit) = ((page / 64) as usize, 1u64 << (page % 64));
        match self.bitmap.get_mut(w) {
            Some(v) if *v & bit != 0 => {
                *v &= !bit;
                self.pending_pages -= 1;
                true
            }
            _ => false,
        }
    }
}
