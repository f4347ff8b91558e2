//! The recorder's QMP client (std only, one JSON message per line, every
//! message logged), its VMs and the fixture writer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use migtest::backend::qemu::{Accel, BootImage, QemuLaunch};
use serde_json::{json, Value};

/// Guest RAM of every VM.
pub const MEM_MIB: u64 = 64;

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub log: Vec<Value>,
}

impl Qmp {
    pub fn connect(path: &Path) -> Qmp {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    let writer = s.try_clone().unwrap();
                    return Qmp {
                        reader: BufReader::new(s),
                        writer,
                        log: Vec::new(),
                    };
                }
                Err(e) if Instant::now() > deadline => panic!("connect {path:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn take_log(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.log)
    }

    /// Read one message, `None` on timeout or EOF.
    pub fn read_msg(&mut self, timeout: Duration) -> Option<Value> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => {
                self.log.push(json!({"eof": true}));
                None
            }
            Ok(_) => {
                let line = line.trim_end_matches(['\r', '\n']).to_string();
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("QEMU sent non-JSON {line:?}: {e}"));
                self.log.push(json!({"recv": v, "line": line}));
                Some(v)
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                None
            }
            Err(e) => {
                // e.g. ECONNRESET when QEMU exits with unread input pending
                self.log
                    .push(json!({"eof": true, "read_error": e.to_string()}));
                None
            }
        }
    }

    /// Read until a reply (`return`/`error`) arrives; events are logged.
    pub fn reply(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.log
                    .push(json!({"timeout": format!("no reply within {timeout:?}")}));
                return None;
            }
            let v = self.read_msg(left)?;
            if v.get("return").is_some() || v.get("error").is_some() {
                return Some(v);
            }
        }
    }

    pub fn send(&mut self, v: &Value) {
        let mut s = serde_json::to_string(v).unwrap();
        self.log.push(json!({"send": v}));
        s.push('\n');
        self.writer.write_all(s.as_bytes()).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8], note: Option<&str>) {
        match note {
            Some(n) => self
                .log
                .push(json!({"send_raw_summary": n, "len": bytes.len()})),
            None => self
                .log
                .push(json!({"send_raw": String::from_utf8_lossy(bytes)})),
        }
        self.writer.write_all(bytes).unwrap();
    }

    /// Send an unlogged `query-name` with id `tag` and read (logging) every
    /// message up to its reply, which is dropped from the log. This collects
    /// all replies a bad input produced, however many.
    pub fn sync(&mut self, tag: &str, timeout: Duration) {
        let line = format!("{{\"execute\": \"query-name\", \"id\": \"{tag}\"}}\n");
        self.writer.write_all(line.as_bytes()).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_msg(left.max(Duration::from_millis(1))) {
                Some(v) if v["id"] == tag => {
                    self.log.pop();
                    return;
                }
                Some(_) => {}
                None => {
                    self.log.push(
                        json!({"timeout": format!("sync {tag} not answered within {timeout:?}")}),
                    );
                    return;
                }
            }
        }
    }

    pub fn exec(&mut self, v: Value) -> Value {
        self.send(&v);
        self.reply(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no reply to {v}"))
    }

    pub fn cmd(&mut self, name: &str, args: Value) -> Value {
        let v = if args.is_null() {
            json!({"execute": name})
        } else {
            json!({"execute": name, "arguments": args})
        };
        self.exec(v)
    }

    /// Collect events for up to `dur` (stops early at `until`).
    pub fn drain(&mut self, dur: Duration, until: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + dur;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.read_msg(left.max(Duration::from_millis(1))) {
                Some(v) if until(&v) => return,
                Some(_) => {}
                None => return,
            }
        }
    }
}

pub struct Vm {
    child: Child,
    pub qmp: Qmp,
    dir: PathBuf,
    pub name: String,
    _img: BootImage,
}

impl Vm {
    pub fn launch(
        bin: &Path,
        machine: &str,
        work: &Path,
        name: &str,
        incoming: Option<&str>,
        paused: bool,
    ) -> Vm {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let img = BootImage::for_memory(MEM_MIB << 20).unwrap();
        let mut l = QemuLaunch::new(
            bin,
            machine,
            name,
            dir.join("qmp.sock"),
            dir.join("serial"),
            img.path(),
        );
        l.memory_mib = MEM_MIB;
        l.accel = Accel::Tcg;
        l.paused = paused;
        l.incoming = incoming.map(str::to_string);
        let mut c = l.command().unwrap();
        c.stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
        eprintln!("launch {name}: {c:?}");
        let child = c.spawn().unwrap();
        let mut qmp = Qmp::connect(&dir.join("qmp.sock"));
        qmp.read_msg(Duration::from_secs(10)).expect("greeting");
        Vm {
            child,
            qmp,
            dir,
            name: name.to_string(),
            _img: img,
        }
    }

    pub fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    pub fn wait_serial_b(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.serial().contains('B') {
            assert!(Instant::now() < deadline, "{}: no 'B' on serial", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the serial output grows past `len` bytes: the guest runs.
    pub fn wait_serial_grows(&self, len: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.serial().len() <= len {
            assert!(
                Instant::now() < deadline,
                "{}: guest stopped printing",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_exit(&mut self, dur: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + dur;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Out {
    pub dir: PathBuf,
    pub qemu: String,
    pub written: Vec<String>,
}

impl Out {
    pub fn save(&mut self, name: &str, description: &str, transcript: Vec<Value>) {
        let transcript = truncate(collapse(transcript));
        self.save_value(
            name,
            json!({"name": name, "description": description, "qemu": self.qemu, "transcript": transcript}),
        );
    }

    pub fn save_value(&mut self, name: &str, v: Value) {
        let path = self.dir.join(format!("{name}.json"));
        let mut s = serde_json::to_string_pretty(&v).unwrap();
        s.push('\n');
        std::fs::write(&path, s).unwrap();
        eprintln!("wrote {}", path.display());
        self.written.push(name.to_string());
    }
}

/// Merge runs of identical received lines into one entry with `repeat`.
fn collapse(t: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for e in t {
        if let Some(last) = out.last_mut() {
            if e.get("line").is_some() && last.get("line") == e.get("line") {
                let n = last.get("repeat").and_then(Value::as_u64).unwrap_or(1);
                last["repeat"] = json!(n + 1);
                continue;
            }
        }
        out.push(e);
    }
    out
}

/// Keep at most 24 entries of very long transcripts (the token-limit flood)
/// and append a summary counting every reply by its error text.
fn truncate(t: Vec<Value>) -> Vec<Value> {
    const KEEP: usize = 24;
    if t.len() <= 40 {
        return t;
    }
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    let mut total = 0u64;
    for e in &t {
        if let Some(r) = e.get("recv") {
            let n = e.get("repeat").and_then(Value::as_u64).unwrap_or(1);
            total += n;
            let key = r["error"]["desc"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| r.to_string());
            *counts.entry(key).or_default() += n;
        }
    }
    let omitted = t.len() - KEEP;
    let mut out: Vec<Value> = t.into_iter().take(KEEP).collect();
    out.push(json!({"truncated": {
        "omitted_entries": omitted,
        "total_replies": total,
        "replies_by_desc": counts,
    }}));
    out
}
