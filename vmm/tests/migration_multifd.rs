//! multifd: the capability and parameter, migrations over several channels
//! (unix and TCP) under a dirtying guest, the hold, cancel, a cut channel,
//! bad handshakes and capability mismatches. In-process, with in-memory
//! guests over real sockets.

use migtest_qmp::schema::{MigrationStatus, RunState};
use migtest_vmm::migration::multifd::{Hello, HELLO_LEN};
use migtest_vmm::migration::stream::{Header, StreamWriter};
use migtest_vmm::migration::testing::TestHost;
use migtest_vmm::migration::Migration;
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::inproc::{
    args, err, held_migration_to_listener, info, passes, wait_status, wait_until, workload, Pair,
    SOURCE_COMPLETED_TRACE,
};

fn set_multifd(m: &Migration, on: bool, channels: Option<u8>) {
    m.set_capabilities(args(json!({"capabilities": [
        {"capability": "events", "state": true},
        {"capability": "multifd", "state": on}]})))
        .unwrap();
    if let Some(n) = channels {
        m.set_parameters(args(json!({"multifd-channels": n})))
            .unwrap();
    }
}

/// Source and destination with the given multifd settings; `tcp` listens on port 0.
fn pair(pages: u64, src_mfd: (bool, u8), dst_mfd: (bool, u8), tcp: bool) -> Pair {
    Pair::new(
        pages,
        tcp,
        |m| set_multifd(m, src_mfd.0, Some(src_mfd.1)),
        |m| set_multifd(m, dst_mfd.0, Some(dst_mfd.1)),
    )
}

fn fill(h: &TestHost, pages: u64) {
    for i in 0..pages {
        if i % 3 != 0 {
            h.guest_write(i * 4096 + 17, &[i as u8, 1, 2, 3]);
        }
    }
}

// ---------------------------------------------------------------------------

#[test]
fn capability_and_parameter_follow_qemu() {
    let (_h, m) = TestHost::new(4, RunState::Running);
    assert_eq!(m.query_parameters().unwrap()["multifd-channels"], json!(2));
    let caps = m.query_capabilities().unwrap();
    assert!(caps
        .as_array()
        .unwrap()
        .contains(&json!({"capability": "multifd", "state": false})));
    let cases = [
        (
            json!(0),
            "Parameter 'multifd_channels' expects a value between 1 and 255",
        ),
        (json!(256), "Parameter 'multifd-channels' expects uint8_t"),
        (json!(-1), "Parameter 'multifd-channels' expects uint8_t"),
        (json!("4"), "Parameter 'multifd-channels' expects uint64"),
        (json!(1.5), "Parameter 'multifd-channels' expects uint64"),
    ];
    for (v, want) in cases {
        let e = err(m.set_parameters(args(json!({"multifd-channels": v, "downtime-limit": 1}))));
        assert_eq!(e, want, "{v}");
    }
    // Both out of range: QEMU 7.2 checks downtime-limit first (checked against it).
    let e = err(m.set_parameters(args(
        json!({"multifd-channels": 0, "downtime-limit": 3_000_000}),
    )));
    assert_eq!(
        e,
        "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
    );
    // Nothing of a refused request was applied.
    assert_eq!(m.parameters().downtime_limit, 300);
    m.set_parameters(args(json!({"multifd-channels": 255})))
        .unwrap();
    m.set_parameters(args(json!({"multifd-channels": 1})))
        .unwrap();
    assert_eq!(m.query_parameters().unwrap()["multifd-channels"], json!(1));
    set_multifd(&m, true, None);
    assert!(m.capabilities().multifd());
}

/// Holds N passes with multifd on under a dirtying guest, releases, and
/// checks byte-equal RAM; during the migration the capability cannot change.
fn held_multifd_migration(channels: u8, tcp: bool) {
    let pages = 2048;
    let p = pair(pages, (true, channels), (true, channels), tcp);
    p.hold();
    fill(&p.src, pages);
    let quit = Arc::new(AtomicBool::new(false));
    let w = workload(p.src.clone(), quit.clone());
    p.migrate();
    assert_eq!(
        err(p.sm.set_capabilities(args(
            json!({"capabilities": [{"capability": "multifd", "state": false}]})
        ))),
        "There's a migration process in progress"
    );
    wait_until("6 passes", 30, || passes(&p.sm) >= 6);
    assert_eq!(info(&p.sm).status, Some(MigrationStatus::Active));
    assert_eq!(p.src.state(), RunState::Running);
    assert_eq!(p.dm.incoming_status(), MigrationStatus::Active);
    // Memory and device state arrive intact.
    p.release_and_check(&quit, w);
    assert_eq!(p.src.event_trace(), SOURCE_COMPLETED_TRACE);
    let ram = info(&p.sm).ram.unwrap();
    assert!(ram.duplicate > 0 && ram.normal > 0);
    assert_eq!(ram.precopy_bytes + ram.downtime_bytes, ram.transferred);
    // Every page was sent at least once, on the page channels.
    assert!(ram.normal_bytes > (pages / 2) * 4096, "{ram:?}");
}

#[test]
fn multifd_unix_held_then_released_is_byte_equal() {
    held_multifd_migration(3, false);
}

#[test]
fn multifd_tcp_one_channel_held_then_released_is_byte_equal() {
    held_multifd_migration(1, true);
}

#[test]
fn multifd_without_hold_converges() {
    let p = pair(1024, (true, 4), (true, 4), false);
    fill(&p.src, 1024);
    p.migrate();
    p.wait_completed();
    assert!(p.src.ram.snapshot() == p.dst.ram.snapshot());
}

#[test]
fn cancel_during_a_multifd_pass_keeps_the_source_running() {
    let p = pair(1024, (true, 2), (true, 2), false);
    p.hold();
    p.migrate();
    wait_until("3 passes", 30, || passes(&p.sm) >= 3);
    p.cancel_source_runs();
    wait_status(&p.dm, MigrationStatus::Failed);
    assert!(info(&p.dm).error_desc.is_some());
    assert_eq!(p.dst.state(), RunState::Inmigrate);
}

#[test]
fn a_cut_channel_fails_the_source_and_it_runs_on() {
    let (src, sm) = TestHost::new(256, RunState::Running);
    set_multifd(&sm, true, Some(2));
    let (l, _dir) = held_migration_to_listener(&sm);
    // Accept all three connections, read the hellos, then cut channel 2 only.
    let mut conns: Vec<(Hello, UnixStream)> = (0..3)
        .map(|_| {
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; HELLO_LEN];
            c.read_exact(&mut b).unwrap();
            (Hello::parse(&b).unwrap(), c)
        })
        .collect();
    let uuid = conns[0].0.uuid;
    assert!(conns.iter().all(|(h, _)| h.uuid == uuid && h.channels == 2));
    let mut ids: Vec<u32> = conns.iter().map(|(h, _)| h.channel).collect();
    ids.sort();
    assert_eq!(ids, [0, 1, 2]);
    let cut = conns.iter().position(|(h, _)| h.channel == 2).unwrap();
    drop(conns.remove(cut));
    // The others keep being drained until the source gives up.
    let stop = Arc::new(AtomicBool::new(false));
    let drains: Vec<_> = conns
        .into_iter()
        .map(|(_, mut c)| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let mut b = vec![0u8; 1 << 16];
                while !stop.load(Ordering::SeqCst) {
                    match c.read(&mut b) {
                        Ok(0) => break,
                        _ => continue,
                    }
                }
            })
        })
        .collect();
    wait_status(&sm, MigrationStatus::Failed);
    stop.store(true, Ordering::SeqCst);
    for d in drains {
        d.join().unwrap();
    }
    let e = info(&sm).error_desc.unwrap();
    assert!(
        e == "multifd channel 2: Unable to write to socket: Broken pipe"
            || e == "multifd channel 2: Unable to write to socket: Connection reset by peer",
        "{e}"
    );
    assert_eq!(src.state(), RunState::Running);
}

/// A destination with multifd on (2 channels) fed by a hand-made source;
/// returns its `error-desc` once it failed. The connections `connect`
/// returns stay open until then.
fn feed_multifd_destination(connect: impl FnOnce(&str) -> Vec<UnixStream>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (dst, dm) = TestHost::new(4, RunState::Prelaunch);
    dm.start_incoming_from_cmdline("defer").unwrap();
    set_multifd(&dm, true, Some(2));
    let path = dir.path().join("in").display().to_string();
    dm.migrate_incoming(args(
        json!({"uri": format!("unix:{path}"), "exit-on-error": false}),
    ))
    .unwrap();
    let _keep = connect(&path);
    wait_status(&dm, MigrationStatus::Failed);
    assert_eq!(dst.state(), RunState::Inmigrate);
    info(&dm).error_desc.unwrap()
}

fn hello(channel: u32, channels: u32, uuid: u8) -> [u8; HELLO_LEN] {
    Hello {
        channel,
        channels,
        uuid: [uuid; 16],
    }
    .to_bytes()
}

fn connect_with(path: &str, bytes: &[u8]) -> UnixStream {
    let mut c = UnixStream::connect(path).unwrap();
    c.write_all(bytes).unwrap();
    c
}

#[test]
fn bad_handshakes_fail_the_destination_with_the_reason() {
    let e = feed_multifd_destination(|p| {
        vec![
            connect_with(p, &hello(0, 2, 7)),
            connect_with(p, &hello(1, 2, 7)),
            connect_with(p, &hello(2, 2, 8)),
        ]
    });
    assert_eq!(
        e,
        "multifd: channel 2 belongs to migration 08080808-0808-0808-0808-080808080808, \
         not 07070707-0707-0707-0707-070707070707"
    );
    let e = feed_multifd_destination(|p| vec![connect_with(p, &hello(0, 3, 7))]);
    assert_eq!(
        e,
        "multifd: the source uses 3 channels but multifd-channels is 2 on the destination"
    );
    let e = feed_multifd_destination(|p| {
        vec![
            connect_with(p, &hello(1, 2, 7)),
            connect_with(p, &hello(1, 2, 7)),
        ]
    });
    assert_eq!(e, "multifd: channel 1 connected twice");
    let e = feed_multifd_destination(|p| {
        let mut h = hello(0, 2, 7);
        h[0] = b'X';
        vec![connect_with(p, &h)]
    });
    assert_eq!(
        e,
        "multifd: bad multifd hello magic \"XIGTMFDC\" (expected \"MIGTMFDC\")"
    );
    // A plain stream from a source without multifd.
    let e = feed_multifd_destination(|p| {
        vec![connect_with(
            p,
            &Header::new(4 * 4096, 1, 0x5eed).to_bytes(),
        )]
    });
    assert!(
        e.contains("enabled on the destination but not on the source"),
        "{e}"
    );
    // A connection that closes before its hello.
    let e = feed_multifd_destination(|p| {
        drop(connect_with(p, &hello(0, 2, 7)[..10]));
        vec![]
    });
    assert_eq!(e, "multifd: a connection closed before its hello");
}

fn channel_body(f: impl FnOnce(&mut StreamWriter<Vec<u8>>)) -> Vec<u8> {
    let mut w = StreamWriter::new(Vec::new());
    f(&mut w);
    w.into_inner()
}

#[test]
fn a_bad_page_channel_fails_the_destination_with_the_reason() {
    let e = feed_multifd_destination(|p| {
        let mut main = connect_with(p, &hello(0, 2, 7));
        main.write_all(&channel_body(|w| {
            w.header(&Header::new(4 * 4096, 1, 0x5eed)).unwrap();
            w.pass(1).unwrap();
        }))
        .unwrap();
        let mut c1 = connect_with(p, &hello(1, 2, 7));
        // Page 9 of a 4-page guest, after the first sync.
        c1.write_all(&channel_body(|w| {
            w.pass(1).unwrap();
            w.pages(&[9], &[0u8; 4096]).unwrap();
        }))
        .unwrap();
        let mut c2 = connect_with(p, &hello(2, 2, 7));
        c2.write_all(&channel_body(|w| w.pass(1).unwrap())).unwrap();
        vec![main, c1, c2]
    });
    assert_eq!(
        e,
        "multifd channel 1: stream: page 9 out of range (RAM has 4 pages) at offset 14"
    );
    // A page channel that syncs a pass the others do not.
    let e = feed_multifd_destination(|p| {
        let mut c1 = connect_with(p, &hello(1, 2, 7));
        c1.write_all(&channel_body(|w| w.pass(1).unwrap())).unwrap();
        let mut c2 = connect_with(p, &hello(2, 2, 7));
        c2.write_all(&channel_body(|w| w.pass(2).unwrap())).unwrap();
        vec![c1, c2, connect_with(p, &hello(0, 2, 7))]
    });
    assert!(
        e.starts_with("multifd channel ") && e.contains("while the other channels are at pass"),
        "{e}"
    );
}

#[test]
fn capability_mismatch_fails_the_migration() {
    // Enough non-zero data that the stream cannot fit in the sockets' buffers: a source
    // without a return path learns of the destination's failure only from a write that
    // fails (as QEMU's); a 64-zero-page stream was written whole and `completed` in a
    // loaded run before the destination, which had accepted a page channel first, failed.
    const PAGES: u64 = 8192;
    // Source on, destination off.
    let p = pair(PAGES, (true, 2), (false, 2), false);
    fill(&p.src, PAGES);
    p.migrate();
    wait_status(&p.dm, MigrationStatus::Failed);
    assert_eq!(
        info(&p.dm).error_desc.unwrap(),
        "multifd: a multifd channel arrived, but the multifd capability is not enabled on the destination"
    );
    wait_status(&p.sm, MigrationStatus::Failed);
    assert_eq!(p.src.state(), RunState::Running);
    // Different channel counts.
    let p = pair(PAGES, (true, 2), (true, 3), false);
    fill(&p.src, PAGES);
    p.migrate();
    wait_status(&p.dm, MigrationStatus::Failed);
    assert_eq!(
        info(&p.dm).error_desc.unwrap(),
        "multifd: the source uses 2 channels but multifd-channels is 3 on the destination"
    );
    wait_status(&p.sm, MigrationStatus::Failed);
    assert_eq!(p.src.state(), RunState::Running);
}
