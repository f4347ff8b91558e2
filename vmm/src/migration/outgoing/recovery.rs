//! The source's side of postcopy recovery: `postcopy-paused` until
//! `migrate {resume: true}` (or `migrate_cancel`), then the resume
//! handshake on the new channel (`postcopy-recover`) and back to
//! `postcopy-active` (QEMU's `postcopy_pause` and `postcopy_do_resume`).

use super::postcopy::PostcopyRun;
use super::*;
use crate::migration::postcopy::recovery::{
    encode_hello, read_bitmap, ResumeRequest, HANDSHAKE_TIMEOUT,
};
use std::io::Write;

/// How often the paused thread looks at the status (a cancel) while it
/// waits for a resume request.
const PAUSE_POLL: Duration = Duration::from_millis(100);

impl Engine<'_> {
    /// The channel broke during postcopy (`why`): goes `postcopy-paused`
    /// and waits, as often as needed, until a resume succeeded. The guest
    /// stays stopped here: its newest state is on the destination.
    pub(super) fn pause_until_resumed(
        &mut self,
        pc: &mut PostcopyRun,
        why: String,
    ) -> Result<(), Abort> {
        let mut why = why;
        loop {
            lock(&self.out.info).error = Some(why);
            let cur = self.out.status();
            let pausable = matches!(
                cur,
                MigrationStatus::PostcopyActive | MigrationStatus::PostcopyRecover
            );
            if !pausable
                || !self.out.set_status(
                    self.shared,
                    self.host,
                    cur,
                    MigrationStatus::PostcopyPaused,
                )
            {
                return Err(Abort::Cancelled);
            }
            // The old channel may be half alive (migrate-pause on one
            // side): make sure both its directions are gone.
            self.w.get_mut().get_mut().shutdown();
            let req = loop {
                if self.out.status() != MigrationStatus::PostcopyPaused {
                    return Err(Abort::Cancelled);
                }
                if let Some(r) = self.out.resume.wait(PAUSE_POLL) {
                    break r;
                }
            };
            match self.resume(pc, req) {
                Ok(()) => return Ok(()),
                Err(Abort::PostcopyPaused(m)) => why = m,
                Err(e) => return Err(e),
            }
        }
    }

    /// Connects to the recovering destination, sends the resume hello,
    /// takes its bitmap of missing pages as the pages to send, and goes
    /// back to `postcopy-active`. A failed connection or handshake is
    /// `PostcopyPaused` (the caller pauses again).
    fn resume(&mut self, pc: &mut PostcopyRun, (uri, pre): ResumeRequest) -> Result<(), Abort> {
        let retry = Abort::PostcopyPaused;
        let mut conn = match pre {
            Some(c) => c,
            None => transport::connect(&uri).map_err(retry)?,
        };
        let io = |e: io::Error| retry(format!("resume: {}", os_error_text(&e)));
        *lock(&self.out.conn) = Some(conn.try_clone().map_err(io)?);
        if !self.out.set_status(
            self.shared,
            self.host,
            MigrationStatus::PostcopyPaused,
            MigrationStatus::PostcopyRecover,
        ) {
            conn.shutdown();
            return Err(Abort::Cancelled);
        }
        conn.write_all(&encode_hello(self.ram.size())).map_err(io)?;
        conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io)?;
        let missing = read_bitmap(&mut conn, self.page_count, &pc.set).map_err(retry)?;
        conn.set_read_timeout(None).map_err(io)?;
        // Exactly what the destination misses: pages lost in flight with
        // the old channel come again, pages it has never do.
        self.pending_pages = missing.iter().map(|w| u64::from(w.count_ones())).sum();
        self.bitmap = missing;
        self.scan_word = 0;
        self.batch.clear();
        // The byte count restarts with the new writer: restart the bucket.
        self.bucket_rate = 0;
        pc.base += self.w.written();
        self.w = StreamWriter::new(BufWriter::with_capacity(WRITE_BUFFER, conn));
        pc.requests = self.start_return_path(&pc.count)?;
        if !self.out.set_status(
            self.shared,
            self.host,
            MigrationStatus::PostcopyRecover,
            MigrationStatus::PostcopyActive,
        ) {
            return Err(Abort::Cancelled);
        }
        Ok(())
    }
}
