//! Planted bugs for testing the test harness (issue 5): test-only faults in
//! the precopy engine, switched on per process with the hidden option
//! `-x-fault NAME` (repeatable).
//!
//! Compiled only with the `fault-injection` cargo feature, which only the
//! test suites enable (`migtest-scenarios` dev-dependency). Without it the
//! option is rejected like any unknown option and every hook below is a
//! constant `false`, so release builds carry none of this.

/// A planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Fault {
    /// `switchover-hold` set after `migrate` is ignored by that migration.
    HoldIgnoredAfterMigrate = 1,
    /// Clearing `switchover-hold` is not seen by a migration that already
    /// held: it keeps holding until cancelled.
    ReleaseNotSeen = 2,
    /// The last dirty sync before switchover is skipped: pages dirtied since
    /// the previous sync are not sent at completion.
    SkipLastDirtyPass = 4,
    /// `migrate_cancel` during the hold leaves the source guest stopped.
    CancelLeavesGuestStopped = 8,
    /// The source skips one dirty page: the first non-zero page of the
    /// stop-and-copy pass (guest stopped, so its content is final) is not sent.
    SkipOneDirtyPage = 16,
    /// auto-converge's vCPU throttle stays on after the migration ended
    /// (completed, failed or cancelled).
    ThrottleNeverLifted = 32,
    /// XBZRLE: a cached page sent whole after an overflow keeps its old
    /// cached copy, so a later delta is encoded against a stale base.
    XbzrleCacheStaleOnWholeSend = 64,
    /// The pages sent in postcopy (requested or in the background) are the copies first sent
    /// in precopy instead of their final content (each one that changed since).
    StalePostcopyPage = 128,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 8] = [
        Fault::HoldIgnoredAfterMigrate,
        Fault::ReleaseNotSeen,
        Fault::SkipLastDirtyPass,
        Fault::CancelLeavesGuestStopped,
        Fault::SkipOneDirtyPage,
        Fault::ThrottleNeverLifted,
        Fault::XbzrleCacheStaleOnWholeSend,
        Fault::StalePostcopyPage,
    ];

    /// The name given to `-x-fault`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::HoldIgnoredAfterMigrate => "hold-ignored-after-migrate",
            Fault::ReleaseNotSeen => "release-not-seen",
            Fault::SkipLastDirtyPass => "skip-last-dirty-pass",
            Fault::CancelLeavesGuestStopped => "cancel-leaves-guest-stopped",
            Fault::SkipOneDirtyPage => "skip-one-dirty-page",
            Fault::ThrottleNeverLifted => "throttle-never-lifted",
            Fault::XbzrleCacheStaleOnWholeSend => "xbzrle-cache-stale",
            Fault::StalePostcopyPage => "stale-postcopy-page",
        }
    }

    /// Parses a fault name.
    pub fn from_name(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }
}

#[cfg(feature = "fault-injection")]
static ENABLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Switches `name` on for this process (`-x-fault NAME`).
#[cfg(feature = "fault-injection")]
pub fn enable(name: &str) -> Result<(), String> {
    let f = Fault::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
        format!(
            "-x-fault {name}: unknown fault (one of {})",
            names.join(", ")
        )
    })?;
    ENABLED.fetch_or(f as u32, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// Whether `f` is switched on (always false without `fault-injection`).
#[inline]
pub fn on(f: Fault) -> bool {
    #[cfg(feature = "fault-injection")]
    {
        ENABLED.load(std::sync::atomic::Ordering::Relaxed) & f as u32 != 0
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = f;
        false
    }
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_rejected() {
        for f in Fault::ALL {
            assert_eq!(Fault::from_name(f.name()), Some(f));
        }
        assert!(enable("no-such-fault")
            .unwrap_err()
            .contains("unknown fault"));
    }
}
