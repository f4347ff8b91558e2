//! A small raw QMP test client for the `qmp_*` process-level tests: launches
//! `migtest-vmm` like QEMU and talks to it over its unix socket with the
//! `migtest_qmp` wire types. Deliberately minimal (the full client lives in
//! the harness crate, which these tests must not depend on).
#![allow(dead_code)]

pub mod inproc;
pub mod xbzrle;

use migtest_qmp::framing::read_line_bounded;
use migtest_qmp::{Command as QmpCommand, ServerMessage};
use serde_json::{json, Value};
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Default time to wait for one message.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `guest-images/<name>.toml`.
pub fn image(name: &str) -> PathBuf {
    repo().join("guest-images").join(format!("{name}.toml"))
}

/// A short-path temp dir under /tmp (unix socket paths are limited).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mtq")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

/// A `migtest-vmm` command with `PR_SET_PDEATHSIG` so it dies with the test.
pub fn vmm_command(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_migtest-vmm"));
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// How to launch a VMM.
#[derive(Debug, Clone)]
pub struct Launch {
    /// `-name` (None: no -name option).
    pub name: Option<String>,
    /// Guest image name in `guest-images/`.
    pub image: String,
    /// Extra arguments (`-S`, `-incoming defer`, ...).
    pub extra: Vec<String>,
    /// Number of `-qmp` sockets.
    pub monitors: usize,
}

impl Default for Launch {
    fn default() -> Self {
        Launch {
            name: Some("t".into()),
            image: "sweep".into(),
            extra: Vec::new(),
            monitors: 1,
        }
    }
}

impl Launch {
    /// With extra arguments.
    pub fn args(mut self, extra: &[&str]) -> Launch {
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self
    }
}

/// A running `migtest-vmm`; killed (SIGKILL + wait) on drop.
pub struct Vmm {
    child: Child,
    pub dir: tempfile::TempDir,
    pub sockets: Vec<PathBuf>,
    pub serial: PathBuf,
    exited: Option<ExitStatus>,
}

impl Vmm {
    /// `-name t -m 64M -kernel sweep.toml ...`, running.
    pub fn start() -> Vmm {
        Vmm::launch(Launch::default())
    }

    /// Launches and waits for every QMP socket to accept connections.
    pub fn launch(l: Launch) -> Vmm {
        let dir = tempdir();
        let serial = dir.path().join("serial");
        let sockets: Vec<PathBuf> = (0..l.monitors)
            .map(|i| dir.path().join(format!("qmp{i}.sock")))
            .collect();
        let mut args: Vec<String> = Vec::new();
        if let Some(n) = &l.name {
            args.extend(["-name".into(), n.clone()]);
        }
        args.extend([
            "-m".into(),
            "64M".into(),
            "-kernel".into(),
            image(&l.image).display().to_string(),
            "-serial".into(),
            format!("file:{}", serial.display()),
        ]);
        for s in &sockets {
            args.extend([
                "-qmp".into(),
                format!("unix:{},server=on,wait=off", s.display()),
            ]);
        }
        args.extend(["-nodefaults".into(), "-display".into(), "none".into()]);
        args.extend(l.extra.iter().cloned());
        let child = vmm_command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn migtest-vmm");
        let mut vmm = Vmm {
            child,
            dir,
            sockets,
            serial,
            exited: None,
        };
        let deadline = Instant::now() + TIMEOUT;
        for s in vmm.sockets.clone() {
            while UnixStream::connect(&s).is_err() {
                if let Ok(Some(st)) = vmm.child.try_wait() {
                    panic!("migtest-vmm exited during start-up: {st}");
                }
                assert!(Instant::now() < deadline, "no QMP socket {}", s.display());
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        vmm
    }

    /// A connection to monitor 0 that read the greeting (still in
    /// capabilities-negotiation mode).
    pub fn connect(&self) -> Qmp {
        self.connect_to(0)
    }

    /// A connection to monitor `i` that read the greeting.
    pub fn connect_to(&self, i: usize) -> Qmp {
        let mut q = Qmp::connect(&self.sockets[i]);
        let g = q.recv();
        assert!(g.get("QMP").is_some(), "expected greeting, got {g}");
        q.greeting = Some(g);
        q
    }

    /// A negotiated connection to monitor 0.
    pub fn qmp(&self) -> Qmp {
        let mut q = self.connect();
        q.ok("qmp_capabilities", None);
        q
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the guest's serial output holds `byte` (the sweep prints
    /// `B` when it has been round its range); panics after `timeout`.
    pub fn wait_serial(&self, byte: u8, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !std::fs::read(&self.serial).is_ok_and(|s| s.contains(&byte)) {
            assert!(
                Instant::now() < deadline,
                "no {:?} on the guest's serial within {timeout:?}",
                byte as char
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still alive.
    pub fn alive(&mut self) -> bool {
        self.exited.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit; None if it still runs after `timeout`.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited {
                return Some(s);
            }
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(s);
                return s;
            }
            assert!(Instant::now() < deadline, "migtest-vmm did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One raw QMP connection.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The greeting, once read.
    pub greeting: Option<Value>,
    /// Events seen while waiting for replies, in arrival order.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects (no greeting read yet).
    pub fn connect(path: &Path) -> Qmp {
        let s = UnixStream::connect(path).expect("connect QMP socket");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        Qmp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            greeting: None,
            events: Vec::new(),
        }
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to QMP socket");
    }

    /// Sends one command built from its parts (one line).
    pub fn send(&mut self, name: &str, args: Option<Value>, id: Option<Value>) {
        let mut c = match args {
            Some(a) => QmpCommand::with_args(name, a),
            None => QmpCommand::new(name),
        };
        c.id = id;
        self.send_raw(c.to_line().as_bytes());
    }

    /// The next line, exactly as sent (CRLF stripped); None at EOF or timeout.
    pub fn try_recv_line(&mut self, timeout: Duration) -> Option<String> {
        self.writer.set_read_timeout(Some(timeout)).unwrap();
        let r = read_line_bounded(&mut self.reader, 64 << 20);
        self.writer.set_read_timeout(Some(TIMEOUT)).unwrap();
        match r {
            Ok(line) => line,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading QMP: {e}"),
        }
    }

    /// The next line; panics at EOF or timeout.
    pub fn recv_line(&mut self) -> String {
        self.try_recv_line(TIMEOUT)
            .expect("QMP: no message (EOF or timeout)")
    }

    /// The next message, checked to be a well-formed QMP server message.
    pub fn recv(&mut self) -> Value {
        let line = self.recv_line();
        ServerMessage::parse(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        serde_json::from_str(&line).unwrap()
    }

    /// The next non-event message (events are kept in `events`).
    pub fn reply(&mut self) -> Value {
        loop {
            let m = self.recv();
            if m.get("event").is_some() {
                self.events.push(m);
            } else {
                return m;
            }
        }
    }

    /// Executes a command; returns the whole reply message.
    pub fn execute(&mut self, name: &str, args: Option<Value>) -> Value {
        self.send(name, args, None);
        self.reply()
    }

    /// Executes a command that must succeed; returns its `return` value.
    pub fn ok(&mut self, name: &str, args: Option<Value>) -> Value {
        let r = self.execute(name, args);
        match r.get("return") {
            Some(v) => v.clone(),
            None => panic!("{name} failed: {r}"),
        }
    }

    /// Executes a command that must fail; returns `(class, desc)`.
    pub fn err(&mut self, name: &str, args: Option<Value>) -> (String, String) {
        let r = self.execute(name, args);
        error_of(&r).unwrap_or_else(|| panic!("{name} should fail: {r}"))
    }

    /// Waits for an event by name (looking at stashed events first).
    pub fn wait_event(&mut self, name: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(i);
        }
        loop {
            let m = self.recv();
            if m["event"] == name {
                return m;
            }
            if m.get("event").is_some() {
                self.events.push(m);
            } else {
                panic!("unexpected message while waiting for {name}: {m}");
            }
        }
    }

    /// Takes the stashed events plus anything arriving within `quiet`.
    pub fn drain_events(&mut self, quiet: Duration) -> Vec<Value> {
        while let Some(line) = self.try_recv_line(quiet) {
            let m: Value = serde_json::from_str(&line).unwrap();
            assert!(m.get("event").is_some(), "unexpected non-event {m}");
            self.events.push(m);
        }
        std::mem::take(&mut self.events)
    }

    /// `query-status`'s `status`.
    pub fn status(&mut self) -> String {
        self.ok("query-status", None)["status"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// pmemsave of `[addr, addr+size)` read back.
    pub fn pmem(&mut self, dir: &Path, addr: u64, size: u64) -> Vec<u8> {
        let f = dir.join(format!("pmem-{addr:x}-{size:x}"));
        self.ok(
            "pmemsave",
            Some(json!({"val": addr, "size": size, "filename": f.display().to_string()})),
        );
        let data = std::fs::read(&f).unwrap();
        let _ = std::fs::remove_file(&f);
        data
    }
}

/// `(class, desc)` of an error reply.
pub fn error_of(reply: &Value) -> Option<(String, String)> {
    let e = reply.get("error")?;
    Some((
        e["class"].as_str()?.to_string(),
        e["desc"].as_str()?.to_string(),
    ))
}

/// A message with event timestamps replaced, for snapshots.
pub fn redact(mut m: Value) -> Value {
    if let Some(ts) = m.get_mut("timestamp") {
        assert!(ts["seconds"].is_i64() && ts["microseconds"].is_i64());
        *ts = json!("[timestamp]");
    }
    m
}
