//! Whether guest RAM is advised for transparent huge pages.
//!
//! QEMU advises `MADV_HUGEPAGE` on all guest RAM, so a destination takes one
//! fault per 2 MiB it loads rather than one per 4 KiB page. With this host
//! kind's THP policy (`defrag=madvise`), an advised fault that finds no
//! free 2 MiB block compacts memory synchronously; on a host whose free
//! memory was fragmented that made a filled 4 GiB destination load 1.7x
//! slower (docs/performance.md, rounds two and three; the sixth round has
//! the gate). So migtest-vmm advises huge pages only when the host's free
//! 2 MiB (or larger) blocks cover the whole RAM when the VM is built, read
//! from `/proc/buddyinfo`. The cost: a guest that writes sparsely makes a
//! whole 2 MiB resident per write, as under QEMU.

/// Bytes in a huge page (x86-64's PMD size).
const HUGE_PAGE: u64 = 2 << 20;
/// The buddy allocator's order of a 2 MiB block of 4 KiB pages.
const HUGE_ORDER: usize = 9;

/// Whether RAM of `size` bytes should be advised for huge pages: it holds
/// at least one huge page, and the host's free 2 MiB blocks (from
/// `/proc/buddyinfo`) cover all of it. Unknown (no such file, another
/// format) means no.
pub(super) fn advise(size: u64) -> bool {
    size >= HUGE_PAGE
        && std::fs::read_to_string("/proc/buddyinfo")
            .ok()
            .and_then(|text| free_huge_blocks(&text))
            .is_some_and(|blocks| blocks.saturating_mul(HUGE_PAGE) >= size)
}

/// Free 2 MiB blocks in a `/proc/buddyinfo` text: each line
/// `Node N, zone NAME c0 c1 ... c10` counts free blocks of 2^k pages; a
/// block of order k >= 9 holds 2^(k-9) huge pages. None if a line does not
/// parse.
fn free_huge_blocks(buddyinfo: &str) -> Option<u64> {
    let mut blocks = 0u64;
    for line in buddyinfo.lines().filter(|l| !l.trim().is_empty()) {
        let counts = line.split_once("zone")?.1.split_whitespace().skip(1);
        for (order, count) in counts.enumerate() {
            let count: u64 = count.parse().ok()?;
            if order >= HUGE_ORDER {
                let per_block = 1u64.checked_shl((order - HUGE_ORDER) as u32)?;
                blocks = blocks.saturating_add(count.saturating_mul(per_block));
            }
        }
    }
    Some(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 
Node 0, zone    DMA32    770    828   1054    866    571    266    103     62     50     58    663 
Node 0, zone   Normal  21579  39204  34256  19761   9944   4715   2506   2091    875    666   1951 
";

    #[test]
    fn counts_order_nine_and_ten_blocks_of_every_zone() {
        // order 9: 1 + 58 + 666; order 10 (two huge pages each): 3 + 663 + 1951
        assert_eq!(free_huge_blocks(SAMPLE), Some(725 + 2 * (3 + 663 + 1951)));
    }

    #[test]
    fn fewer_orders_and_malformed_lines() {
        assert_eq!(free_huge_blocks("Node 0, zone Normal 5 4 3\n"), Some(0));
        assert_eq!(free_huge_blocks(""), Some(0));
        assert_eq!(free_huge_blocks("Node 0, zone Normal 1 x 3\n"), None);
        assert_eq!(free_huge_blocks("something else\n"), None);
        // Absurd counts saturate; an order beyond 64 bits is not buddyinfo.
        let many = format!("Node 0, zone N {}{}\n", "0 ".repeat(10), u64::MAX);
        assert_eq!(free_huge_blocks(&many), Some(u64::MAX));
        let deep = format!("Node 0, zone N {}1\n", "0 ".repeat(80));
        assert_eq!(free_huge_blocks(&deep), None);
    }

    #[test]
    fn small_ram_is_never_advised() {
        assert!(!advise(HUGE_PAGE - 4096));
    }
}
