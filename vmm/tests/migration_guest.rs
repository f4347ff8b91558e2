//! Live migration between two real in-process VMs (`Vm` + `Guest` with
//! vCPU threads running the `sweep` A-B workload), over a unix socket.

use migtest_qmp::args::Args;
use migtest_qmp::schema::{MigrationStatus, RunState};
use migtest_vmm::guest::{check_ab_invariant, Guest, GuestConfig, GuestImage, SerialConfig};
use migtest_vmm::migration::{Migration, MigrationHost};
use migtest_vmm::vm::Vm;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn args(v: Value) -> Args {
    match v {
        Value::Object(m) => Args::new(Some(m)),
        _ => panic!("arguments must be an object"),
    }
}

fn vm(initial: RunState, autostart: bool) -> (Arc<Vm>, Arc<Migration>) {
    let image =
        GuestImage::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/sweep.toml"))
            .expect("sweep image");
    let guest = Guest::new(GuestConfig {
        ram_size: 16 * MIB,
        vcpus: 1,
        image,
        serial: SerialConfig::None,
    })
    .expect("guest");
    let vm = Arc::new(Vm::new(guest, None, initial, autostart));
    let host: Arc<dyn MigrationHost> = vm.clone();
    let m = Arc::new(Migration::new(Arc::downgrade(&host)));
    (vm, m)
}

fn status(m: &Migration) -> Option<MigrationStatus> {
    m.info().status
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sweep_guest_migrates_with_hold_and_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let (src, sm) = vm(RunState::Paused, true);
    src.vm_start();
    // Destination with -S: it ends paused so its memory can be compared.
    let (dst, dm) = vm(RunState::Inmigrate, false);
    let uri = format!("unix:{}", dir.path().join("mig.sock").display());
    dm.start_incoming_from_cmdline(&uri).unwrap();

    sm.set_parameters(args(json!({"switchover-hold": true, "max-bandwidth": 0})))
        .unwrap();
    sm.migrate(args(json!({"uri": uri}))).unwrap();
    wait("several passes", || {
        sm.info().ram.map(|r| r.dirty_sync_count).unwrap_or(0) >= 4
    });
    // Held: still active, the guest still runs on the source.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(status(&sm), Some(MigrationStatus::Active));
    assert_eq!(src.runstate(), RunState::Running);
    sm.set_parameters(args(json!({"switchover-hold": false})))
        .unwrap();
    wait("source completed", || {
        status(&sm) == Some(MigrationStatus::Completed)
    });
    wait("destination completed", || {
        status(&dm) == Some(MigrationStatus::Completed)
    });

    assert_eq!(src.runstate(), RunState::Postmigrate);
    assert_eq!(dst.runstate(), RunState::Paused);
    let (s, d) = (src.guest().ram(), dst.guest().ram());
    assert_eq!(s.digest(), d.digest(), "guest RAM differs after migration");
    let (start, end) = dst.guest().config().image.test_range(16 * MIB);
    let ab = check_ab_invariant(d.page_first_bytes(start, end)).expect("A-B invariant");
    assert!(ab.pages > 0);
    assert_eq!(
        serde_json::to_value(src.guest().save_state().unwrap()).unwrap(),
        serde_json::to_value(dst.guest().save_state().unwrap()).unwrap()
    );
    // The destination guest runs on after `cont`-like start.
    dst.vm_start();
    assert_eq!(dst.runstate(), RunState::Running);
    src.guest().pause();
    dst.guest().pause();
}
