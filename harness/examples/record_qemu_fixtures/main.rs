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
//! The recording is data: `table::exchanges` is the table of QMP exchanges, in
//! order (which VM, the steps, what to keep as which fixture), and `main` is
//! one loop that performs them. Only std and serde_json are used for the
//! recording itself; the command line and boot image come from the crate's
//! own `backend::qemu`.

mod client;
mod table;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use migtest::backend::qemu as q;
use serde_json::{json, Value};

use client::{Out, Vm, MEM_MIB};

fn status_of(v: &Value) -> &str {
    v["return"]["status"].as_str().unwrap_or("")
}

/// Polls query-migrate (logged) until the status is one of `want`; a
/// migration that fails when failure is not wanted stops the recording.
fn poll_migrate(vm: &mut Vm, want: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let r = vm.qmp.cmd("query-migrate", Value::Null);
        let status = status_of(&r);
        if want.contains(&status) {
            return;
        }
        assert!(
            status != "failed" && Instant::now() < deadline,
            "{}: migration status {status:?}, wanted {want:?}: {r}",
            vm.name
        );
        // keep the log short: drop this non-matching poll, keep its events
        let n = vm.qmp.log.len();
        let events: Vec<Value> = vm.qmp.log[n - 2..]
            .iter()
            .filter(|e| e["recv"].get("event").is_some())
            .cloned()
            .collect();
        vm.qmp.log.truncate(n - 2);
        vm.qmp.log.extend(events);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `pmemsave` of a stopped VM's test range and QEMU's `check_guests_ram`
/// over it: the recorder is a live end-to-end check of a migration too.
fn check_ab(vm: &mut Vm, dump: &Path) {
    vm.qmp.cmd("stop", Value::Null);
    let (start, end) = q::test_range(MEM_MIB << 20);
    let r = vm.qmp.cmd(
        "pmemsave",
        json!({"val": 0, "size": end, "filename": dump.to_str().unwrap()}),
    );
    assert!(r.get("return").is_some(), "{r}");
    let mem = std::fs::read(dump).unwrap();
    let check = migtest::checks::check_guests_ram_detail(&mem[start as usize..], start, end)
        .unwrap_or_else(|e| panic!("A-B invariant broken after migration: {e}"));
    eprintln!("A-B invariant holds on {}: {check:?}", vm.name);
    vm.qmp.cmd("cont", Value::Null);
}

/// The VM an exchange talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    /// The lone VM started with `-S`.
    Single,
    /// A migration source.
    Src,
    /// A migration destination.
    Dst,
}

/// One thing the recorder does to a VM. Everything QMP sent and received is
/// logged, the waits included.
pub enum Step {
    /// Launch a VM named `name` in the slot (`-incoming URI`, `-S`); its
    /// greeting is logged.
    Launch(&'static str, Option<String>, bool),
    /// Kill the slot's VM.
    Close,
    /// `{"execute": NAME}` with the arguments (`Null`: none); waits for the reply.
    Cmd(&'static str, Value),
    /// As `Cmd`, and the reply must be a success.
    CmdOk(&'static str, Value),
    /// A whole command object (ids, bad members); waits for the reply.
    Exec(Value),
    /// Bytes that are not one JSON command, logged as text or, with a note,
    /// as the note and their length; then every reply up to a `query-name`
    /// sync tagged `.2`, within `.3` seconds.
    Raw(Vec<u8>, Option<&'static str>, &'static str, u64),
    /// Log whatever arrives for this many milliseconds.
    Drain(u64),
    /// Log what arrives until an event named `.1` (with, if `.2`, one of
    /// those statuses), within `.0` seconds.
    DrainUntil(u64, &'static str, &'static [&'static str]),
    /// Poll `query-migrate` until one of these statuses, within `.1` seconds.
    Poll(&'static [&'static str], u64),
    /// Let a throttled migration move on for this many milliseconds, so its
    /// statistics show progress (no condition to wait for: any is fine).
    Let(u64),
    /// Wait for the guest's first `B` on the serial port.
    SerialB,
    /// Wait for the serial output to grow: the guest runs.
    SerialGrows,
    /// Wait up to this many seconds for the process to exit; log its exit
    /// status and stderr.
    Exit(u64),
    /// Stop, dump and check the A-B invariant, cont.
    CheckAb,
}

/// What an exchange's log becomes.
pub enum Keep {
    /// Not a fixture (set-up).
    Discard,
    /// The fixture `name` with its description.
    Fixture(&'static str, &'static str),
    /// The sorted command names of a `query-commands` reply.
    CommandNames(&'static str, &'static str),
    /// Only the events, as the first fixture, and the whole log as the second.
    EventsAndAll((&'static str, &'static str), (&'static str, &'static str)),
}

/// One QMP exchange to record: steps on one VM and the fixture they make.
pub struct Exchange {
    pub on: On,
    pub steps: Vec<Step>,
    pub keep: Keep,
}

/// The QEMU version of a greeting, as `7.2.22 (Debian ...)`.
fn version_of(greeting: &Value) -> String {
    let v = &greeting["QMP"]["version"];
    format!(
        "{}.{}.{} {}",
        v["qemu"]["major"], v["qemu"]["minor"], v["qemu"]["micro"], v["package"]
    )
    .replace('"', "")
    .trim()
    .to_string()
}

/// The recording's VMs, one per slot.
struct Vms<'a> {
    bin: &'a Path,
    machine: &'a str,
    work: &'a Path,
    single: Option<Vm>,
    src: Option<Vm>,
    dst: Option<Vm>,
}

impl Vms<'_> {
    fn slot(&mut self, on: On) -> &mut Option<Vm> {
        match on {
            On::Single => &mut self.single,
            On::Src => &mut self.src,
            On::Dst => &mut self.dst,
        }
    }

    /// Performs one step on the slot's VM.
    fn perform(&mut self, on: On, step: Step) {
        if let Step::Launch(name, incoming, paused) = step {
            let vm = Vm::launch(
                self.bin,
                self.machine,
                self.work,
                name,
                incoming.as_deref(),
                paused,
            );
            *self.slot(on) = Some(vm);
            return;
        }
        if let Step::Close = step {
            *self.slot(on) = None;
            return;
        }
        let dump = self.work.join("dump.mem");
        let vm = self
            .slot(on)
            .as_mut()
            .unwrap_or_else(|| panic!("no VM in slot {on:?}"));
        let secs = Duration::from_secs;
        let millis = Duration::from_millis;
        match step {
            Step::Launch(..) | Step::Close => unreachable!(),
            Step::Cmd(c, args) => {
                vm.qmp.cmd(c, args);
            }
            Step::CmdOk(c, args) => {
                let r = vm.qmp.cmd(c, args);
                assert!(r.get("return").is_some(), "{c}: {r}");
            }
            Step::Exec(v) => {
                vm.qmp.exec(v);
            }
            Step::Raw(bytes, note, tag, timeout) => {
                vm.qmp.send_raw(&bytes, note);
                vm.qmp.sync(tag, secs(timeout));
            }
            Step::Drain(ms) => vm.qmp.drain(millis(ms), |_| false),
            Step::DrainUntil(s, event, statuses) => vm.qmp.drain(secs(s), |v| {
                v["event"] == event
                    && (statuses.is_empty()
                        || statuses.contains(&v["data"]["status"].as_str().unwrap_or("")))
            }),
            Step::Poll(want, timeout) => poll_migrate(vm, want, secs(timeout)),
            Step::Let(ms) => std::thread::sleep(millis(ms)),
            Step::SerialB => vm.wait_serial_b(),
            Step::SerialGrows => vm.wait_serial_grows(vm.serial().len()),
            Step::Exit(timeout) => {
                let exit = vm.wait_exit(secs(timeout));
                let entry =
                    json!({"process_exit": exit.map(|s| s.to_string()), "stderr": vm.stderr()});
                vm.qmp.log.push(entry);
            }
            Step::CheckAb => check_ab(vm, &dump),
        }
    }
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
    let mut vms = Vms {
        bin: &bin,
        machine: &machine,
        work: &work,
        single: None,
        src: None,
        dst: None,
    };
    for Exchange { on, steps, keep } in table::exchanges(&work) {
        for step in steps {
            vms.perform(on, step);
        }
        let Some(vm) = vms.slot(on).as_mut() else {
            continue;
        };
        let log = vm.qmp.take_log();
        if out.qemu.is_empty() {
            // The first exchange launches a VM: its log starts with the greeting.
            out.qemu = version_of(&log[0]["recv"]);
        }
        match keep {
            Keep::Discard => {}
            Keep::Fixture(name, desc) => out.save(name, desc, log),
            Keep::CommandNames(name, desc) => {
                let reply = log.iter().rev().find_map(|e| e["recv"].get("return"));
                let reply = json!({"return": reply.expect("query-commands reply")});
                let mut names: Vec<String> = q::command_set(&reply).into_iter().collect();
                names.sort();
                let v =
                    json!({"name": name, "description": desc, "qemu": out.qemu, "commands": names});
                out.save_value(name, v);
            }
            Keep::EventsAndAll((ev_name, ev_desc), (name, desc)) => {
                let events = log
                    .iter()
                    .filter(|e| e["recv"].get("event").is_some())
                    .cloned()
                    .collect();
                out.save(ev_name, ev_desc, events);
                out.save(name, desc, log);
            }
        }
    }
    drop(vms);
    let _ = std::fs::remove_dir_all(&work);
    out.written.sort();
    eprintln!("{} fixtures written", out.written.len());
}
