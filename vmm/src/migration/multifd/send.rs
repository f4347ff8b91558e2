//! The source side of multifd: one sender thread per page channel.
//!
//! The migration thread takes pages off the migration bitmap and hands
//! them out in jobs of up to [`JOB_PAGES`] page indices, to the first idle
//! channel (or, when all are busy, the next in turn). A sender thread reads
//! the pages itself (zero detection and copy run on every channel at once),
//! writes one PAGES record with one vectored write and counts it. At every
//! dirty-bitmap sync every channel gets a pass marker after the jobs of the
//! pass before (the queue keeps the order); at completion every channel
//! gets END, and the migration thread waits until all have written it
//! before it sends the device state (switchover after all channels flushed).

use super::JOB_PAGES;
use crate::migration::host::{MigrationRam, PAGE_SIZE};
use crate::migration::lock;
use crate::migration::stream::{os_error_text, StreamWriter, ZERO_ENTRY};
use crate::migration::transport::Conn;
use std::io::BufWriter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::Scope;

/// Jobs queued per channel before the migration thread blocks.
const QUEUE: usize = 2;
/// Write buffer of a channel (PAGES records bypass it).
const WRITE_BUFFER: usize = 64 * 1024;

/// One unit of work for a sender thread.
enum Job {
    /// Read these pages and send them as one PAGES record.
    Pages(Vec<u64>),
    /// A pass marker: every page queued before belongs to earlier passes.
    Sync(u64),
    /// The END record, then the write half is shut.
    End,
}

/// Counts a sent PAGES record: (zero pages, full pages).
pub(crate) type CountFn<'a> = dyn Fn(u64, u64) + Sync + 'a;

/// State the sender threads share with the migration thread.
struct Shared {
    bytes: AtomicU64,
    /// The first channel error; later ones are consequences.
    error: Mutex<Option<String>>,
    /// Channels that have written END.
    ended: Mutex<usize>,
    cv: Condvar,
    /// Handles to shut every channel down on a failure.
    conns: Vec<Conn>,
}

impl Shared {
    fn fail(&self, msg: String) {
        lock(&self.error).get_or_insert(msg);
        // Blocked writers on the other channels give up too.
        for c in &self.conns {
            c.shutdown();
        }
        let _ended = lock(&self.ended);
        self.cv.notify_all();
    }
}

/// The migration thread's handle on the sender threads.
pub(crate) struct Sender {
    txs: Vec<SyncSender<Job>>,
    next: usize,
    shared: Arc<Shared>,
}

impl Sender {
    /// Starts one sender thread per connection (hellos already written).
    pub(crate) fn spawn<'scope, 'env>(
        scope: &'scope Scope<'scope, 'env>,
        conns: Vec<Conn>,
        ram: &'env dyn MigrationRam,
        counts: &'env CountFn<'env>,
    ) -> Result<Sender, String> {
        let handles = conns
            .iter()
            .map(Conn::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("multifd: cannot clone a channel: {}", os_error_text(&e)))?;
        let shared = Arc::new(Shared {
            bytes: AtomicU64::new(0),
            error: Mutex::new(None),
            ended: Mutex::new(0),
            cv: Condvar::new(),
            conns: handles,
        });
        let mut txs = Vec::with_capacity(conns.len());
        for (i, conn) in conns.into_iter().enumerate() {
            let (tx, rx) = sync_channel(QUEUE);
            let sh = shared.clone();
            let id = i + 1;
            std::thread::Builder::new()
                .name(format!("mig/src/send_{id}"))
                .spawn_scoped(scope, move || {
                    if let Err(e) = channel_thread(conn, rx, ram, counts, &sh) {
                        sh.fail(format!("multifd channel {id}: {e}"));
                    }
                })
                .map_err(|e| format!("multifd: cannot start a sender thread: {e}"))?;
            txs.push(tx);
        }
        Ok(Sender {
            txs,
            next: 0,
            shared,
        })
    }

    /// Bytes written on all page channels.
    pub(crate) fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// The first channel error, if any.
    pub(crate) fn error(&self) -> Option<String> {
        lock(&self.shared.error).clone()
    }

    fn gone(&self) -> String {
        self.error()
            .unwrap_or_else(|| "multifd: a sender thread ended".to_string())
    }

    /// Queues a job of pages on the first idle channel, else the next in turn.
    pub(crate) fn send_pages(&mut self, pages: Vec<u64>) -> Result<(), String> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        let n = self.txs.len();
        let mut job = Job::Pages(pages);
        for k in 0..n {
            let i = (self.next + k) % n;
            match self.txs[i].try_send(job) {
                Ok(()) => {
                    self.next = (i + 1) % n;
                    return Ok(());
                }
                Err(TrySendError::Full(j)) => job = j,
                Err(TrySendError::Disconnected(_)) => return Err(self.gone()),
            }
        }
        let i = self.next;
        self.next = (i + 1) % n;
        self.txs[i].send(job).map_err(|_| self.gone())
    }

    /// A pass marker on every channel (QEMU's multifd sync).
    pub(crate) fn sync(&mut self, pass: u64) -> Result<(), String> {
        self.broadcast(|| Job::Sync(pass))
    }

    fn broadcast(&mut self, job: impl Fn() -> Job) -> Result<(), String> {
        for tx in &self.txs {
            tx.send(job()).map_err(|_| self.gone())?;
        }
        Ok(())
    }

    /// END on every channel; returns once every channel has written it.
    pub(crate) fn finish(&mut self) -> Result<(), String> {
        self.broadcast(|| Job::End)?;
        let mut ended = lock(&self.shared.ended);
        loop {
            if let Some(e) = self.error() {
                return Err(e);
            }
            if *ended == self.txs.len() {
                return Ok(());
            }
            ended = self
                .shared
                .cv
                .wait(ended)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Shuts every channel down (failure or cancel of the migration).
    pub(crate) fn shutdown(&self) {
        for c in &self.shared.conns {
            c.shutdown();
        }
    }
}

fn write_err(e: std::io::Error) -> String {
    format!("Unable to write to socket: {}", os_error_text(&e))
}

fn channel_thread(
    conn: Conn,
    rx: Receiver<Job>,
    ram: &dyn MigrationRam,
    counts: &CountFn<'_>,
    shared: &Shared,
) -> Result<(), String> {
    let mut w = StreamWriter::new(BufWriter::with_capacity(WRITE_BUFFER, conn));
    let mut entries = Vec::with_capacity(JOB_PAGES);
    let mut data = vec![0u8; JOB_PAGES * PAGE_SIZE];
    // Ends when the migration thread drops the queue (it failed or was cancelled).
    for job in rx {
        let before = w.written();
        match job {
            Job::Pages(pages) => {
                debug_assert!(pages.len() <= JOB_PAGES, "a job fits one PAGES record");
                entries.clear();
                let mut full = 0;
                for &p in pages.iter().take(JOB_PAGES) {
                    let s = full * PAGE_SIZE;
                    let slot: &mut [u8; PAGE_SIZE] = (&mut data[s..s + PAGE_SIZE])
                        .try_into()
                        .map_err(|_| "page slot size".to_string())?;
                    let nonzero = ram
                        .copy_page_nonzero(p, slot)
                        .map_err(|m| format!("cannot read guest page {p}: {m}"))?;
                    if nonzero {
                        entries.push(p);
                        full += 1;
                    } else {
                        entries.push(p | ZERO_ENTRY);
                    }
                }
                if entries.is_empty() {
                    continue;
                }
                w.pages(&entries, &data[..full * PAGE_SIZE])
                    .and_then(|()| w.flush())
                    .map_err(write_err)?;
                counts((entries.len() - full) as u64, full as u64);
            }
            Job::Sync(n) => w.pass(n).and_then(|()| w.flush()).map_err(write_err)?,
            Job::End => {
                w.end().map_err(write_err)?;
                w.get_mut().get_mut().shutdown_write();
                shared
                    .bytes
                    .fetch_add(w.written() - before, Ordering::Relaxed);
                *lock(&shared.ended) += 1;
                shared.cv.notify_all();
                return Ok(());
            }
        }
        shared
            .bytes
            .fetch_add(w.written() - before, Ordering::Relaxed);
    }
    Ok(())
}
