//! `auto-converge`: QEMU's CPU throttling of a source guest that dirties
//! memory faster than the migration sends it.
//!
//! - [`check_rates`] / [`check_max`]: QEMU 7.2's range checks of the four
//!   parameters (`migrate_params_check`), with its texts. Like QEMU they
//!   look at the parameters as they would be after the request, so setting
//!   `cpu-throttle-initial` above the current `max-cpu-throttle` fails.
//! - [`Trigger`]: QEMU's `migration_trigger_throttle` and
//!   `mig_throttle_guest_down` (migration/ram.c): at a dirty-bitmap sync
//!   that closes a period of at least one second, if the bytes dirtied in
//!   the period exceed `throttle-trigger-threshold` % (50) of the bytes
//!   sent in it, a counter goes up; when it reaches two the throttle
//!   starts at `cpu-throttle-initial` or goes up by `cpu-throttle-increment`
//!   (with `cpu-throttle-tailslow`, by less when close to the threshold),
//!   at most `max-cpu-throttle`, and the counter restarts.
//! - The vCPUs apply it (`guest::throttle`): at `p` % a vCPU runs 10 ms
//!   then sleeps `10 ms * p / (100 - p)`, as QEMU's `cpu_throttle_thread`.
//! - The migration lifts it when it ends (`lift`, QEMU's
//!   `migration_iteration_finish` → `cpu_throttle_stop`), before the
//!   terminal status is set so no client sees a finished migration still
//!   throttling.

use super::faults::{self, Fault};
use super::host::MigrationHost;
use super::params::Parameters;
use migtest_qmp::ErrorBody;

#[cfg(test)]
mod tests;

/// `DEFAULT_MIGRATE_CPU_THROTTLE_INITIAL`.
pub const DEFAULT_INITIAL: u8 = 20;
/// `DEFAULT_MIGRATE_CPU_THROTTLE_INCREMENT`.
pub const DEFAULT_INCREMENT: u8 = 10;
/// `DEFAULT_MIGRATE_MAX_CPU_THROTTLE`.
pub const DEFAULT_MAX: u8 = 99;
/// `DEFAULT_MIGRATE_THROTTLE_TRIGGER_THRESHOLD` (QEMU's
/// `throttle-trigger-threshold`, which migtest-vmm does not let be set).
pub const TRIGGER_THRESHOLD: u64 = 50;
/// `CPU_THROTTLE_PCT_MAX`.
pub const PCT_MAX: u8 = 99;

fn range_error(param: &str, range: &str) -> ErrorBody {
    ErrorBody::generic(format!(
        "Parameter '{param}' expects an integer in the range of {range}"
    ))
}

/// QEMU 7.2's checks of `cpu_throttle_initial` and `cpu_throttle_increment`
/// (before `max_bandwidth` and `downtime_limit`).
pub fn check_rates(p: &Parameters) -> Result<(), ErrorBody> {
    if !(1..=99).contains(&p.cpu_throttle_initial) {
        return Err(range_error("cpu_throttle_initial", "1 to 99"));
    }
    if !(1..=99).contains(&p.cpu_throttle_increment) {
        return Err(range_error("cpu_throttle_increment", "1 to 99"));
    }
    Ok(())
}

/// QEMU 7.2's check of `max_cpu_throttle` (after the others).
pub fn check_max(p: &Parameters) -> Result<(), ErrorBody> {
    if p.max_cpu_throttle < p.cpu_throttle_initial || p.max_cpu_throttle > 99 {
        return Err(range_error(
            "max_cpu_throttle",
            "cpu_throttle_initial to 99",
        ));
    }
    Ok(())
}

/// QEMU's `mig_throttle_guest_down`: the next throttle percentage from the
/// current one (0 = not throttling yet) and the period's figures.
pub fn next_percentage(now: u8, p: &Parameters, dirty_bytes: u64, threshold_bytes: u64) -> u8 {
    if now == 0 {
        return p.cpu_throttle_initial.clamp(1, PCT_MAX);
    }
    let inc = if p.cpu_throttle_tailslow {
        // The CPU share that would bring the dirty rate down to the
        // threshold; step at most `cpu-throttle-increment` towards it.
        let cpu_now = 100 - u64::from(now);
        let cpu_ideal = (cpu_now as f64 * (threshold_bytes as f64 / dirty_bytes as f64)) as u64;
        cpu_now
            .saturating_sub(cpu_ideal)
            .min(u64::from(p.cpu_throttle_increment))
    } else {
        u64::from(p.cpu_throttle_increment)
    };
    let next = (u64::from(now) + inc).min(u64::from(p.max_cpu_throttle));
    // `cpu_throttle_set` clamps to 1..=99.
    (next as u8).clamp(1, PCT_MAX)
}

/// The per-migration state of QEMU's `migration_trigger_throttle`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Trigger {
    /// `dirty_rate_high_cnt`.
    high_count: u32,
    /// `bytes_xfer_prev`: bytes sent when the period started.
    xfer_prev: u64,
    /// `num_dirty_pages_period`: pages newly dirtied in the period.
    dirty_pages: u64,
}

impl Trigger {
    /// Counts the pages a sync found newly dirty. As in QEMU, the pages
    /// every migration starts with (its bitmap set in full) do not count:
    /// the engine does not report the setup sync.
    pub fn dirtied(&mut self, pages: u64) {
        self.dirty_pages += pages;
    }

    /// Called at a sync that closes a period of at least one second, with
    /// the bytes sent so far. Returns the new throttle percentage when it
    /// changes (from `now`, per the parameters `p`).
    pub fn period_end(
        &mut self,
        enabled: bool,
        (now, p): (u8, &Parameters),
        transferred: u64,
    ) -> Option<u8> {
        let xfer_period = transferred.saturating_sub(self.xfer_prev);
        self.xfer_prev = transferred;
        let dirty_bytes = std::mem::take(&mut self.dirty_pages) * super::PAGE_SIZE as u64;
        if !enabled {
            return None;
        }
        let threshold = xfer_period * TRIGGER_THRESHOLD / 100;
        if dirty_bytes > threshold {
            self.high_count += 1;
            if self.high_count >= 2 {
                self.high_count = 0;
                return Some(next_percentage(now, p, dirty_bytes, threshold));
            }
        }
        None
    }
}

/// Ends the throttle of the migration that is finishing (QEMU's
/// `cpu_throttle_stop`); the planted fault `throttle-never-lifted` skips it.
pub(crate) fn lift(host: &dyn MigrationHost) {
    if !faults::on(Fault::ThrottleNeverLifted) {
        host.set_cpu_throttle(0);
    }
}
