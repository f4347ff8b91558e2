//! The destination's recovery thread (`migrate-recover`): accepts the
//! source's new connection (`postcopy-recover`), checks its resume hello,
//! answers with the bitmap of pages still missing, points the RAM's page
//! requests at the new channel (asking again for pages vCPUs wait for) and
//! goes back to `postcopy-active` to load the rest of the pages.

use super::super::incoming::{expect, finish, RamSink, READ_BUFFER};
use super::super::stream::{self, os_error_text, StreamErrorKind};
use super::super::transport::{Conn, Listener};
use super::super::{lock, MigrationHost, Shared};
use super::recovery::{encode_bitmap, read_hello, HANDSHAKE_TIMEOUT};
use super::RequestWriter;
use migtest_qmp::schema::{MigrationStatus, RunState};
use std::io::Write;

/// Runs one recovery on `listener` to its end (completed, paused again,
/// or failed).
pub(crate) fn run(shared: &Shared, host: &dyn MigrationHost, listener: Listener) {
    let exit_on_error = lock(&shared.incoming).exit_on_error;
    let conn = match listener.accept() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "Failed to accept a migration connection: {}",
                os_error_text(&e)
            );
            eprintln!("migtest-vmm: postcopy recovery: {msg}");
            let mut i = lock(&shared.incoming);
            i.recover_triggered = false;
            i.error = Some(msg);
            return;
        }
    };
    drop(listener);
    *lock(&shared.incoming_conn) = conn.try_clone().ok();
    if !shared.set_incoming(
        host,
        MigrationStatus::PostcopyPaused,
        MigrationStatus::PostcopyRecover,
    ) {
        conn.shutdown();
        return;
    }
    let handle = conn.try_clone().ok();
    let result = resume_and_load(shared, host, conn).map(|()| (true, RunState::Running));
    finish(shared, host, result, handle, exit_on_error);
}

/// The handshake and the rest of the stream. Errors: the text and whether
/// the channel was lost (a cut, a timeout, a bad hello: recoverable again)
/// rather than the stream damaged.
fn resume_and_load(
    shared: &Shared,
    host: &dyn MigrationHost,
    mut conn: Conn,
) -> Result<(), (String, bool)> {
    let lost = |m: String| (m, true);
    let io = |e: std::io::Error| lost(format!("resume: {}", os_error_text(&e)));
    let ram = host.ram();
    conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io)?;
    read_hello(&mut conn, ram.size()).map_err(lost)?;
    conn.set_read_timeout(None).map_err(io)?;
    // Nothing fills pages while no stream is loaded: this is exact.
    let missing = ram.postcopy_missing_bitmap();
    conn.write_all(&encode_bitmap(&missing)).map_err(io)?;
    ram.postcopy_reconnect(Box::new(RequestWriter::new(conn.try_clone().map_err(io)?)));
    shared.set_incoming(
        host,
        MigrationStatus::PostcopyRecover,
        MigrationStatus::PostcopyActive,
    );
    let mut sink = RamSink::postcopy_resumed(shared, host);
    stream::load_resumed(
        std::io::BufReader::with_capacity(READ_BUFFER, conn),
        expect(host),
        missing,
        &mut sink,
    )
    .map_err(|e| {
        let cut = matches!(
            e.kind,
            StreamErrorKind::Truncated { .. } | StreamErrorKind::Io { .. }
        );
        (format!("resumed postcopy: {e}"), cut)
    })?;
    ram.postcopy_disarm();
    Ok(())
}
