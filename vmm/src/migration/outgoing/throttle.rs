//! The engine's side of auto-converge: the throttle decision at each sync
//! that closes a period (rule and texts in `migration::auto_converge`).

use super::super::auto_converge;
use super::*;

impl Engine<'_> {
    /// QEMU's `migration_trigger_throttle`, at a sync closing a period of
    /// at least a second.
    pub(super) fn trigger_throttle(&mut self) {
        let enabled = lock(&self.shared.caps).auto_converge();
        let params = self.shared.params();
        let now = self.host.cpu_throttle();
        let written = self.charged();
        if let Some(pct) = self.throttle.period_end(enabled, (now, &params), written) {
            self.host.set_cpu_throttle(pct);
        }
    }
}

/// Lifts the throttle as a migration reaches a terminal status.
pub(super) fn on_status(host: &dyn MigrationHost, to: MigrationStatus) {
    if to.is_terminal() {
        auto_converge::lift(host);
    }
}
