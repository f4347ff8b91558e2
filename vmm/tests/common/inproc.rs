//! Helpers for the in-process migration tests (`migration_*`): QMP arguments, waits with
//! deadlines, a source/destination pair of [`TestHost`]s over a real socket, a dirtying
//! "vCPU", and real-guest VMs (`Vm` + `Guest` running a guest image).
#![allow(dead_code)]

use migtest_qmp::args::Args;
use migtest_qmp::schema::{MigrationInfo, MigrationStatus, RunState, SocketAddress};
use migtest_vmm::guest::{Guest, GuestConfig, GuestImage, SerialConfig};
use migtest_vmm::migration::testing::TestHost;
use migtest_vmm::migration::{Migration, MigrationHost};
use migtest_vmm::vm::Vm;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// QMP arguments from a JSON object.
pub fn args(v: Value) -> Args {
    match v {
        Value::Object(m) => Args::new(Some(m)),
        _ => panic!("arguments must be an object"),
    }
}

/// The `desc` of a command that must fail with a `GenericError`.
pub fn err(r: Result<Value, migtest_qmp::ErrorBody>) -> String {
    let e = r.expect_err("command should fail");
    assert_eq!(e.class, "GenericError");
    e.desc
}

/// The typed `query-migrate` reply.
pub fn info(m: &Migration) -> MigrationInfo {
    serde_json::from_value(m.query_migrate().unwrap()).unwrap()
}

/// Polls `f` until it holds; panics naming `what` after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits (20 s at most) until `m`'s `query-migrate` status is `s`; the panic shows the last
/// reply seen.
pub fn wait_status(m: &Migration, s: MigrationStatus) {
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = info(m);
        if i.status == Some(s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {s}: {last:?}"
        );
        last = Some(i);
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The source's `dirty-sync-count` (0 before the first pass).
pub fn passes(m: &Migration) -> u64 {
    info(m).ram.map(|r| r.dirty_sync_count).unwrap_or(0)
}

/// Sets the `events` capability.
pub fn events_on(m: &Migration) {
    m.set_capabilities(args(
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    ))
    .unwrap();
}

/// A source and a destination (`-incoming defer` + `migrate-incoming` with
/// `exit-on-error: false`) and the URI the source should use.
pub struct Pair {
    pub src: Arc<TestHost>,
    pub sm: Arc<Migration>,
    pub dst: Arc<TestHost>,
    pub dm: Arc<Migration>,
    pub uri: String,
    pub _dir: tempfile::TempDir,
}

impl Pair {
    /// `pages`-page hosts; `src_setup`/`dst_setup` run on each side's migration object before
    /// the destination listens; `tcp` listens on 127.0.0.1 port 0, else a unix socket. The
    /// source has `max-bandwidth` 0.
    pub fn new(
        pages: u64,
        tcp: bool,
        src_setup: impl Fn(&Migration),
        dst_setup: impl Fn(&Migration),
    ) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let (src, sm) = TestHost::new(pages, RunState::Running);
        src_setup(&sm);
        sm.set_parameters(args(json!({"max-bandwidth": 0})))
            .unwrap();
        let (dst, dm) = new_destination(pages);
        dst_setup(&dm);
        let listen = if tcp {
            "tcp:127.0.0.1:0".to_string()
        } else {
            format!("unix:{}", dir.path().join("mig.sock").display())
        };
        dm.migrate_incoming(args(json!({"uri": listen, "exit-on-error": false})))
            .unwrap();
        let uri = match info(&dm).socket_address.unwrap().remove(0) {
            SocketAddress::Inet { host, port } => format!("tcp:{host}:{port}"),
            SocketAddress::Unix { path } => format!("unix:{path}"),
        };
        Pair {
            src,
            sm,
            dst,
            dm,
            uri,
            _dir: dir,
        }
    }

    /// Sets `switchover-hold` on the source.
    pub fn hold(&self) {
        self.sm
            .set_parameters(args(json!({"switchover-hold": true})))
            .unwrap();
    }

    /// `migrate` on the source, to the destination.
    pub fn migrate(&self) {
        self.sm.migrate(args(json!({"uri": self.uri}))).unwrap();
    }

    /// Waits for `completed` on both sides.
    pub fn wait_completed(&self) {
        wait_status(&self.sm, MigrationStatus::Completed);
        wait_status(&self.dm, MigrationStatus::Completed);
    }

    /// `migrate_cancel` on the source; it ends `cancelled` with its guest running.
    pub fn cancel_source_runs(&self) {
        self.sm.migrate_cancel().unwrap();
        wait_status(&self.sm, MigrationStatus::Cancelled);
        assert_eq!(self.src.state(), RunState::Running);
    }

    /// Clears the source's hold, waits for `completed` on both sides, stops the workload `w`
    /// (which must have written), and checks that RAM and device state arrived intact and the
    /// destination guest runs.
    pub fn release_and_check(&self, quit: &AtomicBool, w: std::thread::JoinHandle<u64>) {
        self.sm
            .set_parameters(args(json!({"switchover-hold": false})))
            .unwrap();
        self.wait_completed();
        quit.store(true, Ordering::SeqCst);
        assert!(w.join().unwrap() > 0);
        assert!(
            self.src.ram.snapshot() == self.dst.ram.snapshot(),
            "RAM differs"
        );
        assert_eq!(
            *self.dst.loaded_state.lock().unwrap(),
            Some(self.src.device_state.lock().unwrap().clone())
        );
        assert_eq!(self.dst.state(), RunState::Running);
    }
}

/// A destination host after `-incoming defer`, events on.
pub fn new_destination(pages: u64) -> (Arc<TestHost>, Arc<Migration>) {
    let (dst, dm) = TestHost::new(pages, RunState::Prelaunch);
    dm.start_incoming_from_cmdline("defer").unwrap();
    assert_eq!(dst.state(), RunState::Inmigrate);
    events_on(&dm);
    (dst, dm)
}

/// A fresh destination of `pages` pages ([`new_destination`]) listening on a unix socket
/// `name` in the returned directory: the host, its migration and the URI.
pub fn listening_destination(
    pages: u64,
    name: &str,
) -> (Arc<TestHost>, Arc<Migration>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (dst, dm) = new_destination(pages);
    let uri = format!("unix:{}", dir.path().join(name).display());
    dm.migrate_incoming(args(json!({ "uri": uri }))).unwrap();
    (dst, dm, uri, dir)
}

/// Sets `switchover-hold` and `max-bandwidth` 0 on `sm` and migrates to a bare unix listener
/// (a fake destination the test plays), returned with the directory holding its socket.
pub fn held_migration_to_listener(
    sm: &Migration,
) -> (std::os::unix::net::UnixListener, tempfile::TempDir) {
    sm.set_parameters(args(json!({"switchover-hold": true, "max-bandwidth": 0})))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake-dst");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    sm.migrate(args(json!({"uri": format!("unix:{}", path.display())})))
        .unwrap();
    (l, dir)
}

/// A "vCPU" dirtying pseudo-random pages until told to quit; returns its write count.
pub fn workload(host: Arc<TestHost>, quit: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let pages = host.ram.snapshot().len() as u64 / 4096;
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut n = 0u64;
        while !quit.load(Ordering::SeqCst) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let page = x % pages;
            let off = (x >> 32) % 4088;
            if !host.guest_write(page * 4096 + off, &n.to_le_bytes()) {
                // vCPUs are paused.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            n += 1;
            if n.is_multiple_of(64) {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        n
    })
}

/// A real VM with `ram` bytes running the `sweep` image, and its migration object.
pub fn sweep_vm(ram: u64, initial: RunState, autostart: bool) -> (Arc<Vm>, Arc<Migration>) {
    let image =
        GuestImage::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/sweep.toml"))
            .expect("sweep image");
    let guest = Guest::new(GuestConfig {
        ram_size: ram,
        vcpus: 1,
        backing: Default::default(),
        image,
        serial: SerialConfig::None,
    })
    .expect("guest");
    let vm = Arc::new(Vm::new(guest, None, initial, autostart));
    let host: Arc<dyn MigrationHost> = vm.clone();
    let m = Arc::new(Migration::new(Arc::downgrade(&host)));
    (vm, m)
}

/// Two real `sweep` VMs for postcopy: the source's guest running, the destination
/// `inmigrate` (autostart as `dst_autostart`) listening on a unix socket in `dir`, both with
/// the capabilities `caps` (a `migrate-set-capabilities` list) set.
pub struct VmPair {
    pub src: Arc<Vm>,
    pub sm: Arc<Migration>,
    pub dst: Arc<Vm>,
    pub dm: Arc<Migration>,
    /// Where the destination listens.
    pub uri: String,
    pub dir: tempfile::TempDir,
}

impl VmPair {
    /// [`VmPair`] with `ram` bytes a guest.
    pub fn listening(ram: u64, dst_autostart: bool, caps: Value) -> VmPair {
        let dir = tempfile::tempdir().unwrap();
        let (src, sm) = sweep_vm(ram, RunState::Paused, true);
        src.vm_start();
        let (dst, dm) = sweep_vm(ram, RunState::Inmigrate, dst_autostart);
        for m in [&sm, &dm] {
            m.set_capabilities(args(json!({ "capabilities": caps })))
                .unwrap();
        }
        let uri = format!("unix:{}", dir.path().join("mig.sock").display());
        dm.start_incoming_from_cmdline(&uri).unwrap();
        VmPair {
            src,
            sm,
            dst,
            dm,
            uri,
            dir,
        }
    }
}

/// The migration status (`info()`, no JSON round trip).
pub fn status(m: &Migration) -> Option<MigrationStatus> {
    m.info().status
}

/// The source's events of a precopy migration that completed.
pub const SOURCE_COMPLETED_TRACE: [&str; 4] = [
    "MIGRATION:setup",
    "MIGRATION:active",
    "STOP",
    "MIGRATION:completed",
];

/// After a completed migration between two real VMs: the device states match, then the
/// destination guest starts and runs; both guests are paused at the end.
pub fn device_states_match_then_destination_runs(src: &Vm, dst: &Vm) {
    assert_eq!(
        serde_json::to_value(src.guest().save_state().unwrap()).unwrap(),
        serde_json::to_value(dst.guest().save_state().unwrap()).unwrap()
    );
    dst.vm_start();
    assert_eq!(dst.runstate(), RunState::Running);
    src.guest().pause();
    dst.guest().pause();
}
