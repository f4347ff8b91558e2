//! The pass loop: start, the switchover decision, dirty-bitmap sync.

use super::*;

impl Engine<'_> {
    pub(super) fn cancelled(&self) -> bool {
        self.out.status() == MigrationStatus::Cancelling
    }

    pub(super) fn migrate(&mut self, header: Header) -> Result<(), Abort> {
        self.w.header(&header).map_err(write_err)?;
        self.ram.dirty_set_all();
        // The first sync (pass 1) belongs to setup, as in QEMU's
        // ram_save_setup: MIGRATION_PASS 1 comes before MIGRATION active.
        self.sync_dirty()?;
        {
            let mut i = lock(&self.out.info);
            i.setup_time = Some(ms(i.start.elapsed()));
        }
        self.advance(MigrationStatus::Setup, MigrationStatus::Active)?;
        self.window_start = Instant::now();
        loop {
            if self.cancelled() {
                return Err(Abort::Cancelled);
            }
            // Planted bug: without a hold, no exact sync before the switchover decision.
            let skip_sync = faults::on(Fault::SkipLastDirtyPass)
                && self.sync_count > 0
                && !self.shared.params().switchover_hold;
            if self.pending_bytes() < self.threshold && !skip_sync {
                // Close to switchover: sync to know what really remains
                // (QEMU's ram_save_pending). With nothing measured yet the
                // threshold is 0 and an empty bitmap completes at once,
                // which is why a one-pass migration reports 2 syncs.
                self.sync_dirty()?;
            }
            if self.should_start_postcopy() {
                return self.postcopy();
            }
            if self.decide_complete() {
                return self.complete();
            }
            if self.pending_pages > 0 {
                self.send_batch()?;
            }
            // Like QEMU's per-iteration fflush: what was sent reaches the
            // destination now (a holding migration keeps it up to date) and
            // a dead destination is noticed.
            self.w.flush().map_err(write_err)?;
            self.check_channels()?;
            self.update_window();
        }
    }

    pub(super) fn pending_bytes(&self) -> u64 {
        self.pending_pages * PAGE_SIZE as u64
    }

    /// The switchover decision, with `switchover-hold`.
    pub(super) fn decide_complete(&mut self) -> bool {
        let p = self.shared.params();
        let pending = self.pending_bytes();
        let mut hold = p.switchover_hold;
        if faults::on(Fault::HoldIgnoredAfterMigrate) && !self.hold_at_start {
            hold = false;
        }
        if faults::on(Fault::ReleaseNotSeen) && self.has_held {
            hold = true;
        }
        if hold {
            self.has_held = true;
        }
        switchover::should_complete(pending, self.threshold, hold, &self.shared.hold_sem)
    }

    /// Syncs the guest's dirty bitmap into the migration bitmap: one pass.
    pub(super) fn sync_dirty(&mut self) -> Result<(), Abort> {
        let newly = self.ram.dirty_take_into(&mut self.bitmap);
        if let Some(last) = self.bitmap.last_mut() {
            // No page exists beyond the last one (a test RAM may set them).
            if !self.page_count.is_multiple_of(64) {
                *last &= (1u64 << (self.page_count % 64)) - 1;
            }
        }
        self.pending_pages = self.bitmap.iter().map(|w| u64::from(w.count_ones())).sum();
        self.sync_count += 1;
        // Dirty rate as QEMU computes it: pages newly dirtied over a period
        // of at least one second, updated at the sync that closes it.
        self.dirty_period_pages += newly;
        if self.sync_count > 1 {
            self.throttle.dirtied(newly);
        }
        let secs = self.last_sync.elapsed().as_secs_f64();
        let rate = (secs >= 1.0).then(|| (self.dirty_period_pages as f64 / secs) as u64);
        if rate.is_some() {
            self.trigger_throttle();
            self.last_sync = Instant::now();
            self.dirty_period_pages = 0;
        }
        self.xbzrle_sync(rate.is_some());
        {
            let mut i = lock(&self.out.info);
            i.stats.dirty_sync_count = self.sync_count;
            i.stats.remaining = self.pending_bytes();
            if let Some(r) = rate {
                i.stats.dirty_pages_rate = r;
            }
        }
        if self.shared.events_on() {
            self.host
                .emit("MIGRATION_PASS", Some(json!({ "pass": self.sync_count })));
        }
        self.w.pass(self.sync_count).map_err(write_err)?;
        self.sync_channels(self.sync_count)
    }
}
