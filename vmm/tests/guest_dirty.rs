//! Dirty tracking against an independent write log, for every workload.

mod guest_support;

use std::collections::BTreeSet;
use std::time::Duration;

use guest_support::{config, image, new_logged, MIB};
use migtest_vmm::guest::dirty::iter_pages;
use migtest_vmm::guest::SerialConfig;

#[test]
fn every_written_page_is_dirty_and_nothing_else() {
    for name in ["sweep", "hotset", "rate", "random", "idle"] {
        for vcpus in [1, 2] {
            let (guest, log) = new_logged(config(image(name), 64 * MIB, vcpus, SerialConfig::None));
            let ram = guest.ram();

            // From boot: the bitmap holds exactly the pages written.
            guest.resume();
            std::thread::sleep(Duration::from_millis(60));
            guest.pause();
            let written = log.take();
            let dirty: BTreeSet<u64> = iter_pages(&ram.dirty().take()).collect();
            assert_eq!(dirty, written, "{name} smp {vcpus}: first interval");

            // After clearing: again exactly the pages written since (run
            // until something was written, unless the workload is idle).
            guest.resume();
            std::thread::sleep(Duration::from_millis(100));
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while name != "idle" && !log.any(|_| true) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            guest.pause();
            let written = log.take();
            let dirty: BTreeSet<u64> = iter_pages(&ram.dirty().take()).collect();
            assert_eq!(dirty, written, "{name} smp {vcpus}: after clear");
            if name == "idle" {
                assert!(written.is_empty());
            } else {
                assert!(!written.is_empty(), "{name} smp {vcpus}: wrote nothing");
            }

            // While paused nothing is marked.
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(ram.dirty().count(), 0);
            assert!(log.take().is_empty());
            guest.shutdown();
        }
    }
}

#[test]
fn secondary_vcpus_write_only_their_region() {
    for name in ["sweep", "rate", "random"] {
        let img = image(name);
        let layout = img.layout(64 * MIB, 3).unwrap();
        let (test_start, test_end) = img.test_range(64 * MIB);
        let (guest, log) = new_logged(config(img, 64 * MIB, 3, SerialConfig::None));
        let page = 4096;
        let in_plan = |p: u64, i: usize| {
            let plan = &layout.vcpus[i];
            p * page >= plan.start && p * page < plan.end
        };
        guest.resume();
        // Run until every vCPU has written (a loaded host may schedule a
        // vCPU thread late), with a generous deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        std::thread::sleep(Duration::from_millis(150));
        while !(0..3).all(|i| log.any(|p| in_plan(p, i))) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        guest.pause();
        let written = log.take();
        for &p in &written {
            assert!(
                (0..3).any(|i| in_plan(p, i)),
                "{name}: page {p} written outside every vCPU's range"
            );
        }
        for i in 1..3 {
            assert!(
                written.iter().any(|&p| in_plan(p, i)),
                "{name}: vCPU {i} wrote nothing"
            );
        }
        assert!(written
            .iter()
            .any(|&p| p * page >= test_start && p * page < test_end));
    }
}
