//! Record QMP transcripts from a real QEMU into `fixtures/qemu-<ver>/`.
//!
//! ```text
//! cargo run -p migtest --example record_qemu_fixtures -- [OUT_DIR]
//! ```
//!
//! OUT_DIR defaults to `fixtures/qemu-7.2` at the workspace root. The QEMU
//! binary comes from `QTEST_QEMU_BINARY` / `MIGTEST_QEMU` / `PATH` (via
//! `migtest::backend::qemu`). Every VM runs the A-B boot sector under TCG
//! (`-accel tcg`, deterministic and, on nested hosts, faster than KVM) with
//! 64 MiB of RAM. Each fixture is a JSON object:
//!
//! ```json
//! {"name": "...", "description": "...", "qemu": "7.2.22 (...)",
//!  "transcript": [{"send": {...}}, {"recv": {...}, "line": "<raw line>"}, ...]}
//! ```
//!
//! `send` entries are the JSON we wrote (as one line); `send_raw` entries are
//! bytes that are not a JSON object (bad input tests); `recv` is the parsed
//! message and `line` the exact text QEMU wrote (QEMU terminates lines with
//! `\r\n`, stripped here). `timeout` marks a wait that got no reply.
//! Timestamps and migration statistics naturally differ between runs.
//!
//! Only std and serde_json are used for the recording itself; the command
//! line and boot image come from the crate's own `backend::qemu`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use migtest::backend::qemu::{self as q, Accel, BootImage, QemuLaunch};
use serde_json::{json, Value};

const MEM_MIB: u64 = 64;

struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    log: Vec<Value>,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
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

    fn take_log(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.log)
    }

    /// Read one message, `None` on timeout or EOF.
    fn read_msg(&mut self, timeout: Duration) -> Option<Value> {
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
    fn reply(&mut self, timeout: Duration) -> Option<Value> {
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

    fn send(&mut self, v: &Value) {
        let mut s = serde_json::to_string(v).unwrap();
        self.log.push(json!({"send": v}));
        s.push('\n');
        self.writer.write_all(s.as_bytes()).unwrap();
    }

    fn send_raw(&mut self, bytes: &[u8], note: Option<&str>) {
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
    fn sync(&mut self, tag: &str, timeout: Duration) {
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

    fn exec(&mut self, v: Value) -> Value {
        self.send(&v);
        self.reply(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no reply to {v}"))
    }

    fn cmd(&mut self, name: &str, args: Value) -> Value {
        let v = if args.is_null() {
            json!({"execute": name})
        } else {
            json!({"execute": name, "arguments": args})
        };
        self.exec(v)
    }

    /// Collect events for up to `dur` (stops early at `until`).
    fn drain(&mut self, dur: Duration, until: impl Fn(&Value) -> bool) {
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

struct Vm {
    child: Child,
    qmp: Qmp,
    dir: PathBuf,
    name: String,
    _img: BootImage,
}

impl Vm {
    fn launch(
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

    fn negotiate(&mut self) {
        self.qmp.cmd("qmp_capabilities", Value::Null);
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn wait_serial_b(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.serial().contains('B') {
            assert!(Instant::now() < deadline, "{}: no 'B' on serial", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, dur: Duration) -> Option<std::process::ExitStatus> {
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

struct Out {
    dir: PathBuf,
    qemu: String,
    written: Vec<String>,
}

impl Out {
    fn save(&mut self, name: &str, description: &str, transcript: Vec<Value>) {
        let transcript = truncate(collapse(transcript));
        self.save_value(
            name,
            json!({"name": name, "description": description, "qemu": self.qemu, "transcript": transcript}),
        );
    }

    fn save_value(&mut self, name: &str, v: Value) {
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

fn status_of(v: &Value) -> &str {
    v["return"]["status"].as_str().unwrap_or("")
}

/// Poll query-migrate (logged) until the status is one of `want`.
fn poll_migrate(vm: &mut Vm, want: &[&str], timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let r = vm.qmp.cmd("query-migrate", Value::Null);
        if want.contains(&status_of(&r)) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{}: migration status {:?}, wanted {want:?}",
            vm.name,
            status_of(&r)
        );
        // keep the log short: drop this non-matching poll
        let n = vm.qmp.log.len();
        let keep: Vec<Value> = vm.qmp.log[..n - 2].to_vec();
        let events: Vec<Value> = vm.qmp.log[n - 2..]
            .iter()
            .filter(|e| e["recv"].get("event").is_some())
            .cloned()
            .collect();
        vm.qmp.log = keep;
        vm.qmp.log.extend(events);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn enable_events(vm: &mut Vm) {
    let r = vm.qmp.cmd(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
    assert!(r.get("return").is_some(), "{r}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("fixtures/qemu-7.2"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let bins = q::resolve_binaries(&q::QemuBinaryArgs::default()).unwrap();
    let bin = bins.src;
    let help = std::process::Command::new(&bin)
        .args(["-machine", "help"])
        .output()
        .unwrap();
    let machines = q::parse_machine_help(&String::from_utf8_lossy(&help.stdout));
    let machine = q::resolve_machine(
        std::env::var(q::ENV_QTEST_QEMU_MACHINE_TYPE)
            .ok()
            .as_deref(),
        &machines,
        &machines,
        q::MachineFamily::I440fx,
    )
    .unwrap();
    // A fixed work dir keeps the socket paths inside the fixtures stable.
    let work = PathBuf::from("/tmp/migtest-rec");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();

    let mut out = Out {
        dir: out_dir,
        qemu: String::new(),
        written: Vec::new(),
    };

    // ------------------------------------------------------------------
    // VM 1: a lone VM started with -S (prelaunch).
    // ------------------------------------------------------------------
    let mut vm = Vm::launch(&bin, &machine, &work, "single", None, true);
    let greeting = vm.qmp.log[0]["recv"].clone();
    let v = &greeting["QMP"]["version"];
    out.qemu = format!(
        "{}.{}.{} {}",
        v["qemu"]["major"], v["qemu"]["minor"], v["qemu"]["micro"], v["package"]
    )
    .replace('"', "")
    .trim()
    .to_string();
    out.save(
        "greeting",
        "The greeting QEMU sends on connect.",
        vm.qmp.take_log(),
    );

    vm.qmp.cmd("query-status", Value::Null);
    out.save(
        "bad-command-before-capabilities",
        "A command before qmp_capabilities (capabilities negotiation mode).",
        vm.qmp.take_log(),
    );
    vm.qmp.cmd("qmp_capabilities", json!({"enable": ["bogus"]}));
    out.save(
        "bad-qmp-capabilities-unknown-enable",
        "qmp_capabilities with an unknown capability in 'enable' (still in negotiation mode afterwards).",
        vm.qmp.take_log(),
    );
    vm.qmp.cmd("qmp_capabilities", Value::Null);
    out.save(
        "qmp_capabilities",
        "Leaving capabilities negotiation mode.",
        vm.qmp.take_log(),
    );
    vm.qmp.cmd("qmp_capabilities", Value::Null);
    out.save(
        "bad-qmp-capabilities-twice",
        "qmp_capabilities again after negotiation completed.",
        vm.qmp.take_log(),
    );

    for (name, cmd, desc) in [
        ("query-version", "query-version", "query-version."),
        (
            "query-status-prelaunch",
            "query-status",
            "query-status of a VM started with -S.",
        ),
        (
            "query-name",
            "query-name",
            "query-name of a VM started with -name single.",
        ),
        (
            "query-migrate-none",
            "query-migrate",
            "query-migrate before any migration (status none: empty object).",
        ),
        (
            "query-migrate-parameters",
            "query-migrate-parameters",
            "Default migration parameters.",
        ),
        (
            "query-migrate-capabilities",
            "query-migrate-capabilities",
            "Default migration capabilities.",
        ),
    ] {
        vm.qmp.cmd(cmd, Value::Null);
        out.save(name, desc, vm.qmp.take_log());
    }

    let r = vm.qmp.cmd("query-commands", Value::Null);
    vm.qmp.take_log();
    let mut names: Vec<String> = q::command_set(&r).into_iter().collect();
    names.sort();
    let v = json!({
        "name": "query-commands",
        "description": "Sorted command names from query-commands (after qmp_capabilities).",
        "qemu": out.qemu,
        "commands": names,
    });
    out.save_value("query-commands", v);

    // --- bad QMP input ---
    let bad: &[(&str, &str, &[u8])] = &[
        (
            "bad-input-invalid-json",
            "Syntactically invalid JSON.",
            b"{\"execute\": }\n",
        ),
        (
            "bad-input-invalid-keyword",
            "A bare word that is not a JSON keyword.",
            b"foo\n",
        ),
        (
            "bad-input-non-object-array",
            "A JSON array instead of an object.",
            b"[1, 2, 3]\n",
        ),
        (
            "bad-input-non-object-string",
            "A JSON string instead of an object.",
            b"\"query-status\"\n",
        ),
        (
            "bad-input-non-object-number",
            "A JSON number instead of an object.",
            b"42\n",
        ),
        (
            "bad-input-missing-execute",
            "An object without 'execute'.",
            b"{\"arguments\": {}}\n",
        ),
        ("bad-input-empty-object", "An empty object.", b"{}\n"),
        (
            "bad-input-execute-not-string",
            "'execute' is a number.",
            b"{\"execute\": 42}\n",
        ),
        (
            "bad-input-arguments-not-object",
            "'arguments' is an array.",
            b"{\"execute\": \"query-status\", \"arguments\": [1]}\n",
        ),
        (
            "bad-input-unknown-top-level-key",
            "An unexpected top-level member next to 'execute'.",
            b"{\"execute\": \"query-status\", \"foo\": 1}\n",
        ),
        (
            "bad-input-unterminated-string",
            "A string cut by the newline (control character inside a string).",
            b"{\"execute\n",
        ),
        (
            "bad-input-garbage-bytes",
            "Control and non-UTF-8 bytes.",
            b"\x01\x02garbage\xff\xfe\n",
        ),
        (
            "bad-input-exec-oob-without-capability",
            "exec-oob without the oob capability negotiated.",
            b"{\"exec-oob\": \"migrate-pause\"}\n",
        ),
        (
            "bad-input-execute-and-exec-oob",
            "Both execute and exec-oob.",
            b"{\"execute\": \"query-status\", \"exec-oob\": \"query-status\"}\n",
        ),
    ];
    for (name, desc, bytes) in bad {
        vm.qmp.send_raw(bytes, None);
        // some inputs produce several errors; collect them all
        vm.qmp.sync(name, Duration::from_secs(10));
        out.save(name, desc, vm.qmp.take_log());
    }

    // nesting deeper than the parser allows (MAX_NESTING 1024)
    let mut deep = "[".repeat(1100);
    deep.push_str(&"]".repeat(1100));
    deep.push('\n');
    vm.qmp
        .send_raw(deep.as_bytes(), Some("1100 nested '[' then 1100 ']'"));
    vm.qmp.sync("too-deep", Duration::from_secs(30));
    out.save(
        "bad-input-too-deep",
        "An array nested 1100 levels deep (the limit is 1024).",
        vm.qmp.take_log(),
    );
    // too many tokens (MAX_TOKEN_COUNT 2 Mi)
    let mut many = String::from("[");
    many.push_str(&"0,".repeat(1_100_000));
    many.push_str("0]\n");
    vm.qmp.send_raw(
        many.as_bytes(),
        Some("a one-line array of 1,100,001 zeros (2,200,003 tokens)"),
    );
    vm.qmp.sync("too-many-tokens", Duration::from_secs(120));
    out.save(
        "bad-input-too-many-tokens",
        "One 2.2 MB line with more than 2 Mi JSON tokens.",
        vm.qmp.take_log(),
    );
    vm.qmp.cmd("query-status", Value::Null);
    out.save(
        "query-status-after-bad-input",
        "The monitor still works after all the bad input.",
        vm.qmp.take_log(),
    );

    let cmd_errors: &[(&str, &str, Value)] = &[
        (
            "bad-command-unknown",
            "An unknown command.",
            json!({"execute": "no-such-command"}),
        ),
        (
            "bad-command-extra-argument",
            "An argument the command does not take.",
            json!({"execute": "query-status", "arguments": {"bogus": 1}}),
        ),
        (
            "bad-command-missing-argument",
            "A mandatory argument left out.",
            json!({"execute": "migrate-set-capabilities", "arguments": {}}),
        ),
        (
            "bad-command-wrong-argument-type",
            "An argument of the wrong JSON type.",
            json!({"execute": "migrate", "arguments": {"uri": 5}}),
        ),
        (
            "bad-command-wrong-enum-value",
            "A capability name that is not in the enum.",
            json!({"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "bogus", "state": true}]}}),
        ),
        (
            "id-echo-string",
            "A string id is echoed in the reply.",
            json!({"execute": "query-status", "id": "abc-1"}),
        ),
        (
            "id-echo-object",
            "Any JSON id (here an object) is echoed, also in error replies.",
            json!({"execute": "no-such-command", "id": {"seq": [1, 2], "tag": null}}),
        ),
        (
            "id-echo-number",
            "A number id is echoed.",
            json!({"execute": "query-name", "id": 7}),
        ),
    ];
    for (name, desc, v) in cmd_errors {
        vm.qmp.exec(v.clone());
        out.save(name, desc, vm.qmp.take_log());
    }

    // --- migrate-set-parameters errors ---
    let param_errors: &[(&str, &str, Value)] = &[
        (
            "migrate-set-parameters-downtime-too-large",
            "downtime-limit above 2000 s.",
            json!({"downtime-limit": 2_000_001u64}),
        ),
        (
            "migrate-set-parameters-downtime-max",
            "downtime-limit at the maximum (accepted).",
            json!({"downtime-limit": 2_000_000u64}),
        ),
        (
            "migrate-set-parameters-max-bandwidth-negative",
            "max-bandwidth negative (QEMU 7.2 accepts it as 2^64-1 for backward compatibility).",
            json!({"max-bandwidth": -1}),
        ),
        (
            "migrate-set-parameters-max-bandwidth-too-large",
            "max-bandwidth 2^64-1 (accepted: the SIZE_MAX check cannot trigger on 64-bit hosts).",
            json!({"max-bandwidth": 18446744073709551615u64}),
        ),
        (
            "migrate-set-parameters-unknown",
            "An unknown parameter.",
            json!({"bogus-parameter": 1}),
        ),
        (
            "migrate-set-parameters-wrong-type",
            "downtime-limit as a string.",
            json!({"downtime-limit": "300"}),
        ),
        (
            "migrate-set-parameters-throttle-initial-zero",
            "cpu-throttle-initial 0 (range 1-99).",
            json!({"cpu-throttle-initial": 0}),
        ),
        (
            "migrate-set-parameters-ok",
            "Valid parameters (downtime-limit, max-bandwidth).",
            json!({"downtime-limit": 300, "max-bandwidth": 134217728u64}),
        ),
        (
            "migrate-set-parameters-empty",
            "No parameters at all.",
            json!({}),
        ),
    ];
    for (name, desc, args) in param_errors {
        vm.qmp.cmd("migrate-set-parameters", args.clone());
        if name.contains("max-bandwidth") {
            // show what QEMU made of the value
            vm.qmp.cmd("query-migrate-parameters", Value::Null);
        }
        out.save(name, desc, vm.qmp.take_log());
    }
    vm.qmp.cmd("query-migrate-parameters", Value::Null);
    vm.qmp.take_log();

    vm.qmp
        .cmd("migrate-continue", json!({"state": "pre-switchover"}));
    out.save(
        "migrate-continue-wrong-state",
        "migrate-continue with no migration (state none).",
        vm.qmp.take_log(),
    );
    vm.qmp
        .cmd("migrate-incoming", json!({"uri": "unix:/tmp/x.sock"}));
    out.save(
        "migrate-incoming-without-defer",
        "migrate-incoming on a VM not started with -incoming defer.",
        vm.qmp.take_log(),
    );
    vm.qmp.cmd("migrate_cancel", Value::Null);
    out.save(
        "migrate-cancel-none",
        "migrate_cancel with no migration.",
        vm.qmp.take_log(),
    );
    vm.qmp.cmd("migrate", json!({"uri": "bogus:foo"}));
    out.save(
        "migrate-bad-uri",
        "migrate with an unknown URI scheme.",
        vm.qmp.take_log(),
    );

    // --- run state edge cases ---
    vm.qmp.cmd("stop", Value::Null);
    vm.qmp.drain(Duration::from_millis(200), |_| false);
    vm.qmp.cmd("query-status", Value::Null);
    out.save(
        "stop-in-prelaunch",
        "stop while in prelaunch (-S).",
        vm.qmp.take_log(),
    );
    vm.qmp.cmd("cont", Value::Null);
    vm.qmp.drain(Duration::from_millis(300), |_| false);
    vm.qmp.cmd("query-status", Value::Null);
    out.save(
        "cont-from-prelaunch",
        "cont from prelaunch: RESUME event, status running.",
        vm.qmp.take_log(),
    );
    vm.wait_serial_b();
    vm.qmp.cmd("cont", Value::Null);
    out.save(
        "cont-while-running",
        "cont while already running.",
        vm.qmp.take_log(),
    );
    vm.qmp.cmd("stop", Value::Null);
    vm.qmp.drain(Duration::from_millis(300), |_| false);
    vm.qmp.cmd("query-status", Value::Null);
    out.save(
        "stop-while-running",
        "stop while running: STOP event, status paused.",
        vm.qmp.take_log(),
    );
    vm.qmp.cmd("query-status", Value::Null);
    out.save(
        "query-status-paused",
        "query-status after stop.",
        vm.qmp.take_log(),
    );
    vm.qmp.cmd("stop", Value::Null);
    vm.qmp.drain(Duration::from_millis(200), |_| false);
    out.save(
        "stop-while-paused",
        "stop while already paused.",
        vm.qmp.take_log(),
    );
    vm.qmp.cmd("cont", Value::Null);
    vm.qmp.drain(Duration::from_millis(300), |_| false);
    vm.qmp.cmd("query-status", Value::Null);
    out.save(
        "cont-from-paused",
        "cont from paused: RESUME event, status running.",
        vm.qmp.take_log(),
    );

    vm.qmp.cmd("query-status", Value::Null);
    out.save(
        "query-status-running",
        "query-status of a running guest.",
        vm.qmp.take_log(),
    );

    // --- failed migration: destination socket does not exist ---
    enable_events(&mut vm);
    vm.qmp.cmd("query-migrate-capabilities", Value::Null);
    out.save(
        "migrate-set-capabilities-events",
        "Turning the events capability on (no migration running), then query-migrate-capabilities.",
        vm.qmp.take_log(),
    );
    let bad_dst = work.join("no-such-dir/mig.sock");
    vm.qmp.cmd(
        "migrate",
        json!({"uri": format!("unix:{}", bad_dst.display())}),
    );
    vm.qmp.drain(Duration::from_millis(500), |_| false);
    poll_migrate(&mut vm, &["failed"], Duration::from_secs(10));
    vm.qmp.cmd("query-status", Value::Null);
    out.save(
        "migrate-failed-bad-destination",
        "migrate to a unix socket that does not exist (events capability on): \
         MIGRATION events, query-migrate status failed with error-desc, guest keeps running.",
        vm.qmp.take_log(),
    );
    let serial_single = vm.serial();
    drop(vm);

    // ------------------------------------------------------------------
    // VMs 2+3: a throttled migration that is cancelled.
    // ------------------------------------------------------------------
    let sock = work.join("mig1.sock");
    let uri = format!("unix:{}", sock.display());
    let mut dst = Vm::launch(&bin, &machine, &work, "dst1", Some(&uri), false);
    dst.negotiate();
    dst.qmp.take_log();
    dst.qmp.cmd("query-status", Value::Null);
    out.save(
        "query-status-inmigrate",
        "query-status of a VM started with -incoming unix:PATH.",
        dst.qmp.take_log(),
    );
    dst.qmp.cmd("query-migrate", Value::Null);
    out.save(
        "query-migrate-dst-waiting",
        "query-migrate on a destination waiting for the incoming connection.",
        dst.qmp.take_log(),
    );
    dst.qmp.cmd("migrate-incoming", json!({"uri": uri}));
    out.save(
        "migrate-incoming-already-started",
        "migrate-incoming on a VM started with -incoming unix:PATH (not defer).",
        dst.qmp.take_log(),
    );
    dst.qmp.cmd("stop", Value::Null);
    dst.qmp.cmd("query-status", Value::Null);
    dst.qmp.cmd("cont", Value::Null);
    dst.qmp.cmd("query-status", Value::Null);
    out.save(
        "stop-cont-inmigrate",
        "stop then cont on an incoming VM (they only clear/set autostart; status stays inmigrate).",
        dst.qmp.take_log(),
    );
    enable_events(&mut dst);
    dst.qmp.take_log();

    let mut src = Vm::launch(&bin, &machine, &work, "src1", None, false);
    src.negotiate();
    enable_events(&mut src);
    src.qmp.cmd(
        "migrate-set-parameters",
        json!({"max-bandwidth": 4 * 1024 * 1024}),
    );
    src.qmp.take_log();
    src.wait_serial_b();
    src.qmp.cmd("migrate", json!({"uri": uri}));
    src.qmp.cmd("query-migrate", Value::Null);
    out.save(
        "migrate-start-and-first-query",
        "migrate (max-bandwidth 4 MiB/s, events on) and the query-migrate right after it \
         (status setup or active, whichever QEMU reports first).",
        src.qmp.take_log(),
    );
    poll_migrate(&mut src, &["active"], Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    src.qmp.cmd("query-migrate", Value::Null);
    out.save(
        "query-migrate-active",
        "query-migrate during a throttled migration (status active, with ram stats).",
        src.qmp.take_log(),
    );
    src.qmp.cmd("query-status", Value::Null);
    out.save(
        "query-status-running-during-migration",
        "query-status on the source while migrating.",
        src.qmp.take_log(),
    );
    src.qmp.cmd(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "xbzrle", "state": true}]}),
    );
    out.save(
        "migrate-set-capabilities-during-migration",
        "migrate-set-capabilities while a migration is active.",
        src.qmp.take_log(),
    );
    src.qmp.cmd("migrate", json!({"uri": uri}));
    out.save(
        "migrate-while-active",
        "A second migrate while one is active.",
        src.qmp.take_log(),
    );
    src.qmp
        .cmd("migrate-continue", json!({"state": "pre-switchover"}));
    out.save(
        "migrate-continue-while-active",
        "migrate-continue while active (not in pre-switchover).",
        src.qmp.take_log(),
    );
    src.qmp.cmd(
        "migrate-set-parameters",
        json!({"max-bandwidth": 8 * 1024 * 1024}),
    );
    out.save(
        "migrate-set-parameters-during-migration",
        "migrate-set-parameters max-bandwidth during a migration (allowed).",
        src.qmp.take_log(),
    );
    dst.qmp.drain(Duration::from_millis(200), |_| false);
    dst.qmp.cmd("query-migrate", Value::Null);
    dst.qmp.cmd("query-status", Value::Null);
    out.save(
        "query-migrate-dst-active",
        "query-migrate and query-status on the destination during the migration.",
        dst.qmp.take_log(),
    );
    src.qmp.cmd("migrate_cancel", Value::Null);
    src.qmp.drain(Duration::from_millis(300), |_| false);
    poll_migrate(&mut src, &["cancelled"], Duration::from_secs(10));
    src.qmp.cmd("query-status", Value::Null);
    out.save(
        "migrate-cancel",
        "migrate_cancel of the active migration: MIGRATION events, status cancelled, guest keeps running.",
        src.qmp.take_log(),
    );
    dst.qmp.drain(Duration::from_secs(2), |_| false);
    let exit = dst.wait_exit(Duration::from_secs(5));
    let mut t = dst.qmp.take_log();
    t.push(json!({"process_exit": exit.map(|s| s.to_string()), "stderr": dst.stderr()}));
    out.save(
        "migrate-cancel-dst",
        "What the destination reports after the source cancelled (events, then process exit and stderr).",
        t,
    );
    drop(dst);
    drop(src);

    // ------------------------------------------------------------------
    // VMs 4+5: a full live migration.
    // ------------------------------------------------------------------
    let sock = work.join("mig2.sock");
    let uri = format!("unix:{}", sock.display());
    let mut dst = Vm::launch(&bin, &machine, &work, "dst2", Some(&uri), false);
    dst.negotiate();
    enable_events(&mut dst);
    dst.qmp.take_log();
    let mut src = Vm::launch(&bin, &machine, &work, "src2", None, false);
    src.negotiate();
    enable_events(&mut src);
    src.qmp.cmd(
        "migrate-set-parameters",
        json!({"max-bandwidth": 1u64 << 30, "downtime-limit": 1000}),
    );
    src.qmp.take_log();
    src.wait_serial_b();
    src.qmp.cmd("migrate", json!({"uri": uri}));
    src.qmp.drain(Duration::from_secs(60), |v| {
        v["event"] == "MIGRATION"
            && ["completed", "failed"].contains(&v["data"]["status"].as_str().unwrap_or(""))
    });
    let r = poll_migrate(&mut src, &["completed", "failed"], Duration::from_secs(60));
    assert_eq!(status_of(&r), "completed", "{r}");
    src.qmp.cmd("query-status", Value::Null);
    src.qmp.drain(Duration::from_millis(300), |_| false);
    let src_log = src.qmp.take_log();
    dst.qmp
        .drain(Duration::from_secs(10), |v| v["event"] == "RESUME");
    dst.qmp.drain(Duration::from_millis(500), |_| false);
    dst.qmp.cmd("query-migrate", Value::Null);
    dst.qmp.cmd("query-status", Value::Null);
    let dst_log = dst.qmp.take_log();
    let events = |log: &[Value]| -> Vec<Value> {
        log.iter()
            .filter(|e| e["recv"].get("event").is_some())
            .cloned()
            .collect()
    };
    out.save(
        "migration-events-src",
        "Events on the source of one full live migration (events capability on, \
         max-bandwidth 1 GiB/s, downtime-limit 1000 ms).",
        events(&src_log),
    );
    out.save(
        "migration-events-dst",
        "Events on the destination of the same migration (events capability on).",
        events(&dst_log),
    );
    out.save(
        "migration-full-src",
        "Full source transcript: migrate, events, query-migrate completed, query-status postmigrate.",
        src_log,
    );
    out.save(
        "migration-full-dst",
        "Full destination transcript: events, query-migrate completed, query-status running.",
        dst_log,
    );
    src.qmp.cmd("query-migrate", Value::Null);
    out.save(
        "query-migrate-completed-src",
        "query-migrate on the source after completion (full stats).",
        src.qmp.take_log(),
    );
    src.qmp.cmd("query-status", Value::Null);
    out.save(
        "query-status-postmigrate",
        "query-status on the source after a completed migration.",
        src.qmp.take_log(),
    );
    dst.qmp.cmd("query-migrate", Value::Null);
    out.save(
        "query-migrate-completed-dst",
        "query-migrate on the destination after completion.",
        dst.qmp.take_log(),
    );
    dst.qmp.cmd("query-status", Value::Null);
    out.save(
        "query-status-running-after-migration",
        "query-status on the destination after a completed migration.",
        dst.qmp.take_log(),
    );
    let before = dst.serial().len();
    std::thread::sleep(Duration::from_millis(1000));
    let after = dst.serial().len();
    assert!(after > before, "destination guest is not printing 'B'");
    // The migrated guest's memory must satisfy the A-B invariant (not saved
    // as a fixture; this makes the recorder a live end-to-end check too).
    dst.qmp.cmd("stop", Value::Null);
    let dump = work.join("dst2.mem");
    let (start, end) = q::test_range(MEM_MIB << 20);
    let r = dst.qmp.cmd(
        "pmemsave",
        json!({"val": 0, "size": end, "filename": dump.to_str().unwrap()}),
    );
    assert!(r.get("return").is_some(), "{r}");
    let mem = std::fs::read(&dump).unwrap();
    let check = migtest::checks::check_guests_ram_detail(&mem[start as usize..], start, end)
        .unwrap_or_else(|e| panic!("A-B invariant broken after migration: {e}"));
    eprintln!("A-B invariant holds on the destination: {check:?}");
    dst.qmp.cmd("cont", Value::Null);
    dst.qmp.take_log();

    src.qmp.cmd("migrate", json!({"uri": uri}));
    out.save(
        "migrate-after-completed",
        "migrate again from a source in postmigrate (the destination socket is gone).",
        src.qmp.take_log(),
    );
    src.qmp.drain(Duration::from_millis(500), |_| false);
    src.qmp.cmd("query-migrate", Value::Null);
    src.qmp.take_log();
    src.qmp.cmd("cont", Value::Null);
    src.qmp.drain(Duration::from_millis(300), |_| false);
    src.qmp.cmd("query-status", Value::Null);
    out.save(
        "cont-from-postmigrate",
        "cont on the source after a completed migration.",
        src.qmp.take_log(),
    );
    let src_stderr = src.stderr();
    let dst_stderr = dst.stderr();
    drop(src);
    drop(dst);

    eprintln!(
        "single serial starts {:?}",
        &serial_single[..serial_single.len().min(8)]
    );
    eprintln!("src2 stderr: {src_stderr}");
    eprintln!("dst2 stderr: {dst_stderr}");
    let _ = std::fs::remove_dir_all(&work);
    out.written.sort();
    eprintln!("{} fixtures written", out.written.len());
}
