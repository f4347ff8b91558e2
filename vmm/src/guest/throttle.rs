//! The vCPU side of auto-converge (QEMU's `cpu_throttle_thread`,
//! softmmu/cpu-throttle.c): at `p` % a vCPU runs a 10 ms time slice, then
//! sleeps `10 ms * p / (100 - p)`, so it runs `100 - p` % of the time.
//! The sleep ends early when the vCPUs are paused or the throttle lifted.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// `CPU_THROTTLE_TIMESLICE_NS`.
pub const TIMESLICE: Duration = Duration::from_millis(10);

/// The throttle percentage shared by all vCPUs (0 = off).
#[derive(Debug, Default)]
pub struct Throttle {
    pct: AtomicU8,
}

impl Throttle {
    /// Sets the percentage (clamped to 0..=99).
    pub fn set(&self, pct: u8) {
        self.pct.store(pct.min(99), Ordering::SeqCst);
    }

    /// The current percentage.
    pub fn get(&self) -> u8 {
        self.pct.load(Ordering::Relaxed)
    }

    /// After a workload step: the sleep owed when the current time slice
    /// (started at `*slice`) is used up, and a new slice begins.
    pub fn owed(&self, slice: &mut Instant) -> Option<Duration> {
        let pct = u32::from(self.get());
        if pct == 0 {
            *slice = Instant::now();
            return None;
        }
        if slice.elapsed() < TIMESLICE {
            return None;
        }
        *slice = Instant::now();
        Some(sleep_for(pct))
    }
}

/// QEMU's `sleeptime_ns = pct / (1 - pct) * CPU_THROTTLE_TIMESLICE_NS`.
pub fn sleep_for(pct: u32) -> Duration {
    let pct = pct.min(99);
    TIMESLICE * pct / (100 - pct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_share_is_the_percentage() {
        for pct in 1..=99u32 {
            let s = sleep_for(pct).as_secs_f64();
            let share = s / (s + TIMESLICE.as_secs_f64());
            assert!(
                (share - f64::from(pct) / 100.0).abs() < 1e-3,
                "{pct}: {share}"
            );
        }
        assert_eq!(sleep_for(50), TIMESLICE);
        assert_eq!(sleep_for(99), TIMESLICE * 99);
    }

    #[test]
    fn nothing_is_owed_when_off_or_within_the_slice() {
        let t = Throttle::default();
        let mut slice = Instant::now() - TIMESLICE * 2;
        assert_eq!(t.owed(&mut slice), None);
        t.set(50);
        assert_eq!(t.owed(&mut slice), None, "the slice restarted when off");
        let mut old = Instant::now() - TIMESLICE;
        assert_eq!(t.owed(&mut old), Some(TIMESLICE));
        t.set(200);
        assert_eq!(t.get(), 99);
    }
}
