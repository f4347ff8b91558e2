//! The engine's multifd glue: connecting the channels, page jobs, the
//! bytes written on every channel.

use super::*;
use crate::migration::multifd::{new_uuid, Hello, JOB_PAGES};
use std::io::Write;

/// Writes the main channel's hello, then connects the `n` page channels,
/// each starting with its own hello (same per-migration UUID).
pub(super) fn connect_channels(
    out: &Outgoing,
    main: &mut Conn,
    uri: &MigrationUri,
    n: u8,
) -> Result<Vec<Conn>, Abort> {
    let uuid = new_uuid();
    let hello = |channel| {
        Hello {
            channel,
            channels: n.into(),
            uuid,
        }
        .to_bytes()
    };
    main.write_all(&hello(0)).map_err(write_err)?;
    let mut conns = Vec::with_capacity(n.into());
    for i in 1..=u32::from(n) {
        if out.status() != MigrationStatus::Setup {
            return Err(Abort::Cancelled);
        }
        let mut c = transport::connect(uri)
            .map_err(|e| Abort::Failed(format!("multifd channel {i}: {e}")))?;
        lock(&out.channels).push(c.try_clone().map_err(write_err)?);
        c.write_all(&hello(i)).map_err(write_err)?;
        conns.push(c);
    }
    Ok(conns)
}

impl Engine<'_> {
    /// Bytes written so far on the main channel and every page channel.
    pub(super) fn written(&self) -> u64 {
        self.w.written() + self.mfd.as_ref().map_or(0, |m| m.bytes())
    }

    /// [`Engine::written`] with each SPARSE page counted as the full page
    /// it stands for: what `max-bandwidth`, the bandwidth estimate and
    /// auto-converge's period count, so that they see the same page rate
    /// as if every page had gone whole (`docs/migration-stream.md`).
    pub(super) fn charged(&self) -> u64 {
        self.written() + self.sparse_credit
    }

    /// Fails the migration with the first error of any page channel.
    pub(super) fn check_channels(&self) -> Result<(), Abort> {
        match self.mfd.as_ref().and_then(|m| m.error()) {
            Some(e) => Err(Abort::Failed(e)),
            None => Ok(()),
        }
    }

    /// Takes up to `max` pages off the migration bitmap and hands them to
    /// a sender thread as one job.
    pub(super) fn send_job(&mut self, max: usize) -> Result<(), Abort> {
        let max = max.clamp(1, JOB_PAGES);
        let mut pages = Vec::with_capacity(max);
        while pages.len() < max {
            let Some(p) = self.next_dirty() else { break };
            pages.push(p);
        }
        if pages.is_empty() {
            return Ok(());
        }
        self.window_pages += pages.len() as u64;
        match self.mfd.as_mut() {
            Some(m) => m.send_pages(pages).map_err(Abort::Failed),
            None => Err(Abort::Failed("multifd: no sender threads".into())),
        }
    }

    /// At a sync: a pass marker on every page channel.
    pub(super) fn sync_channels(&mut self, pass: u64) -> Result<(), Abort> {
        match self.mfd.as_mut() {
            Some(m) => m.sync(pass).map_err(Abort::Failed),
            None => Ok(()),
        }
    }

    /// At completion: END on every page channel, and wait until all have
    /// written everything (switchover only after the last pass is out).
    pub(super) fn finish_channels(&mut self) -> Result<(), Abort> {
        match self.mfd.as_mut() {
            Some(m) => m.finish().map_err(Abort::Failed),
            None => Ok(()),
        }
    }
}
