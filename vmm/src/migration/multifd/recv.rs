//! The destination side of multifd: handshake, receive threads, the
//! per-pass barrier.
//!
//! The destination accepts the main channel and `multifd-channels` page
//! channels on its one listening socket, in any order, and checks every
//! hello (channel id, count, the migration's UUID) before any byte of a
//! stream is read. Each page channel then has a receive thread writing its
//! pages straight into guest RAM. A pass marker on a channel is a barrier:
//! no channel applies a page of pass N+1 before every channel has applied
//! all its pages of pass N (QEMU's `multifd_recv_sync_main`), so a page
//! sent twice, on two channels, in two passes, ends with its newer copy.
//! The device state is loaded only after every channel has ended cleanly.
//! The first error on any channel fails the whole migration: every
//! connection is shut down and that error becomes `error-desc`.

use super::{uuid_text, Hello, HELLO_LEN};
use crate::migration::host::MigrationHost;
use crate::migration::incoming::{apply_device_state, stream_load, RamSink};
use crate::migration::lock;
use crate::migration::stream::{
    load_batch, os_error_text, Expect, FdInput, Record, StreamError, StreamInput, StreamReader,
    StreamSink,
};
use crate::migration::transport::{Conn, Listener};
use migtest_qmp::schema::RunState;
use std::io::{self, Read};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long the destination waits for the rest of a migration's
/// connections and for each hello once the first connection arrived.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections of one multifd migration.
pub(crate) struct Channels {
    /// Channel 0.
    pub main: Conn,
    /// Channels 1..=N, in id order.
    pub pages: Vec<Conn>,
}

fn read_hello(conn: &mut Conn) -> Result<Hello, String> {
    let mut b = [0u8; HELLO_LEN];
    conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| format!("multifd: {}", os_error_text(&e)))?;
    conn.read_exact(&mut b).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => "multifd: a connection closed before its hello".to_string(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "multifd: no hello within {} s on a connection",
            HANDSHAKE_TIMEOUT.as_secs()
        ),
        _ => format!("multifd: reading a hello: {}", os_error_text(&e)),
    })?;
    conn.set_read_timeout(None)
        .map_err(|e| format!("multifd: {}", os_error_text(&e)))?;
    Hello::parse(&b).map_err(|e| format!("multifd: {e}"))
}

/// Accepts the main channel and `n` page channels and validates every
/// hello. `on_first` runs when the first connection is accepted.
pub(crate) fn accept_all(
    listener: &Listener,
    n: u8,
    on_first: impl FnOnce(),
) -> Result<Channels, String> {
    let first = listener.accept().map_err(|e| {
        format!(
            "Failed to accept a migration connection: {}",
            os_error_text(&e)
        )
    })?;
    on_first();
    let mut slots: Vec<Option<Conn>> = (0..=n).map(|_| None).collect();
    let mut uuid = None;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut next = Some(first);
    let mut connected = 0usize;
    loop {
        let Some(mut conn) = next.take() else {
            break;
        };
        let h = read_hello(&mut conn)?;
        if h.channels != u32::from(n) {
            return Err(format!(
                "multifd: the source uses {} channels but multifd-channels is {n} on the destination",
                h.channels
            ));
        }
        let want = *uuid.get_or_insert(h.uuid);
        if h.uuid != want {
            return Err(format!(
                "multifd: channel {} belongs to migration {}, not {}",
                h.channel,
                uuid_text(&h.uuid),
                uuid_text(&want)
            ));
        }
        let slot = &mut slots[h.channel as usize];
        if slot.is_some() {
            return Err(format!("multifd: channel {} connected twice", h.channel));
        }
        *slot = Some(conn);
        connected += 1;
        if connected == slots.len() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        next = listener
            .accept_timeout(left)
            .map_err(|e| format!("multifd: accepting a channel: {}", os_error_text(&e)))?;
        if next.is_none() {
            return Err(format!(
                "multifd: only {connected} of {} connections arrived within {} s",
                slots.len(),
                HANDSHAKE_TIMEOUT.as_secs()
            ));
        }
    }
    let mut conns = slots.into_iter().flatten();
    let main = conns
        .next()
        .ok_or_else(|| "multifd: no main channel".to_string())?;
    Ok(Channels {
        main,
        pages: conns.collect(),
    })
}

#[derive(Default)]
struct BarrierState {
    error: Option<String>,
    /// Channels waiting at the barrier of `barrier_pass`.
    arrived: usize,
    barrier_pass: u64,
    /// The last pass every channel reached.
    released: u64,
    /// Channels that ended cleanly.
    ended: usize,
}

/// What the receive threads and the loading thread share.
struct Coord {
    st: Mutex<BarrierState>,
    cv: Condvar,
    n: usize,
    conns: Vec<Conn>,
}

impl Coord {
    fn fail(&self, msg: String) {
        let mut st = lock(&self.st);
        st.error.get_or_insert(msg);
        self.cv.notify_all();
        drop(st);
        for c in &self.conns {
            c.shutdown();
        }
    }

    fn error(&self) -> Option<String> {
        lock(&self.st).error.clone()
    }

    /// A channel reached pass marker `pass`: waits for every channel.
    fn sync(&self, pass: u64) -> Result<(), String> {
        let mut st = lock(&self.st);
        if st.arrived == 0 {
            st.barrier_pass = pass;
        } else if st.barrier_pass != pass {
            return Err(format!(
                "pass {pass} while the other channels are at pass {}",
                st.barrier_pass
            ));
        }
        st.arrived += 1;
        if st.arrived == self.n {
            st.arrived = 0;
            st.released = pass;
            self.cv.notify_all();
        }
        loop {
            // Another channel failed first: its error is the reason.
            if let Some(e) = &st.error {
                return Err(e.clone());
            }
            if st.released >= pass {
                return Ok(());
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn ended(&self) {
        lock(&self.st).ended += 1;
        self.cv.notify_all();
    }

    /// Waits until every channel ended cleanly or one failed.
    fn wait_done(&self) -> Result<(), String> {
        let mut st = lock(&self.st);
        loop {
            if let Some(e) = &st.error {
                return Err(e.clone());
            }
            if st.ended == self.n {
                return Ok(());
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Why a page channel's body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// The body is malformed (offsets count from the end of the hello).
    Stream(StreamError),
    /// The pass-marker hook refused (another channel failed, or the
    /// channels disagree on the pass).
    Stopped(String),
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelError::Stream(e) => e.fmt(f),
            ChannelError::Stopped(m) => f.write_str(m),
        }
    }
}

/// Decodes the body of a page channel (what follows its hello):
/// `PASS (PASS|PAGES)* END <eof>`, every record validated before its pages
/// go to `sink`; each pass marker goes to `sink` and then to `on_pass`
/// (the barrier). Returns the body's length.
pub fn load_channel<R: StreamInput>(
    r: R,
    expect: Expect,
    sink: &mut dyn StreamSink,
    mut on_pass: impl FnMut(u64) -> Result<(), String>,
) -> Result<u64, ChannelError> {
    let mut rd = StreamReader::channel(r, expect);
    loop {
        let at = rd.offset();
        match rd
            .next_record_direct(sink.direct())
            .map_err(ChannelError::Stream)?
        {
            Record::Pass(n) => {
                sink.pass(n);
                on_pass(n).map_err(ChannelError::Stopped)?;
            }
            Record::Pages(_) => {
                let (entries, data) = rd.batch();
                load_batch(entries, data, at, sink).map_err(ChannelError::Stream)?;
            }
            Record::End(_) => {
                rd.finish().map_err(ChannelError::Stream)?;
                return Ok(rd.offset());
            }
            // The reader refuses every other record on a channel.
            other => {
                return Err(ChannelError::Stopped(format!(
                    "unexpected record {other:?}"
                )))
            }
        }
    }
}

/// One page channel: pass markers meet at the barrier, pages go to RAM.
fn channel_load(
    conn: Conn,
    host: &dyn MigrationHost,
    expect: Expect,
    coord: &Coord,
) -> Result<(), String> {
    let r = FdInput::new(conn);
    load_channel(r, expect, &mut RamSink::new(host.ram()), |n| coord.sync(n))
        .map_err(|e| e.to_string())?;
    coord.ended();
    Ok(())
}

/// Loads a multifd migration: the main stream on this thread, each page
/// channel on its own; the device state only after every channel ended.
pub(crate) fn load(host: &dyn MigrationHost, ch: Channels) -> Result<RunState, String> {
    let handles = std::iter::once(&ch.main)
        .chain(ch.pages.iter())
        .map(Conn::try_clone)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("multifd: {}", os_error_text(&e)))?;
    let coord = Coord {
        st: Mutex::new(BarrierState::default()),
        cv: Condvar::new(),
        n: ch.pages.len(),
        conns: handles,
    };
    let expect = crate::migration::incoming::expect(host);
    let coord = &coord;
    std::thread::scope(|s| {
        for (i, conn) in ch.pages.into_iter().enumerate() {
            let id = i + 1;
            let spawned = std::thread::Builder::new()
                .name(format!("mig/dst/recv_{id}"))
                .spawn_scoped(s, move || {
                    if let Err(e) = channel_load(conn, host, expect, coord) {
                        coord.fail(format!("multifd channel {id}: {e}"));
                    }
                });
            if let Err(e) = spawned {
                coord.fail(format!("multifd: cannot start a receive thread: {e}"));
            }
        }
        let r = stream_load(host, FdInput::new(ch.main))
            .map_err(|e| e.to_string())
            .and_then(|sum| {
                coord.wait_done()?;
                apply_device_state(host, &sum).map_err(|e| e.to_string())
            });
        if let Err(e) = &r {
            coord.fail(e.clone());
        }
        // The first failure on any channel is the reason.
        r.map_err(|e| coord.error().unwrap_or(e))
    })
}
