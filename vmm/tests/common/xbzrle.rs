//! Shared by the XBZRLE test binaries (`migration_xbzrle`, and
//! `migration_xbzrle_fault`, which runs with a planted fault on).

use super::inproc::{args, info, passes, wait_until, Pair};
use migtest_qmp::schema::MigrationStatus;
use migtest_vmm::migration::testing::TestHost;
use migtest_vmm::migration::Migration;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub fn caps(m: &Migration, list: Value) -> Result<Value, migtest_qmp::ErrorBody> {
    m.set_capabilities(args(json!({ "capabilities": list })))
}

/// Hot pages whose first bytes change a little, many times a second. With
/// `scribble` set, the rest of each hot page holds a pattern in every other
/// byte (re-sending it overflows: too many runs), else zero; the writer
/// rewrites it when the flag changes.
pub fn hot_writer(
    host: Arc<TestHost>,
    quit: Arc<AtomicBool>,
    scribble: Option<Arc<AtomicBool>>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut round = 0u64;
        let mut body_on = false;
        while !quit.load(Ordering::SeqCst) {
            let want = scribble.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
            let body: Option<Vec<u8>> = (want != body_on).then(|| {
                (0..4088u64)
                    .map(|i| {
                        if want && i % 2 == 0 {
                            (i + round) as u8 | 1
                        } else {
                            0
                        }
                    })
                    .collect()
            });
            for p in 0..16u64 {
                let at = p * 4096 * 8;
                let ran = host.guest_write(at, &round.to_le_bytes());
                if let Some(b) = &body {
                    host.guest_write(at + 8, b);
                }
                if !ran {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            body_on = want;
            round += 1;
            std::thread::sleep(Duration::from_micros(300));
        }
        round
    })
}

/// A pair of `pages`-page hosts over a unix socket, the source with the
/// `xbzrle` capability, `switchover-hold` set and `max-bandwidth` 0.
pub fn held_xbzrle_pair(pages: u64) -> Pair {
    Pair::new(
        pages,
        false,
        |sm| {
            caps(sm, json!([{"capability": "xbzrle", "state": true}])).unwrap();
            sm.set_parameters(args(json!({"switchover-hold": true})))
                .unwrap();
        },
        |_| {},
    )
}

/// Waits until `m` made `n` more passes than now.
fn more_passes(m: &Migration, n: u64) {
    let target = passes(m) + n;
    wait_until(&format!("pass {target}"), 30, || passes(m) >= target);
}

/// A held migration of 256 pages with XBZRLE whose hot pages change a
/// little (encoded), then get the pattern (overflow: sent whole), then lose
/// it again and change a little (encoded against the page as sent whole);
/// then released and completed. Each phase lasts 3 passes, so every hot
/// page is sent in it. Returns the source's and the destination's RAM.
pub fn scribbled_migration() -> (Vec<u8>, Vec<u8>) {
    let p = held_xbzrle_pair(256);
    let (src, sm, dm) = (&p.src, &p.sm, &p.dm);
    let quit = Arc::new(AtomicBool::new(false));
    let scribble = Arc::new(AtomicBool::new(false));
    let w = hot_writer(src.clone(), quit.clone(), Some(scribble.clone()));
    sm.migrate(args(json!({ "uri": p.uri }))).unwrap();
    wait_until("pass 4", 30, || passes(sm) >= 4);
    more_passes(sm, 3);
    scribble.store(true, Ordering::SeqCst);
    more_passes(sm, 3);
    scribble.store(false, Ordering::SeqCst);
    more_passes(sm, 3);
    sm.set_parameters(args(json!({"switchover-hold": false})))
        .unwrap();
    wait_until("completed", 30, || {
        info(sm).status == Some(MigrationStatus::Completed)
            && dm.incoming_status() == MigrationStatus::Completed
    });
    quit.store(true, Ordering::SeqCst);
    w.join().unwrap();
    let x = info(sm).xbzrle_cache.unwrap();
    assert!(x.overflow >= 16 && x.pages > x.overflow, "{x:?}");
    (src.ram.snapshot(), p.dst.ram.snapshot())
}
