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
/// How long the sending loop sleeps when `max-postcopy-bandwidth` allows
/// no background page yet (requests are still served after it).
const POSTCOPY_IDLE: Duration = Duration::from_millis(2);

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
        self.advance(MigrationStatus::Active, MigrationStatus::PostcopyActive)?;
        let precopy = self.w.written();
        self.xbzrle_postcopy();
        self.sync_dirty()?;
        self.w.postcopy(&self.bitmap).map_err(write_err)?;
        self.send_device_state()?;
        self.w.flush().map_err(write_err)?;
        let downtime = self.stop_time.map(|t| ms(t.elapsed())).unwrap_or(0);
        lock(&self.out.info).downtime = Some(downtime);
        let count = Arc::new(AtomicU64::new(0));
        let mut pc = PostcopyRun {
            requests: self.start_return_path(&count)?,
            count,
            set: self.bitmap.clone(),
            base: 0,
            precopy,
        };
        // A broken channel pauses postcopy; a recovery (`migrate` with
        // `resume`) goes on sending on the new one.
        loop {
            match self.postcopy_send(&pc) {
                Ok(()) => break,
                Err(Abort::PostcopyPaused(m) | Abort::Failed(m)) => {
                    self.pause_until_resumed(&mut pc, m)?
                }
                Err(e) => return Err(e),
            }
        }
        pc.update_stats(self, 0);
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

    /// The return path: a thread reading the other direction of the
    /// current migration socket into a new request queue.
    pub(super) fn start_return_path(
        &mut self,
        count: &Arc<AtomicU64>,
    ) -> Result<Arc<Requests>, Abort> {
        let requests = Arc::new(Requests::default());
        let rp = self.w.get_mut().get_mut().try_clone().map_err(write_err)?;
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
        Ok(requests)
    }

    /// Sends the pages still to come on the current channel (requested
    /// ones first), then END, and waits for the destination to close.
    fn postcopy_send(&mut self, pc: &PostcopyRun) -> Result<(), Abort> {
        while self.pending_pages > 0 {
            if self.cancelled() {
                return Err(Abort::Cancelled);
            }
            match pc.requests.end() {
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
            while let Some(page) = pc.requests.pop() {
                if self.take_page(page) {
                    self.add_page(page)?;
                    self.stale_send(page);
                    self.emit_batch()?;
                    served = true;
                }
            }
            if served {
                self.w.flush().map_err(write_err)?;
            }
            // Background pages within `max-postcopy-bandwidth`.
            let credit = self.budget().unwrap_or(u64::MAX);
            if credit < PAGE_SIZE as u64 + 16 {
                std::thread::sleep(POSTCOPY_IDLE);
                continue;
            }
            while self.batch.len() < BACKGROUND_BATCH
                && self.batch.wire_len() + PAGE_SIZE as u64 + 9 <= credit
            {
                let Some(page) = self.next_dirty() else { break };
                self.add_page(page)?;
                self.stale_send(page);
            }
            self.emit_batch()?;
            self.w.flush().map_err(write_err)?;
            pc.update_stats(self, self.pending_bytes());
        }
        self.w.end().map_err(write_err)?;
        self.w.get_mut().get_mut().shutdown_write();
        // The destination closes the channel once it has every page.
        match pc.requests.wait_end(READY_TIMEOUT) {
            Some(RpEnd::Closed) => Ok(()),
            Some(RpEnd::Error(m)) => Err(paused(m)),
            None => Err(paused(
                "Detected IO failure for postcopy. Migration paused. (no reply from the destination)".into(),
            )),
        }
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

/// The state of one postcopy phase across recoveries.
pub(super) struct PostcopyRun {
    /// The current return path's requests.
    pub requests: Arc<Requests>,
    /// Requests received, over every connection.
    pub count: Arc<AtomicU64>,
    /// The POSTCOPY bitmap: the only pages a destination may ask again for
    /// after a recovery.
    pub set: Vec<u64>,
    /// Bytes written on the connections before the current one.
    pub base: u64,
    /// Bytes written before postcopy started.
    pub precopy: u64,
}

impl PostcopyRun {
    fn update_stats(&self, e: &Engine<'_>, remaining: u64) {
        let written = self.base + e.w.written();
        let mut i = lock(&e.out.info);
        i.stats.postcopy_requests = self.count.load(Ordering::Relaxed);
        i.stats.transferred = written;
        i.stats.precopy_bytes = self.precopy;
        i.stats.postcopy_bytes = written - self.precopy;
        i.stats.remaining = remaining;
    }
}
