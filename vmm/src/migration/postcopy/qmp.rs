//! The postcopy failure and recovery commands, with QEMU 7.2's checks and
//! texts: `migrate-pause`, `migrate-recover`, `migrate {resume: true}`.

use super::super::transport::{Listener, MigrationUri};
use super::super::{channel, lock, Migration};
use migtest_qmp::args::Args;
use migtest_qmp::schema::MigrationStatus;
use migtest_qmp::ErrorBody;
use serde_json::{json, Value};

/// QEMU's `qmp_migrate_pause` error outside postcopy.
pub const PAUSE_ONLY_IN_POSTCOPY: &str =
    "migrate-pause is currently only supported during postcopy-active state";
/// QEMU's `qmp_migrate_recover` error outside `postcopy-paused`.
pub const RECOVER_ONLY_WHEN_PAUSED: &str =
    "Migrate recover can only be run when postcopy is paused.";
/// QEMU 7.2's `qmp_migrate_recover` error for a second `migrate-recover`.
pub const RECOVER_TRIGGERED: &str = "Migrate recovery is triggered already";
/// QEMU's `migrate_prepare` error for `resume` without a paused migration.
pub const NO_PAUSED_MIGRATION: &str = "Cannot resume if there is no paused migration";

impl Migration {
    /// `migrate-pause`: shuts the migration channel down, on the source if
    /// its migration is `postcopy-active`, else on the destination if its
    /// incoming migration is; both sides then go `postcopy-paused`.
    pub fn migrate_pause(&self) -> Result<Value, ErrorBody> {
        let out = lock(&self.shared.outgoing).clone();
        if let Some(o) = out.filter(|o| o.status() == MigrationStatus::PostcopyActive) {
            o.shutdown_all();
            return Ok(json!({}));
        }
        if lock(&self.shared.incoming).status == MigrationStatus::PostcopyActive {
            if let Some(c) = lock(&self.shared.incoming_conn).as_ref() {
                c.shutdown();
            }
            return Ok(json!({}));
        }
        Err(ErrorBody::generic(PAUSE_ONLY_IN_POSTCOPY))
    }

    /// `migrate-recover {uri}` on a `postcopy-paused` destination: listens
    /// on `uri` for the source's `migrate {resume: true}`.
    pub fn migrate_recover(&self, mut args: Args) -> Result<Value, ErrorBody> {
        let uri = args.str("uri")?;
        args.finish()?;
        let host = self.host()?;
        {
            let i = lock(&self.shared.incoming);
            if i.status != MigrationStatus::PostcopyPaused {
                return Err(ErrorBody::generic(RECOVER_ONLY_WHEN_PAUSED));
            }
            if i.recover_triggered {
                return Err(ErrorBody::generic(RECOVER_TRIGGERED));
            }
        }
        let parsed = MigrationUri::parse(&uri)?;
        let listener = Listener::bind(&parsed).map_err(ErrorBody::generic)?;
        {
            let mut i = lock(&self.shared.incoming);
            i.recover_triggered = true;
            i.socket_address = listener.socket_address().map(|a| vec![a]);
        }
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("mig/dst/recover".into())
            .spawn(move || super::resume_dest::run(&shared, host.as_ref(), listener))
            .map_err(|e| {
                lock(&self.shared.incoming).recover_triggered = false;
                ErrorBody::generic(format!("cannot start the recovery thread: {e}"))
            })?;
        Ok(json!({}))
    }

    /// `migrate {uri, resume: true}`: hands the new channel to the source's
    /// migration thread waiting in `postcopy-paused`; it connects and
    /// resumes (connection errors leave it paused).
    pub(crate) fn migrate_resume(&self, uri: &str) -> Result<Value, ErrorBody> {
        let out = lock(&self.shared.outgoing).clone();
        let Some(o) = out.filter(|o| o.status() == MigrationStatus::PostcopyPaused) else {
            return Err(ErrorBody::generic(NO_PAUSED_MIGRATION));
        };
        let parsed = MigrationUri::parse(uri)?;
        if matches!(parsed, MigrationUri::File { .. }) {
            return Err(ErrorBody::generic(
                "Postcopy recovery needs a socket channel (unix:, tcp: or fd:)",
            ));
        }
        let pre = channel::open_now(&parsed, true).map_err(ErrorBody::generic)?;
        o.resume.post((parsed, pre));
        Ok(json!({}))
    }
}
