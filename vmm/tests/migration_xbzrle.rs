//! XBZRLE (capability `xbzrle`, parameter `xbzrle-cache-size`): QEMU 7.2's
//! parameter rules, a held in-process migration whose re-sent pages go as
//! deltas, and damaged XBZRLE records failing the destination.

mod common;

use common::inproc::{args, info, wait_until};
use common::xbzrle::{caps, held_xbzrle_pair, hot_writer, scribbled_migration};
use migtest_qmp::schema::{MigrationInfo, MigrationStatus, RunState};
use migtest_vmm::migration::testing::TestHost;
use serde_json::json;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[test]
fn cache_size_parameter_as_qemu_7_2() {
    let (_h, m) = TestHost::new(4, RunState::Running);
    assert_eq!(
        m.query_parameters().unwrap()["xbzrle-cache-size"],
        json!(64u64 << 20)
    );
    let mut report = String::new();
    for v in [
        json!(0),
        json!(4095),
        json!(5000),
        json!(100_000_000),
        json!(-1),
        json!("x"),
        json!(3.5),
    ] {
        let e = m
            .set_parameters(args(json!({ "xbzrle-cache-size": v })))
            .expect_err("refused");
        report.push_str(&format!("{v} -> {}\n", e.desc));
    }
    insta::assert_snapshot!("cache_size_errors", report);
    for ok in [4096u64, 65536, 1 << 40] {
        m.set_parameters(args(json!({ "xbzrle-cache-size": ok })))
            .unwrap();
        assert_eq!(m.parameters().xbzrle_cache_size, ok);
    }
}

#[test]
fn held_migration_sends_deltas_and_ends_byte_identical() {
    let p = held_xbzrle_pair(256);
    let (src, sm) = (&p.src, &p.sm);
    for i in 0..256u64 {
        src.guest_write(i * 4096 + 9, &[i as u8 | 1; 40]);
    }
    let quit = Arc::new(AtomicBool::new(false));
    let w = hot_writer(src.clone(), quit.clone(), None);
    sm.migrate(args(json!({ "uri": p.uri }))).unwrap();
    assert_eq!(
        caps(sm, json!([{"capability": "xbzrle", "state": false}]))
            .unwrap_err()
            .desc,
        "There's a migration process in progress"
    );
    wait_until("20 xbzrle pages", 30, || {
        info(sm).xbzrle_cache.is_some_and(|x| x.pages >= 20)
    });
    let held = info(sm);
    let x = held.xbzrle_cache.unwrap();
    assert_eq!(x.cache_size, 64 << 20);
    assert!(x.bytes > 0 && x.cache_miss > 0, "{x:?}");
    // Deltas of an 8-byte counter: far smaller than the pages.
    assert!(x.bytes < x.pages * 100, "{x:?}");
    p.release_and_check(&quit, w);
    let done = info(sm);
    let x = done.xbzrle_cache.unwrap();
    let ram = done.ram.unwrap();
    // Every byte on the wire is counted in `transferred`; the deltas
    // saved most of the re-sent pages' bytes.
    assert!(
        ram.transferred < (ram.normal + x.pages) * 4096,
        "{ram:?} {x:?}"
    );
    // A migration without the capability reports no xbzrle-cache.
    let (_h, plain) = TestHost::new(4, RunState::Running);
    assert!(info(&plain).xbzrle_cache.is_none());
}

fn feed_destination(bytes: &[u8]) -> (Arc<TestHost>, MigrationInfo) {
    let dir = tempfile::tempdir().unwrap();
    let (dst, dm) = TestHost::new(4, RunState::Prelaunch);
    let path = dir.path().join("in");
    dm.start_incoming_from_cmdline(&format!("unix:{}", path.display()))
        .unwrap();
    let mut c = UnixStream::connect(&path).unwrap();
    let _ = c.write_all(bytes);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    wait_until("destination to finish", 20, || {
        dm.incoming_status() == MigrationStatus::Completed
            || dst.exit_code.lock().unwrap().is_some()
    });
    let i = info(&dm);
    (dst, i)
}

/// Every sample of `fixtures/streams/` whose name holds `kind` on a
/// destination: the good one loads and runs with `page0` at the start of
/// page 0 and `zero_after` zero bytes after it in that page, each damaged
/// one fails it (exit 1); their `error-desc`s, one line each.
fn samples_on_destination(kind: &str, page0: [u8; 4], zero_after: bool) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/streams");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(kind))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    let mut report = String::new();
    for name in names {
        let (dst, i) = feed_destination(&std::fs::read(dir.join(&name)).unwrap());
        if name.starts_with("good") {
            assert_eq!(i.status, Some(MigrationStatus::Completed), "{i:?}");
            assert_eq!(dst.state(), RunState::Running);
            let ram = dst.ram.snapshot();
            assert_eq!(ram[..4], page0);
            if zero_after {
                assert!(ram[4..4096].iter().all(|b| *b == 0), "{name}");
            }
            continue;
        }
        assert_eq!(i.status, Some(MigrationStatus::Failed), "{name}");
        assert_eq!(*dst.exit_code.lock().unwrap(), Some(1), "{name}");
        assert_ne!(dst.state(), RunState::Running, "{name}");
        report.push_str(&format!("{name}: {}\n", i.error_desc.unwrap()));
    }
    report
}

/// Every XBZRLE sample of `fixtures/streams/` on a destination: the good
/// one loads and runs, each damaged one fails it (exit 1) with its precise
/// `error-desc`.
#[test]
fn damaged_xbzrle_records_fail_the_destination() {
    let report = samples_on_destination("xbzrle", [0, 1, 2, 0xbb], false);
    insta::assert_snapshot!("xbzrle_destination_errors", report);
}

/// The same for the SPARSE samples: the good one leaves page 0 (which held
/// data) zero but for its two bytes.
#[test]
fn damaged_sparse_records_fail_the_destination() {
    let report = samples_on_destination("sparse", [0, 1, 2, 0], true);
    insta::assert_snapshot!("sparse_destination_errors", report);
}

/// Pages that overflow (sent whole) between small changes: the cache follows
/// every whole send, so the deltas after them decode right.
#[test]
fn overflowing_pages_reset_the_base() {
    let (a, b) = scribbled_migration();
    assert!(a == b, "RAM differs");
}
