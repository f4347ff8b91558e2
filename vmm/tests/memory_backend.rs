//! `-object memory-backend-file|ram` with `-machine memory-backend=ID`:
//! a guest whose RAM starts as a file's contents, migrated to a destination
//! of anonymous RAM, arrives byte for byte; bad backends stop start-up with
//! QEMU's one-line errors.

mod common;

use common::{vmm_command, Launch, Vmm};
use serde_json::json;
use std::process::Stdio;
use std::time::{Duration, Instant};

const RAM: u64 = 64 << 20;
const PAGE: usize = 4096;

fn pattern(i: usize) -> u8 {
    (i % 251 + 1) as u8
}

#[test]
fn a_file_backed_guest_migrates_its_file_contents() {
    let files = common::tempdir();
    let fill = files.path().join("fill");
    let data: Vec<u8> = (0..RAM as usize).map(pattern).collect();
    std::fs::write(&fill, &data).unwrap();

    // The sweep guest adds its counter to byte 0 of the pages it sweeps;
    // every other byte is the file's.
    let src = Vmm::launch(Launch::default().args(&[
        "-object",
        &format!(
            "memory-backend-file,id=ram0,size=64M,mem-path={},share=off",
            fill.display()
        ),
        "-machine",
        "none,memory-backend=ram0",
    ]));
    src.wait_serial(b'B', Duration::from_secs(30));
    let dst = Vmm::launch(Launch::default().args(&[
        "-S",
        "-incoming",
        "defer",
        "-object",
        "memory-backend-ram,id=mem,size=64M",
        "-machine",
        "memory-backend=mem",
    ]));
    let uri = format!("unix:{}", dst.path("mig.sock").display());
    let (mut sq, mut dq) = (src.qmp(), dst.qmp());
    dq.ok("migrate-incoming", Some(json!({ "uri": uri })));
    sq.ok("migrate", Some(json!({ "uri": uri })));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = sq.ok("query-migrate", None)["status"].clone();
        if status == "completed" {
            break;
        }
        assert_ne!(status, "failed", "{}", sq.ok("query-migrate", None));
        assert!(
            Instant::now() < deadline,
            "migration not completed in 60 s: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (got, sent) = (
        dq.pmem(dst.dir.path(), 0, RAM),
        sq.pmem(src.dir.path(), 0, RAM),
    );
    assert!(got == sent, "destination RAM differs from the source's");
    for (i, chunk) in got.chunks(PAGE).enumerate() {
        assert_eq!(
            &chunk[1..],
            &data[i * PAGE + 1..(i + 1) * PAGE],
            "page {i} lost the file's bytes"
        );
    }
    assert!(
        std::fs::read(&fill).unwrap() == data,
        "share=off: the guest's writes reached the file"
    );
}

/// Runs `migtest-vmm` with `args` and returns its exit status and stderr.
fn refused(args: &[String]) -> String {
    let out = vmm_command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run migtest-vmm");
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_memory_backends_are_refused_with_qemus_texts() {
    let dir = common::tempdir();
    let short = dir.path().join("short");
    std::fs::write(&short, [1u8; 4096]).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["-machine".into(), "memory-backend=nope".into()],
            "Memory backend 'nope' not found",
        ),
        (
            vec![
                "-m".into(),
                "128M".into(),
                "-object".into(),
                "memory-backend-ram,id=r,size=64M".into(),
                "-machine".into(),
                "memory-backend=r".into(),
            ],
            "Size specified by -m option must match size of explicitly specified 'memory-backend' property",
        ),
        (
            vec!["-object".into(), "memory-backend-file,id=r,size=64M".into()],
            "mem-path property not set",
        ),
        (
            vec!["-object".into(), "memory-backend-ram,id=r".into()],
            "can't create backend with size 0",
        ),
        (
            vec!["-object".into(), "memory-backend-epc,id=r,size=4k".into()],
            "invalid object type: memory-backend-epc",
        ),
        (
            vec!["-object".into(), "memory-backend-ram,id=r,size=4k,colour=red".into()],
            "Property 'memory-backend-ram.colour' not found",
        ),
        (
            vec![
                "-object".into(),
                "memory-backend-ram,id=r,size=4k".into(),
                "-object".into(),
                "memory-backend-ram,id=r,size=8k".into(),
            ],
            "attempt to add duplicate property 'r' to object (type 'container')",
        ),
        (
            vec![
                "-object".into(),
                format!("memory-backend-file,id=r,size=64M,mem-path={}", short.display()),
                "-machine".into(),
                "memory-backend=r".into(),
            ],
            "backing store size 0x1000 does not match 'size' option 0x4000000",
        ),
    ];
    for (args, text) in cases {
        let err = refused(&args);
        assert!(err.contains(text), "{args:?}: {err}");
    }
}
