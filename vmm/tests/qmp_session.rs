//! Process-level QMP tests against real `migtest-vmm` processes: the
//! capabilities-negotiation rules, every non-migration command, run control
//! with events, several monitors, memory freezing and command-line errors.

mod common;

use common::{error_of, image, vmm_command, Launch, Vmm, TIMEOUT};
use migtest_vmm::guest::{check_ab_invariant, GuestImage};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const PAGE: u64 = 4096;
const RAM: u64 = 64 << 20;

fn sweep_range() -> (u64, u64) {
    GuestImage::load(image("sweep"))
        .expect("sweep image")
        .test_range(RAM)
}

fn assert_timestamp(ev: &Value) {
    let ts = &ev["timestamp"];
    let s = ts["seconds"].as_i64().expect("seconds");
    let us = ts["microseconds"].as_i64().expect("microseconds");
    assert!(s > 1_600_000_000, "{ev}");
    assert!((0..1_000_000).contains(&us), "{ev}");
    assert_eq!(
        ts.as_object().unwrap().len(),
        2,
        "timestamp has exactly seconds and microseconds: {ev}"
    );
}

#[test]
fn greeting_shape() {
    let vmm = Vmm::start();
    let q = vmm.connect();
    let g = q.greeting.clone().unwrap();
    let obj = g.as_object().unwrap();
    assert_eq!(obj.len(), 1, "{g}");
    let qmp = g["QMP"].as_object().expect("QMP member is an object");
    assert_eq!(
        qmp.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["version".to_string(), "capabilities".to_string()])
    );
    assert!(g["QMP"]["capabilities"].is_array());
    let v = &g["QMP"]["version"];
    for k in ["major", "minor", "micro"] {
        assert!(v["qemu"][k].is_u64(), "{g}");
    }
    assert!(v["package"].is_string());
}

#[test]
fn negotiation_rules() {
    let vmm = Vmm::start();
    let mut q = vmm.connect();
    // Nothing but qmp_capabilities before negotiation, and no events: a
    // stop/cont on another monitor must not reach this one.
    for cmd in ["query-status", "query-version", "stop", "no-such-command"] {
        let (class, desc) = q.err(cmd, None);
        assert_eq!(class, "CommandNotFound", "{cmd}");
        assert_eq!(
            desc,
            "Expecting capabilities negotiation with 'qmp_capabilities'"
        );
    }
    let mut other = vmm.qmp();
    other.ok("stop", None);
    other.ok("cont", None);
    assert!(
        q.try_recv_line(Duration::from_millis(300)).is_none(),
        "event before negotiation"
    );
    // A failed qmp_capabilities leaves negotiation mode on.
    let (class, desc) = q.err("qmp_capabilities", Some(json!({"enable": ["bogus"]})));
    assert_eq!(class, "GenericError");
    assert_eq!(desc, "Parameter 'null' does not accept value 'bogus'");
    assert_eq!(q.err("query-status", None).0, "CommandNotFound");
    assert_eq!(q.ok("qmp_capabilities", None), json!({}));
    let (class, desc) = q.err("qmp_capabilities", None);
    assert_eq!(class, "CommandNotFound");
    assert_eq!(
        desc,
        "Capabilities negotiation is already complete, command ignored"
    );
    assert_eq!(q.status(), "running");
    // Events now arrive.
    other.ok("stop", None);
    assert_timestamp(&q.wait_event("STOP"));
}

#[test]
fn query_version_commands_and_kvm() {
    let vmm = Vmm::start();
    let mut q = vmm.qmp();
    let v = q.ok("query-version", None);
    assert_eq!(v, q.greeting.clone().unwrap()["QMP"]["version"]);
    let cmds = q.ok("query-commands", None);
    let names: BTreeSet<String> = cmds
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c.as_object().unwrap().len(), 1, "{c}");
            c["name"].as_str().unwrap().to_string()
        })
        .collect();
    // Every listed command exists (never CommandNotFound) ...
    for n in &names {
        if n == "quit" || n == "qmp_capabilities" {
            continue;
        }
        let r = q.execute(n, Some(json!({"no-such-arg-xyz": 1})));
        if let Some((class, _)) = error_of(&r) {
            assert_ne!(class, "CommandNotFound", "{n} listed but missing: {r}");
        }
    }
    // ... and the unknown ones are CommandNotFound with QEMU's text.
    let (class, desc) = q.err("no-such-command", None);
    assert_eq!(class, "CommandNotFound");
    assert_eq!(desc, "The command no-such-command has not been found");
    for needed in [
        "qmp_capabilities",
        "query-commands",
        "query-version",
        "query-status",
        "query-name",
        "stop",
        "cont",
        "quit",
        "pmemsave",
        "migrate",
        "migrate-incoming",
        "migrate_cancel",
        "migrate-continue",
        "migrate-set-parameters",
        "query-migrate-parameters",
        "migrate-set-capabilities",
        "query-migrate-capabilities",
        "query-migrate",
    ] {
        assert!(
            names.contains(needed),
            "{needed} missing from query-commands"
        );
    }
    assert_eq!(q.status(), "running", "the probes must not change state");
}

#[test]
fn query_name_with_and_without_name() {
    let vmm = Vmm::start();
    assert_eq!(vmm.qmp().ok("query-name", None), json!({"name": "t"}));
    let vmm = Vmm::launch(Launch {
        name: Some("guest=other,debug-threads=on".into()),
        ..Launch::default()
    });
    assert_eq!(vmm.qmp().ok("query-name", None), json!({"name": "other"}));
    let vmm = Vmm::launch(Launch {
        name: None,
        ..Launch::default()
    });
    assert_eq!(vmm.qmp().ok("query-name", None), json!({}));
}

fn status_reply(q: &mut common::Qmp) -> Value {
    q.ok("query-status", None)
}

#[test]
fn query_status_in_each_state() {
    // prelaunch with -S
    let vmm = Vmm::launch(Launch::default().args(&["-S"]));
    let mut q = vmm.qmp();
    assert_eq!(
        status_reply(&mut q),
        json!({"status": "prelaunch", "singlestep": false, "running": false})
    );
    // stop in prelaunch: {} and no event, stays prelaunch
    q.ok("stop", None);
    assert_eq!(q.status(), "prelaunch");
    q.ok("cont", None);
    assert_timestamp(&q.wait_event("RESUME"));
    assert_eq!(
        status_reply(&mut q),
        json!({"status": "running", "singlestep": false, "running": true})
    );
    q.ok("stop", None);
    assert_timestamp(&q.wait_event("STOP"));
    assert_eq!(
        status_reply(&mut q),
        json!({"status": "paused", "singlestep": false, "running": false})
    );
    drop(q);
    drop(vmm);

    // inmigrate with -incoming defer; stop/cont only toggle autostart
    let vmm = Vmm::launch(Launch::default().args(&["-incoming", "defer"]));
    let mut q = vmm.qmp();
    let inmigrate = json!({"status": "inmigrate", "singlestep": false, "running": false});
    assert_eq!(status_reply(&mut q), inmigrate);
    q.ok("stop", None);
    assert_eq!(status_reply(&mut q), inmigrate);
    q.ok("cont", None);
    assert_eq!(status_reply(&mut q), inmigrate);
    assert!(q.drain_events(Duration::from_millis(200)).is_empty());
}

#[test]
fn stop_and_cont_events() {
    let vmm = Vmm::start();
    let mut q = vmm.qmp();
    assert_eq!(q.status(), "running");
    // QEMU sends the event before the reply.
    q.send("stop", None, None);
    let ev = q.recv();
    assert_eq!(ev["event"], "STOP", "{ev}");
    assert!(ev.get("data").is_none(), "{ev}");
    assert_timestamp(&ev);
    assert_eq!(q.recv(), json!({"return": {}}));
    assert_eq!(q.status(), "paused");
    // stop while paused: {} and no event
    q.ok("stop", None);
    q.send("cont", None, None);
    let ev = q.recv();
    assert_eq!(ev["event"], "RESUME", "{ev}");
    assert_timestamp(&ev);
    assert_eq!(q.recv(), json!({"return": {}}));
    assert_eq!(q.status(), "running");
    let t1 = &ev["timestamp"];
    let _ = t1;
    // cont while running: {} (QEMU 7.2 sends no event here)
    q.ok("cont", None);
    assert_eq!(q.status(), "running");
    let extra = q.drain_events(Duration::from_millis(200));
    let names: Vec<_> = extra.iter().map(|e| e["event"].clone()).collect();
    assert!(
        names.is_empty(),
        "no events after stop-while-paused / cont-while-running, got {names:?}"
    );
}

#[test]
fn quit_replies_emits_shutdown_and_exits_zero() {
    let mut vmm = Vmm::start();
    let mut q = vmm.qmp();
    let mut other = vmm.qmp();
    q.send("quit", None, Some(json!("bye")));
    // Everything until EOF: the reply, then exactly one SHUTDOWN.
    let mut lines = Vec::new();
    while let Some(l) = q.try_recv_line(TIMEOUT) {
        lines.push(serde_json::from_str::<Value>(&l).unwrap());
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], json!({"return": {}, "id": "bye"}));
    let ev = &lines[1];
    assert_eq!(ev["event"], "SHUTDOWN");
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert_timestamp(ev);
    assert_eq!(
        other.wait_event("SHUTDOWN")["data"]["reason"],
        "host-qmp-quit"
    );
    let st = vmm.wait_exit(TIMEOUT);
    assert_eq!(st.code(), Some(0), "{st}");
}

#[test]
fn pmemsave_contents_and_errors() {
    let vmm = Vmm::start();
    let mut q = vmm.qmp();
    let (start, end) = sweep_range();
    // let the sweep go round its range once (a fixed sleep was not enough
    // under load: found by ci/soak), then freeze it
    vmm.wait_serial(b'B', Duration::from_secs(30));
    q.ok("stop", None);
    let full = q.pmem(vmm.dir.path(), 0, RAM);
    assert_eq!(full.len() as u64, RAM);
    // A-B invariant on the first bytes; the other bytes of the range are zero
    let firsts = (start..end)
        .step_by(PAGE as usize)
        .map(|a| full[a as usize]);
    let sum = check_ab_invariant(firsts).expect("A-B invariant");
    assert_eq!(sum.pages, (end - start) / PAGE);
    assert!(
        full[start as usize..end as usize]
            .chunks(PAGE as usize)
            .any(|p| p[0] != 0),
        "the sweep never ran"
    );
    for (i, page) in full[start as usize..end as usize]
        .chunks(PAGE as usize)
        .enumerate()
    {
        assert!(
            page[1..].iter().all(|&b| b == 0),
            "page {i} of the range has non-zero bytes after the first"
        );
    }
    // Below the range nothing is written.
    assert!(full[..start as usize].iter().all(|&b| b == 0));
    // A part equals the same bytes of the full dump (unaligned, too).
    for (a, n) in [(start, 3 * PAGE), (start + 123, 5000), (RAM - 1, 1), (0, 0)] {
        let part = q.pmem(vmm.dir.path(), a, n);
        assert_eq!(part, &full[a as usize..(a + n) as usize], "[{a:#x}+{n:#x}]");
    }
    // Errors: out of range, unwritable file, bad arguments. The VM lives on.
    for (args, want) in [
        (
            json!({"val": RAM - PAGE, "size": 2 * PAGE, "filename": "/tmp/x"}),
            "Invalid addr",
        ),
        (
            json!({"val": RAM, "size": 1, "filename": "/tmp/x"}),
            "Invalid addr",
        ),
        (
            json!({"val": 0, "size": PAGE, "filename": "/nonexistent-dir/x"}),
            "/nonexistent-dir/x",
        ),
        (
            json!({"val": 0, "size": PAGE, "filename": vmm.dir.path().display().to_string()}),
            "",
        ),
        (
            json!({"val": 0, "size": PAGE}),
            "Parameter 'filename' is missing",
        ),
        (
            json!({"val": "0", "size": PAGE, "filename": "/tmp/x"}),
            "Invalid parameter type for 'val', expected: integer",
        ),
    ] {
        let (class, desc) = q.err("pmemsave", Some(args.clone()));
        assert_eq!(class, "GenericError", "{args}");
        assert!(desc.contains(want), "{args}: {desc}");
    }
    assert_eq!(q.status(), "paused");
}

#[test]
fn stop_freezes_memory_and_cont_resumes_it() {
    let vmm = Vmm::start();
    let mut q = vmm.qmp();
    let (start, end) = sweep_range();
    // The guest has written its test range once (first `B`), so `stop` freezes live memory.
    vmm.wait_serial(b'B', Duration::from_secs(30));
    q.ok("stop", None);
    let a = q.pmem(vmm.dir.path(), start, end - start);
    std::thread::sleep(Duration::from_millis(200));
    let b = q.pmem(vmm.dir.path(), start, end - start);
    assert!(a == b, "guest memory changed while stopped");
    let firsts = a.iter().step_by(PAGE as usize).copied();
    check_ab_invariant(firsts).expect("A-B invariant after stop");
    q.ok("cont", None);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut c = q.pmem(vmm.dir.path(), start, end - start);
    while a == c && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        c = q.pmem(vmm.dir.path(), start, end - start);
    }
    assert!(a != c, "guest memory did not change within 20 s after cont");
    // A second stop at an arbitrary point still satisfies the invariant.
    q.ok("stop", None);
    let d = q.pmem(vmm.dir.path(), start, end - start);
    check_ab_invariant(d.iter().step_by(PAGE as usize).copied()).expect("A-B after 2nd stop");
}

#[test]
fn two_monitors_both_get_events_and_both_work() {
    let vmm = Vmm::launch(Launch {
        monitors: 2,
        ..Launch::default()
    });
    let mut a = vmm.connect_to(0);
    let mut b = vmm.connect_to(1);
    // A second client on the same socket too.
    let mut c = vmm.connect_to(0);
    for q in [&mut a, &mut b, &mut c] {
        q.ok("qmp_capabilities", None);
    }
    a.ok("stop", None);
    for q in [&mut a, &mut b, &mut c] {
        q.wait_event("STOP");
    }
    assert_eq!(b.status(), "paused");
    b.ok("cont", None);
    for q in [&mut a, &mut b, &mut c] {
        q.wait_event("RESUME");
    }
    assert_eq!(c.ok("query-name", None), json!({"name": "t"}));
    // Garbage on one monitor, or one going away mid-line, harms no other.
    b.send_raw(b"{\"execute\": ]]]\n\x01\xff");
    drop(c);
    let mut d = vmm.connect_to(1);
    d.send_raw(b"{\"execute\": \"query-");
    drop(d);
    assert_eq!(a.status(), "running");
    loop {
        let m = b.recv();
        if error_of(&m).is_none() {
            panic!("only errors expected, got {m}");
        }
        // drain the error replies, then check b still works
        if b.try_recv_line(Duration::from_millis(100)).is_none() {
            break;
        }
    }
    assert_eq!(b.status(), "running");
}

#[test]
fn interleaved_commands_from_two_monitors() {
    let vmm = Vmm::launch(Launch {
        monitors: 2,
        ..Launch::default()
    });
    let sock0 = vmm.sockets[0].clone();
    let sock1 = vmm.sockets[1].clone();
    let threads: Vec<_> = [sock0, sock1]
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            std::thread::spawn(move || {
                let mut q = common::Qmp::connect(&s);
                q.recv();
                q.ok("qmp_capabilities", None);
                for n in 0..50 {
                    q.send("query-name", None, Some(json!([i, n])));
                    let r = q.reply();
                    assert_eq!(r, json!({"return": {"name": "t"}, "id": [i, n]}));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Runs migtest-vmm with `args`; returns (exit code, stderr).
fn run_cli(args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut child = vmm_command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st.code(), err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("migtest-vmm {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn command_line_errors_are_one_line_and_exit_1() {
    let dir = common::tempdir();
    let sock = format!("unix:{}/q.sock,server=on,wait=off", dir.path().display());
    let sweep = image("sweep").display().to_string();
    let long_sock = format!("unix:/tmp/{},server=on,wait=off", "x".repeat(120));
    let cases: Vec<Vec<&str>> = vec![
        vec!["-bogus"],
        vec!["-m"],
        vec!["-m", "lots"],
        vec!["-m", "0"],
        vec!["-smp", "0"],
        vec!["-smp", "x"],
        vec!["-qmp", "tcp:127.0.0.1:4444"],
        vec!["-qmp", &long_sock],
        vec!["-serial", "pty"],
        vec!["-incoming", "rdma:1.2.3.4:5"],
        vec!["-accel", "hvf"],
        vec!["-display", "gtk"],
        vec!["disk.img"],
        vec!["-kernel", "/nonexistent/image.toml", "-qmp", &sock],
        vec!["-m", "1M", "-kernel", &sweep, "-qmp", &sock],
    ];
    for args in cases {
        let (code, err) = run_cli(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(
            err.lines().count(),
            1,
            "{args:?}: one line expected: {err:?}"
        );
        assert!(err.ends_with('\n'), "{args:?}: {err:?}");
        assert!(err.starts_with("migtest-vmm: "), "{args:?}: {err:?}");
    }
    // -version and -help succeed.
    assert_eq!(run_cli(&["-version"]).0, Some(0));
    assert_eq!(run_cli(&["-help"]).0, Some(0));
}

/// Resident set size of `pid` in KiB (`VmRSS` in /proc/PID/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn mem_prealloc_faults_in_all_guest_ram_before_the_monitor_answers() {
    // The idle guest writes nothing, so without -mem-prealloc its 64 MiB
    // stay unallocated; with it they are resident once QMP answers.
    let plain = Vmm::launch(Launch {
        image: "idle".into(),
        ..Launch::default()
    });
    let prealloc = Vmm::launch(
        Launch {
            image: "idle".into(),
            ..Launch::default()
        }
        .args(&["-mem-prealloc"]),
    );
    for vmm in [&plain, &prealloc] {
        assert_eq!(vmm.qmp().status(), "running");
    }
    let (without, with) = (rss_kib(plain.pid()), rss_kib(prealloc.pid()));
    assert!(with >= 64 << 10, "-mem-prealloc: RSS {with} KiB < 64 MiB");
    assert!(without < 32 << 10, "no -mem-prealloc: RSS {without} KiB");
    // The guest RAM is still all zero: preallocation writes nothing.
    let mut q = prealloc.qmp();
    let ram = q.pmem(prealloc.dir.path(), 0, 64 << 20);
    assert!(ram.iter().all(|b| *b == 0), "preallocated RAM is not zero");
}
