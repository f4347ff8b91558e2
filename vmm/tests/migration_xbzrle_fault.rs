//! The planted fault `xbzrle-cache-stale` (feature `fault-injection`): a
//! page sent whole after an overflow keeps its old cached copy, so the next
//! small change is encoded against a stale base and the destination page
//! ends wrong. A migration of pages that overflow between small changes
//! must end with memory that differs, found by comparing it. Its own test
//! binary: the fault is switched on for the whole process.

#![cfg(feature = "fault-injection")]

mod common;

use migtest_vmm::migration::faults;

#[test]
fn stale_cache_is_found_by_the_memory_comparison() {
    faults::enable("xbzrle-cache-stale").unwrap();
    let (a, b) = common::xbzrle::scribbled_migration();
    let wrong: Vec<usize> = (0..a.len() / 4096)
        .filter(|p| a[p * 4096..(p + 1) * 4096] != b[p * 4096..(p + 1) * 4096])
        .collect();
    println!("pages that differ with the stale cache: {wrong:?}");
    assert!(!wrong.is_empty(), "the planted stale cache went unnoticed");
    assert!(
        wrong.iter().all(|p| p % 8 == 0 && *p < 128),
        "only hot pages can be wrong: {wrong:?}"
    );
}
