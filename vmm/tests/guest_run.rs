//! Run control: pause really freezes RAM, resume continues, sleeps are
//! interrupted promptly, state calls need a paused guest.

mod guest_support;

use std::time::{Duration, Instant};

use guest_support::{config, image, wait_for_serial, MIB};
use migtest_vmm::guest::{Guest, GuestError, GuestImage, SerialConfig};

/// Polls `cond` every 20 ms for up to 20 s (a loaded host may run a vCPU
/// thread late); the caller asserts afterwards.
fn wait_until(cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pause_freezes_ram_and_resume_continues() {
    for name in ["sweep", "hotset", "rate", "random"] {
        let guest = Guest::new(config(image(name), 64 * MIB, 2, SerialConfig::None)).unwrap();
        assert!(!guest.is_running());
        // vCPUs start parked: nothing happens before resume
        let d0 = guest.ram().digest();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(guest.ram().digest(), d0, "{name}: wrote before resume");

        guest.resume();
        assert!(guest.is_running());
        wait_until(|| guest.ram().digest() != d0);
        guest.pause();
        assert!(!guest.is_running());
        let d1 = guest.ram().digest();
        assert_ne!(d1, d0, "{name}: no progress while running");
        let dirty = guest.ram().dirty().count();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(guest.ram().digest(), d1, "{name}: RAM changed while paused");
        assert_eq!(
            guest.ram().dirty().count(),
            dirty,
            "{name}: marks while paused"
        );

        guest.resume();
        wait_until(|| guest.ram().digest() != d1);
        guest.pause();
        assert_ne!(guest.ram().digest(), d1, "{name}: no progress after resume");
        guest.shutdown();
    }
}

#[test]
fn idle_never_writes_but_prints_a() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serial");
    let guest = Guest::new(config(
        image("idle"),
        64 * MIB,
        2,
        SerialConfig::File(path.clone()),
    ))
    .unwrap();
    guest.resume();
    wait_for_serial(&path, b'A', 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(50));
    guest.pause();
    assert_eq!(guest.ram().dirty().count(), 0);
    assert_eq!(std::fs::read(&path).unwrap(), b"A");
    assert_eq!(guest.save_state().unwrap().serial.bytes_emitted, 1);
}

#[test]
fn pause_interrupts_long_sleeps_promptly() {
    let img = GuestImage::parse(
        "name = \"slow\"\ndescription = \"d\"\n[workload]\nkind = \"sweep\"\nend = \"2M\"\npass-delay = 10000000\n[secondary]\nkind = \"hotset\"\nround-delay = 10000000\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serial");
    let guest = Guest::new(config(img, 64 * MIB, 3, SerialConfig::File(path.clone()))).unwrap();
    for round in 1..=3 {
        guest.resume();
        // the first pass of 256 pages is quick, then the sweep sleeps 10 s
        if round == 1 {
            wait_for_serial(&path, b'B', 1, Duration::from_secs(10));
        }
        std::thread::sleep(Duration::from_millis(20));
        let begin = Instant::now();
        guest.pause();
        let took = begin.elapsed();
        assert!(took < Duration::from_secs(1), "pause took {took:?}");
    }
    // the interrupted rest restarts; no second pass happened
    assert_eq!(std::fs::read(&path).unwrap(), b"AB");
}

#[test]
fn state_calls_need_a_paused_guest() {
    let guest = Guest::new(config(image("hotset"), 64 * MIB, 1, SerialConfig::None)).unwrap();
    let state = guest.save_state().unwrap();
    guest.resume();
    assert!(matches!(guest.save_state(), Err(GuestError::NotPaused(_))));
    assert!(matches!(
        guest.load_state(state.clone()),
        Err(GuestError::NotPaused(_))
    ));
    assert!(matches!(guest.halted(), Err(GuestError::NotPaused(_))));
    guest.pause();
    guest.pause(); // idempotent
    assert!(guest.save_state().is_ok());
    assert_eq!(guest.halted().unwrap(), vec![None]);
}

#[test]
fn vcpu_threads_are_named_and_config_is_checked() {
    let guest = Guest::new(config(image("rate"), 64 * MIB, 3, SerialConfig::None)).unwrap();
    // pause() waits until every vCPU thread has started and parked
    guest.pause();
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    for want in ["vcpu0", "vcpu1", "vcpu2"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    guest.shutdown();

    for (ram, vcpus) in [
        (64 * MIB, 0),
        (64 * MIB, 65),
        (64 * MIB + 1, 1),
        (MIB / 2, 1),
    ] {
        let err = Guest::new(config(image("sweep"), ram, vcpus, SerialConfig::None));
        assert!(err.is_err(), "ram {ram} vcpus {vcpus}");
    }
    let err = Guest::new(config(
        image("sweep"),
        64 * MIB,
        1,
        SerialConfig::File("/nonexistent/dir/serial".into()),
    ))
    .unwrap_err();
    assert!(
        err.to_string().starts_with("cannot open serial output"),
        "{err}"
    );
}

#[test]
fn shutdown_of_running_guest_joins() {
    let guest = Guest::new(config(image("random"), 64 * MIB, 2, SerialConfig::None)).unwrap();
    guest.resume();
    std::thread::sleep(Duration::from_millis(30));
    let begin = Instant::now();
    guest.shutdown();
    assert!(begin.elapsed() < Duration::from_secs(2));
}
