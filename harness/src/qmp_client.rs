//! A small synchronous QMP client with a reader thread, an event queue,
//! deadlines on every wait and a transcript for diagnostics.
//!
//! One reader thread per connection classifies each server line
//! ([`ServerMessage::parse`]): events go to a queue (with their receive
//! time), replies carrying one of our numeric ids go to the caller waiting
//! for them (late replies to abandoned commands are dropped), and any other
//! reply (no id, a foreign id) goes to a raw-reply queue read by
//! [`QmpClient::read_reply_raw`], used with [`QmpClient::send_raw`] for
//! bad-input tests.

use migtest_vmm::monitor_fds::send_with_fd;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufReader, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use migtest_qmp::framing::{read_line_bounded, MAX_MESSAGE_BYTES};
use migtest_qmp::message::{ErrorBody, Event, Greeting, ServerMessage};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The default deadline of every wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Transcript lines kept per connection.
pub const TRANSCRIPT_LINES: usize = 200;

const EVENTS_SEEN_MAX: usize = 100_000;
const RAW_REPLIES_MAX: usize = 1000;
/// Events accepted before the greeting (a server sending more is not QMP).
const EARLY_EVENTS_MAX: usize = 16;

/// Why a QMP operation did not produce a value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QmpError {
    /// The server replied with an error.
    #[error("QMP error {}: {}", .0.class, .0.desc)]
    Qmp(ErrorBody),
    /// No answer within the deadline.
    #[error("timed out after {after:?} waiting for {command}")]
    Timeout {
        /// What was waited for (command and id, or event).
        command: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The connection closed (or failed) while waiting.
    #[error("QMP connection lost while waiting for {command}: {reason}")]
    Disconnected {
        /// What was waited for.
        command: String,
        /// Why the connection is gone.
        reason: String,
    },
    /// The server sent something that is not QMP, or a reply of the wrong shape.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// Could not connect and read a greeting.
    #[error("cannot connect to QMP at {}: {reason}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl QmpError {
    /// The server's error body, if this is a QMP error reply.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            QmpError::Qmp(b) => Some(b),
            _ => None,
        }
    }
}

/// An event and when the client received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// The event.
    pub event: Event,
    /// Receive time (monotonic).
    pub received: Instant,
}

/// Direction of a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server (`>`).
    Sent,
    /// Server to client (`<`).
    Received,
    /// A note by the client (`#`), e.g. a dropped reply or a protocol error.
    Note,
}

impl Direction {
    /// `>`, `<` or `#`.
    pub fn symbol(&self) -> char {
        match self {
            Direction::Sent => '>',
            Direction::Received => '<',
            Direction::Note => '#',
        }
    }
}

/// One line of the transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptEntry {
    /// Direction.
    pub dir: Direction,
    /// Milliseconds since the client connected.
    pub ms: u64,
    /// The JSON text (or note).
    pub text: String,
}

/// A shared, bounded transcript of one QMP connection. Clones share it; it
/// stays readable after the client is dropped.
#[derive(Debug, Clone)]
pub struct Transcript {
    inner: Arc<Mutex<VecDeque<TranscriptEntry>>>,
    start: Instant,
}

impl Transcript {
    fn new(start: Instant) -> Transcript {
        Transcript {
            inner: Arc::new(Mutex::new(VecDeque::with_capacity(TRANSCRIPT_LINES))),
            start,
        }
    }

    fn push(&self, dir: Direction, text: &str) {
        let ms = self.start.elapsed().as_millis() as u64;
        let mut t = lock(&self.inner);
        if t.len() == TRANSCRIPT_LINES {
            t.pop_front();
        }
        t.push_back(TranscriptEntry {
            dir,
            ms,
            text: text.trim_end().to_string(),
        });
    }

    /// All kept entries, oldest first.
    pub fn entries(&self) -> Vec<TranscriptEntry> {
        lock(&self.inner).iter().cloned().collect()
    }

    /// The JSON messages, oldest first, as `{"dir": ">" | "<", "msg": ...}`
    /// (notes and unparsable lines left out): a form for snapshot tests,
    /// which redact ids and timestamps.
    pub fn values(&self) -> Vec<Value> {
        lock(&self.inner)
            .iter()
            .filter(|e| e.dir != Direction::Note)
            .filter_map(|e| {
                let msg: Value = serde_json::from_str(&e.text).ok()?;
                Some(serde_json::json!({"dir": e.dir.symbol().to_string(), "msg": msg}))
            })
            .collect()
    }

    /// The last `n` entries, one per line: `[    12ms] > {...}`.
    pub fn tail(&self, n: usize) -> String {
        self.tail_truncated(n, usize::MAX)
    }

    /// Like [`Transcript::tail`], each line cut to `width` characters.
    pub fn tail_truncated(&self, n: usize, width: usize) -> String {
        let t = lock(&self.inner);
        let skip = t.len().saturating_sub(n);
        let mut out = String::new();
        for e in t.iter().skip(skip) {
            let mut line = format!("[{:>7}ms] {} {}", e.ms, e.dir.symbol(), e.text);
            if line.chars().count() > width {
                line = line.chars().take(width.saturating_sub(3)).collect();
                line.push_str("...");
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

enum Reply {
    Ok(Value),
    Err(ErrorBody),
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Ids sent and not yet answered (waited for or abandoned).
    issued: HashSet<u64>,
    /// Ids a caller is waiting for.
    waiting: HashSet<u64>,
    replies: HashMap<u64, Reply>,
    raw: VecDeque<Result<Value, String>>,
    events: VecDeque<ReceivedEvent>,
    seen: Vec<ReceivedEvent>,
    /// `seen.len()` when the last reply a caller waited for arrived.
    seen_at_last_reply: usize,
    disconnected: Option<String>,
}

struct Inner {
    state: Mutex<State>,
    cond: Condvar,
    writer: Mutex<UnixStream>,
    transcript: Transcript,
    label: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Writes `line`; `fd` goes with its first bytes (SCM_RIGHTS, for `getfd`).
    fn write_line(&self, line: &str, what: &str, fd: Option<RawFd>) -> Result<(), QmpError> {
        self.transcript.push(Direction::Sent, line);
        let mut w = lock(&self.writer);
        let sent = fd.map_or(Ok(0), |fd| send_with_fd(&w, line.as_bytes(), fd));
        sent.and_then(|n| w.write_all(&line.as_bytes()[n..]))
            .and_then(|_| w.flush())
            .map_err(|e| {
                let reason = format!("write failed: {e}");
                self.set_disconnected(&reason);
                QmpError::Disconnected {
                    command: what.to_string(),
                    reason,
                }
            })
    }

    fn set_disconnected(&self, reason: &str) {
        let mut st = lock(&self.state);
        if st.disconnected.is_none() {
            st.disconnected = Some(reason.to_string());
        }
        drop(st);
        self.cond.notify_all();
    }

    fn execute(
        &self,
        name: &str,
        args: Value,
        timeout: Duration,
        fd: Option<RawFd>,
    ) -> Result<Value, QmpError> {
        crate::observe::command(&self.label, name, &args);
        let args = match args {
            Value::Null => None,
            Value::Object(_) => Some(args),
            other => {
                return Err(QmpError::Protocol(format!(
                    "arguments of '{name}' must be an object, not {other}"
                )))
            }
        };
        let id = {
            let mut st = lock(&self.state);
            st.next_id += 1;
            let id = st.next_id;
            if let Some(reason) = &st.disconnected {
                return Err(QmpError::Disconnected {
                    command: format!("reply to '{name}'"),
                    reason: reason.clone(),
                });
            }
            st.issued.insert(id);
            st.waiting.insert(id);
            id
        };
        let line = command_line(name, args.as_ref(), id);
        let what = format!("reply to '{name}' (id {id}) from {}", self.label);
        let deadline = Instant::now() + timeout;
        if let Err(e) = self.write_line(&line, &what, fd) {
            let mut st = lock(&self.state);
            st.waiting.remove(&id);
            st.issued.remove(&id);
            return Err(e);
        }
        let mut st = lock(&self.state);
        loop {
            if let Some(reply) = st.replies.remove(&id) {
                st.waiting.remove(&id);
                return match reply {
                    Reply::Ok(v) => Ok(v),
                    Reply::Err(e) => Err(QmpError::Qmp(e)),
                };
            }
            if let Some(reason) = &st.disconnected {
                let reason = reason.clone();
                st.waiting.remove(&id);
                return Err(QmpError::Disconnected {
                    command: what,
                    reason,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                // Abandoned: a late reply is dropped by the reader.
                st.waiting.remove(&id);
                return Err(QmpError::Timeout {
                    command: what,
                    after: timeout,
                });
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Handles one server line (reader thread).
    fn dispatch(&self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        self.transcript.push(Direction::Received, line);
        let msg = match ServerMessage::parse(line) {
            Ok(m) => m,
            Err(e) => {
                self.transcript
                    .push(Direction::Note, &format!("unparsable: {e}"));
                let mut st = lock(&self.state);
                push_bounded(&mut st.raw, Err(format!("{e}: {line}")), RAW_REPLIES_MAX);
                drop(st);
                self.cond.notify_all();
                return;
            }
        };
        let mut st = lock(&self.state);
        match msg {
            ServerMessage::Event(event) => {
                let rec = ReceivedEvent {
                    event,
                    received: Instant::now(),
                };
                if st.seen.len() < EVENTS_SEEN_MAX {
                    st.seen.push(rec.clone());
                }
                st.events.push_back(rec);
            }
            ServerMessage::Greeting(_) => {
                drop(st);
                self.transcript
                    .push(Direction::Note, "unexpected second greeting ignored");
                return;
            }
            ServerMessage::Return { value, id } => {
                self.route(&mut st, id, Reply::Ok(value), line);
            }
            ServerMessage::Error { error, id } => {
                self.route(&mut st, id, Reply::Err(error), line);
            }
        }
        drop(st);
        self.cond.notify_all();
    }

    fn route(&self, st: &mut State, id: Option<Value>, reply: Reply, line: &str) {
        if let Some(n) = id.as_ref().and_then(Value::as_u64) {
            if st.issued.remove(&n) {
                if st.waiting.contains(&n) {
                    st.seen_at_last_reply = st.seen.len();
                    st.replies.insert(n, reply);
                } else {
                    self.transcript.push(
                        Direction::Note,
                        &format!("dropped late reply to abandoned id {n}"),
                    );
                }
                return;
            }
        }
        // Not one of ours: an answer to raw input.
        let value = serde_json::from_str(line).map_err(|e| e.to_string());
        push_bounded(&mut st.raw, value, RAW_REPLIES_MAX);
    }
}

/// `{"execute": name, "arguments": args, "id": id}` with the keys in that
/// order (readable transcripts), LF-terminated.
fn command_line(name: &str, args: Option<&Value>, id: u64) -> String {
    let name = Value::from(name);
    match args {
        Some(a) => format!("{{\"execute\":{name},\"arguments\":{a},\"id\":{id}}}\n"),
        None => format!("{{\"execute\":{name},\"id\":{id}}}\n"),
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, max: usize) {
    if q.len() == max {
        q.pop_front();
    }
    q.push_back(v);
}

/// A weak handle to a client, used by [`crate::process::VmmProcess`] to ask
/// the VMM to `quit` on drop while a client is connected.
#[derive(Clone)]
pub struct QmpHandle {
    inner: Weak<Inner>,
}

impl QmpHandle {
    /// Sends `quit` if the client is still connected and waits up to
    /// `timeout` for the reply or the disconnect. Returns whether `quit` was
    /// sent.
    pub fn quit(&self, timeout: Duration) -> bool {
        let Some(inner) = self.inner.upgrade() else {
            return false;
        };
        if lock(&inner.state).disconnected.is_some() {
            return false;
        }
        match inner.execute("quit", Value::Null, timeout, None) {
            Ok(_) | Err(QmpError::Disconnected { .. }) | Err(QmpError::Timeout { .. }) => true,
            Err(_) => false,
        }
    }
}

/// A connected, negotiated QMP client.
pub struct QmpClient {
    inner: Arc<Inner>,
    greeting: Greeting,
    timeout: Duration,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("label", &self.inner.label)
            .field("greeting", &self.greeting)
            .finish()
    }
}

impl QmpClient {
    /// Connects to `path`, retrying (20 ms backoff) until the socket accepts
    /// and a greeting parses or `timeout` passes, then negotiates
    /// capabilities (`qmp_capabilities`).
    ///
    /// `exited` is polled between attempts; if it returns `Some(why)` (the
    /// server process died) connecting stops with that reason.
    pub fn connect(
        path: &Path,
        label: &str,
        timeout: Duration,
        mut exited: impl FnMut() -> Option<String>,
    ) -> Result<QmpClient, QmpError> {
        let deadline = Instant::now() + timeout;
        let err = |reason: String| QmpError::Connect {
            path: path.to_path_buf(),
            reason,
        };
        let mut last_err;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => last_err = e.to_string(),
            }
            if let Some(why) = exited() {
                return Err(err(format!(
                    "{label} exited before QMP accepted ({why}); last error: {last_err}"
                )));
            }
            if Instant::now() >= deadline {
                return Err(err(format!(
                    "{label}: socket did not accept within {timeout:?}: {last_err}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let start = Instant::now();
        let transcript = Transcript::new(start);
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let io_err = |e: std::io::Error| err(format!("{label}: {e}"));
        stream.set_read_timeout(Some(remaining)).map_err(io_err)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io_err)?);
        // QEMU 7.2 was seen to write an event on a new connection before its greeting (RESUME,
        // as the guest started while the monitor had not yet handled the connection; CI,
        // 2026-12-07). Such events are kept as the first events seen.
        let mut early = Vec::new();
        let greeting = loop {
            match read_line_bounded(&mut reader, MAX_MESSAGE_BYTES) {
                Ok(Some(line)) => {
                    transcript.push(Direction::Received, &line);
                    match ServerMessage::parse(&line) {
                        Ok(ServerMessage::Greeting(g)) => break g,
                        Ok(ServerMessage::Event(event)) if early.len() < EARLY_EVENTS_MAX => early
                            .push(ReceivedEvent {
                                event,
                                received: Instant::now(),
                            }),
                        Ok(other) => {
                            return Err(err(format!(
                                "{label}: expected a greeting, got {}",
                                other.to_value()
                            )))
                        }
                        Err(e) => return Err(err(format!("{label}: bad greeting: {e}: {line}"))),
                    }
                }
                Ok(None) => {
                    let why = exited().map(|w| format!(" ({w})")).unwrap_or_default();
                    return Err(err(format!(
                        "{label} closed the connection before its greeting{why}"
                    )));
                }
                Err(e) => {
                    return Err(err(format!(
                        "{label}: no greeting within {remaining:?}: {e}"
                    )))
                }
            }
        };
        stream.set_read_timeout(None).map_err(io_err)?;
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err)?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                events: early.iter().cloned().collect(),
                seen: early,
                ..State::default()
            }),
            cond: Condvar::new(),
            writer: Mutex::new(stream),
            transcript,
            label: label.to_string(),
        });
        let weak = Arc::downgrade(&inner);
        let reader = std::thread::Builder::new()
            .name(format!("qmp-{label}"))
            .spawn(move || reader_loop(reader, weak))
            .map_err(io_err)?;
        let client = QmpClient {
            inner,
            greeting,
            timeout: DEFAULT_TIMEOUT,
            reader: Some(reader),
        };
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        client
            .execute_timeout("qmp_capabilities", Value::Null, remaining)
            .map_err(|e| err(format!("{label}: qmp_capabilities failed: {e}")))?;
        Ok(client)
    }

    /// The server's greeting.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// The label used in messages (e.g. "source").
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The default deadline for waits.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the default deadline for waits.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// A weak handle for `quit` on process drop.
    pub fn handle(&self) -> QmpHandle {
        QmpHandle {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The transcript (shared; outlives the client).
    pub fn transcript(&self) -> Transcript {
        self.inner.transcript.clone()
    }

    /// The last `n` transcript lines.
    pub fn transcript_tail(&self, n: usize) -> String {
        self.inner.transcript.tail(n)
    }

    /// `Some(reason)` once the connection is gone.
    pub fn disconnected(&self) -> Option<String> {
        lock(&self.inner.state).disconnected.clone()
    }

    /// Runs a command; `args` is an object or `Value::Null` (no arguments).
    pub fn execute(&self, name: &str, args: Value) -> Result<Value, QmpError> {
        self.inner.execute(name, args, self.timeout, None)
    }

    /// Runs a command with `fd` passed along (SCM_RIGHTS), as a management
    /// layer passes a socket to `getfd`.
    pub fn execute_with_fd(&self, name: &str, args: Value, fd: RawFd) -> Result<Value, QmpError> {
        self.inner.execute(name, args, self.timeout, Some(fd))
    }

    /// Runs a command with an explicit deadline.
    pub fn execute_timeout(
        &self,
        name: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.inner.execute(name, args, timeout, None)
    }

    /// Runs a command and deserializes its return value.
    pub fn execute_typed<R: DeserializeOwned>(
        &self,
        name: &str,
        args: Value,
    ) -> Result<R, QmpError> {
        let v = self.execute(name, args)?;
        serde_json::from_value(v.clone())
            .map_err(|e| QmpError::Protocol(format!("unexpected reply to '{name}': {e}: {v}")))
    }

    /// Sends `quit`; a disconnect before the reply counts as success.
    pub fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", Value::Null) {
            Ok(_) | Err(QmpError::Disconnected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes raw bytes (for malformed-input tests). Replies to them are
    /// read with [`QmpClient::read_reply_raw`].
    pub fn send_raw(&self, bytes: &[u8]) -> Result<(), QmpError> {
        self.inner
            .transcript
            .push(Direction::Sent, &String::from_utf8_lossy(bytes));
        let mut w = lock(&self.inner.writer);
        w.write_all(bytes)
            .and_then(|_| w.flush())
            .map_err(|e| QmpError::Disconnected {
                command: "raw write".into(),
                reason: e.to_string(),
            })
    }

    /// The next reply that did not answer one of [`QmpClient::execute`]'s
    /// commands (no id, or an id not issued by this client), as JSON.
    pub fn read_reply_raw(&self, timeout: Duration) -> Result<Value, QmpError> {
        let what = || format!("a reply to raw input from {}", self.inner.label);
        self.wait_for(&what, timeout, |st| st.raw.pop_front())?
            .map_err(QmpError::Protocol)
    }

    /// Waits for (and consumes) the first queued event named `name` that
    /// satisfies `pred`. Events received before the call count.
    pub fn wait_event(
        &self,
        name: &str,
        pred: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Result<Event, QmpError> {
        let what = || format!("event {name} from {}", self.inner.label);
        self.wait_for(&what, timeout, |st| {
            let pos = st
                .events
                .iter()
                .position(|r| r.event.event == name && pred(&r.event))?;
            st.events.remove(pos).map(|r| r.event)
        })
    }

    /// Waits up to `timeout` for the next queued event of any name and
    /// consumes it (`None` on timeout or once disconnected).
    pub fn next_event(&self, timeout: Duration) -> Option<ReceivedEvent> {
        let what = || format!("the next event from {}", self.inner.label);
        self.wait_for(&what, timeout, |st| st.events.pop_front())
            .ok()
    }

    /// Waits until `take` finds what it wants in the received state, the
    /// connection is gone or `timeout` passes; `what` names what was awaited.
    fn wait_for<T>(
        &self,
        what: &dyn Fn() -> String,
        timeout: Duration,
        mut take: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<T, QmpError> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.inner.state);
        loop {
            if let Some(found) = take(&mut st) {
                return Ok(found);
            }
            if let Some(reason) = &st.disconnected {
                return Err(QmpError::Disconnected {
                    command: what(),
                    reason: reason.clone(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QmpError::Timeout {
                    command: what(),
                    after: timeout,
                });
            }
            st = self
                .inner
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Removes and returns all queued (not yet consumed) events.
    pub fn drain_events(&self) -> Vec<Event> {
        lock(&self.inner.state)
            .events
            .drain(..)
            .map(|r| r.event)
            .collect()
    }

    /// Every event received so far, consumed or not, oldest first.
    pub fn events_seen(&self) -> Vec<Event> {
        lock(&self.inner.state)
            .seen
            .iter()
            .map(|r| r.event.clone())
            .collect()
    }

    /// How many events (of [`QmpClient::events_seen`]) had arrived when the reply to the
    /// last command a caller waited for arrived: with one thread issuing commands, the
    /// events written before that reply.
    pub fn events_seen_before_last_reply(&self) -> usize {
        lock(&self.inner.state).seen_at_last_reply
    }

    /// Every event received so far with receive times.
    pub fn received_events(&self) -> Vec<ReceivedEvent> {
        lock(&self.inner.state).seen.clone()
    }
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        let _ = lock(&self.inner.writer).shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn reader_loop(mut reader: BufReader<UnixStream>, inner: Weak<Inner>) {
    loop {
        let res = read_line_bounded(&mut reader, MAX_MESSAGE_BYTES);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match res {
            Ok(Some(line)) => inner.dispatch(&line),
            Ok(None) => {
                inner.transcript.push(Direction::Note, "connection closed");
                inner.set_disconnected("the server closed the connection");
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                inner
                    .transcript
                    .push(Direction::Note, &format!("bad line: {e}"));
                let mut st = lock(&inner.state);
                push_bounded(&mut st.raw, Err(e.to_string()), RAW_REPLIES_MAX);
                drop(st);
                inner.cond.notify_all();
            }
            Err(e) => {
                inner
                    .transcript
                    .push(Direction::Note, &format!("read error: {e}"));
                inner.set_disconnected(&format!("read error: {e}"));
                return;
            }
        }
    }
}
