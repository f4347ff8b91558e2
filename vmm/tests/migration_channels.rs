//! The `file:` and `fd:` transports in-process: a stream written to a file
//! and loaded back, truncated files, bad paths and offsets, and sockets
//! passed with `getfd` (QEMU's texts).

use migtest_qmp::args::Args;
use migtest_qmp::schema::{MigrationInfo, MigrationStatus, RunState};
use migtest_vmm::migration::testing::TestHost;
use migtest_vmm::migration::Migration;
use migtest_vmm::monitor_fds;
use serde_json::{json, Value};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn args(v: Value) -> Args {
    Args::new(v.as_object().cloned())
}

fn info(m: &Migration) -> MigrationInfo {
    serde_json::from_value(m.query_migrate().unwrap()).unwrap()
}

fn wait_status(m: &Migration, s: MigrationStatus) -> MigrationInfo {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = info(m);
        if i.status == Some(s) {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {s}: {i:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A source with distinct bytes in every page, full speed.
fn source(pages: u64) -> (Arc<TestHost>, Arc<Migration>) {
    let (src, sm) = TestHost::new(pages, RunState::Running);
    for p in 0..pages {
        src.guest_write(p * 4096 + 7, format!("page {p}").as_bytes());
    }
    sm.set_parameters(args(json!({"max-bandwidth": 0})))
        .unwrap();
    (src, sm)
}

/// A destination waiting with `-incoming defer`.
fn deferred(pages: u64) -> (Arc<TestHost>, Arc<Migration>) {
    let (dst, dm) = TestHost::new(pages, RunState::Prelaunch);
    dm.start_incoming_from_cmdline("defer").unwrap();
    (dst, dm)
}

#[test]
fn file_round_trip_truncated_and_bad_paths() {
    monitor_fds::enter_monitor();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bin");
    let uri = format!("file:{},offset=4096", path.display());
    let (src, sm) = source(16);
    sm.migrate(args(json!({ "uri": uri }))).unwrap();
    wait_status(&sm, MigrationStatus::Completed);
    assert_eq!(src.state(), RunState::Postmigrate);
    let data = std::fs::read(&path).unwrap();
    assert!(data[..4096].iter().all(|&b| b == 0), "offset not honoured");

    let (dst, dm) = deferred(16);
    dm.migrate_incoming(args(json!({ "uri": uri }))).unwrap();
    wait_status(&dm, MigrationStatus::Completed);
    assert_eq!(dst.ram.snapshot(), src.ram.snapshot());
    assert_eq!(dst.state(), RunState::Running);

    let mut report = String::new();
    for (name, cut) in [("header", 4096 + 10), ("pages", data.len() / 2)] {
        let short = dir.path().join(format!("short-{name}.bin"));
        std::fs::write(&short, &data[..cut]).unwrap();
        let (dst, dm) = deferred(16);
        let u = format!("file:{},offset=4096", short.display());
        dm.migrate_incoming(args(json!({ "uri": u, "exit-on-error": false })))
            .unwrap();
        let i = wait_status(&dm, MigrationStatus::Failed);
        assert!(dst.exit_code.lock().unwrap().is_none());
        report.push_str(&format!("truncated in {name}: {}\n", i.error_desc.unwrap()));
    }
    // A path that does not exist: migrate fails and so does the migration.
    let (_s2, sm2) = source(4);
    let bad = dir.path().join("no/such/dir");
    let e = sm2
        .migrate(args(json!({ "uri": format!("file:{}", bad.display()) })))
        .unwrap_err();
    let rel = |s: &str| s.replace(&dir.path().display().to_string(), "DIR");
    report.push_str(&format!("migrate to a bad path: {}\n", rel(&e.desc)));
    let i = info(&sm2);
    assert_eq!(i.status, Some(MigrationStatus::Failed));
    assert_eq!(i.error_desc.as_deref(), Some(e.desc.as_str()));
    let (_d2, dm2) = deferred(4);
    let e = dm2
        .migrate_incoming(args(json!({ "uri": format!("file:{}", bad.display()) })))
        .unwrap_err();
    report.push_str(&format!("load from a bad path: {}\n", rel(&e.desc)));
    let e = sm2
        .migrate(args(json!({ "uri": "file:/tmp/x,offset=1q" })))
        .unwrap_err();
    report.push_str(&format!("bad offset: {}\n", e.desc));
    insta::assert_snapshot!("file_errors", report);
}

fn pass_fd(fd: &impl AsRawFd) {
    // SAFETY: dup of a live descriptor gives one this test owns.
    let d = unsafe { OwnedFd::from_raw_fd(libc::dup(fd.as_raw_fd())) };
    let (a, b) = UnixStream::pair().unwrap();
    monitor_fds::send_with_fd(&a, b"x", d.as_raw_fd()).unwrap();
    let mut buf = [0u8; 8];
    let (_, fds) = monitor_fds::recv_with_fds(&b, &mut buf).unwrap();
    monitor_fds::set_received(fds);
}

#[test]
fn fd_migration_over_a_passed_socket_pair() {
    monitor_fds::enter_monitor();
    let (src, sm) = source(16);
    let e = sm.migrate(args(json!({"uri": "fd:nosuch"}))).unwrap_err();
    assert_eq!(e.desc, "File descriptor named 'nosuch' has not been found");
    assert_eq!(info(&sm).status, Some(MigrationStatus::Failed));

    let (a, b) = UnixStream::pair().unwrap();
    let (dst, dm) = deferred(16);
    pass_fd(&b);
    monitor_fds::getfd(args(json!({"fdname": "in"}))).unwrap();
    dm.migrate_incoming(args(json!({"uri": "fd:in"}))).unwrap();
    pass_fd(&a);
    monitor_fds::getfd(args(json!({"fdname": "out"}))).unwrap();
    drop((a, b));
    sm.migrate(args(json!({"uri": "fd:out"}))).unwrap();
    wait_status(&sm, MigrationStatus::Completed);
    wait_status(&dm, MigrationStatus::Completed);
    assert_eq!(dst.ram.snapshot(), src.ram.snapshot());
    // migrate took the descriptor out of the table, as QEMU's monitor_get_fd.
    assert_eq!(
        monitor_fds::take("out").unwrap_err(),
        "File descriptor named 'out' has not been found"
    );
}
