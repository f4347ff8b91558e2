//! The sweep workload satisfies QEMU's A-B invariant whenever it is paused.

mod guest_support;

use std::time::{Duration, Instant};

use guest_support::{config, image, wait_for_serial, MIB};
use migtest_vmm::guest::{check_ab_invariant, Guest, GuestImage, SerialConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn sweep_fast() -> GuestImage {
    // The shipped sweep without a pass delay, so nearly every pause lands
    // mid-pass. A pass over this range takes well under a millisecond; with
    // any rest between passes, the time a loaded machine takes to notice the
    // written pages (and to pause) decides whether pauses land mid-pass, and
    // a 100 µs rest once let only 13 of 150 do so in CI.
    let mut img = image("sweep");
    img.workload.spec =
        migtest_vmm::guest::image::WorkloadSpec::Sweep(migtest_vmm::guest::image::SweepParams {
            pass_delay_us: 0,
            fill: false,
        });
    img
}

/// Waits (20 s deadline) until the running guest has dirtied `pages` pages.
fn wait_for_writes(guest: &Guest, pages: u64, iteration: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while guest.ram().dirty().count() < pages {
        assert!(
            Instant::now() < deadline,
            "iteration {iteration}: the sweep wrote {} of {pages} pages in 20 s",
            guest.ram().dirty().count()
        );
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn run(vcpus: u32, iterations: u32, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serial");
    let img = sweep_fast();
    let (start, end) = img.test_range(64 * MIB);
    let guest = Guest::new(config(
        img,
        64 * MIB,
        vcpus,
        SerialConfig::File(path.clone()),
    ))
    .unwrap();
    guest.resume();
    wait_for_serial(&path, b'B', 1, Duration::from_secs(20));
    guest.pause();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut edges = 0;
    let mut last_first = None;
    let mut first_changes = 0;
    let pages = (end - start) / 4096;
    for i in 0..iterations {
        // Pause after a random number of pages written, not after a random
        // time: on a loaded machine the vCPU may not run at all in a short
        // sleep, and every pause would then land where the last one did.
        let writes = rng.gen_range(1..pages);
        guest.ram().dirty().take();
        guest.resume();
        wait_for_writes(&guest, writes, i);
        guest.pause();
        let summary = check_ab_invariant(guest.ram().page_first_bytes(start, end))
            .unwrap_or_else(|v| panic!("smp {vcpus}, iteration {i}: {v}"));
        assert_eq!(summary.pages, (end - start) / 4096);
        edges += u32::from(summary.edge.is_some());
        if last_first.is_some_and(|f| f != summary.first) {
            first_changes += 1;
        }
        last_first = Some(summary.first);
    }
    eprintln!("smp {vcpus}: {edges} of {iterations} pauses mid-pass, first page changed {first_changes} times");
    // The test must have caught passes mid-way and seen the sweep advance.
    assert!(edges > iterations / 10, "only {edges} mid-pass pauses");
    assert!(
        first_changes > iterations / 10,
        "sweep barely advanced: {first_changes}"
    );
    // Bytes outside the range (but below the secondary region) are untouched.
    assert_eq!(guest.ram().read_u8(start - 4096).unwrap(), 0);
    assert_eq!(guest.ram().read_u8(start + 1).unwrap(), 0);
}

#[test]
fn invariant_holds_at_random_pauses_smp1() {
    run(1, 150, 1);
}

#[test]
fn invariant_holds_at_random_pauses_smp2() {
    run(2, 150, 2);
}
