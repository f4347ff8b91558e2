//! Memory checks: QEMU's A-B guest-RAM invariant over a memory dump (the
//! invariant itself is [`migtest_vmm::guest::abcheck`], defined once for both
//! backends and the VMM) and byte-exact comparison.

use std::fmt;

use migtest_vmm::guest::abcheck::scan_ab_invariant;

/// Guest page size used by the checks.
pub const PAGE_SIZE: u64 = 4096;

/// How many bad pages a report lists.
pub const REPORT_FIRST: usize = 10;

/// One page that broke the A-B invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPage {
    /// Guest physical address of the page.
    pub address: u64,
    /// First byte of the range.
    pub first_byte: u8,
    /// The expected value (last byte seen).
    pub last_byte: u8,
    /// The byte found.
    pub current: u8,
    /// Whether the one allowed edge had been passed.
    pub hit_edge: bool,
}

impl fmt::Display for BadPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Memory content inconsistency at {:x} first_byte = {:x} last_byte = {:x} current = {:x} hit_edge = {:x}",
            self.address, self.first_byte, self.last_byte, self.current, self.hit_edge as u8
        )
    }
}

/// Failure of [`check_guests_ram`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RamCheckError {
    /// The dump does not cover the range.
    #[error("memory dump of {len} bytes does not cover range {start:#x}..{end:#x}")]
    Short {
        /// Dump length.
        len: usize,
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
    },
    /// Pages broke the invariant.
    #[error("{}", format_bad(.first, *.bad))]
    Inconsistent {
        /// Number of bad pages.
        bad: usize,
        /// The first [`REPORT_FIRST`] of them.
        first: Vec<BadPage>,
    },
}

fn format_bad(first: &[BadPage], bad: usize) -> String {
    let mut s = first
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    if bad > first.len() {
        s.push_str(&format!("\nand in another {} pages", bad - first.len()));
    }
    s
}

/// What a passing check saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamCheck {
    /// The first byte of the range.
    pub first_byte: u8,
    /// Whether the guest stopped mid-pass (the one allowed step).
    pub hit_edge: bool,
    /// Pages checked.
    pub pages: u64,
}

/// QEMU's `check_guests_ram` over a memory dump: `bytes[0]` is the byte at
/// guest address `range_start`; pages `range_start..range_end` (4 KiB) are
/// checked by their first byte. Every page must equal the previous one,
/// except once a page may be exactly one less (mod 256): the guest stopped
/// mid-pass. See [`check_guests_ram_detail`] for what a passing check saw.
pub fn check_guests_ram(
    bytes: &[u8],
    range_start: u64,
    range_end: u64,
) -> Result<(), RamCheckError> {
    check_guests_ram_detail(bytes, range_start, range_end).map(drop)
}

/// [`check_guests_ram`], returning the first byte, whether the edge was
/// hit and the number of pages checked.
pub fn check_guests_ram_detail(
    bytes: &[u8],
    range_start: u64,
    range_end: u64,
) -> Result<RamCheck, RamCheckError> {
    let span = range_end.saturating_sub(range_start);
    // The first byte of the last page in the range must be in the dump.
    if span == 0 || (bytes.len() as u64) < (span - 1) / PAGE_SIZE * PAGE_SIZE + 1 {
        return Err(RamCheckError::Short {
            len: bytes.len(),
            start: range_start,
            end: range_end,
        });
    }
    let first_bytes = (0..span)
        .step_by(PAGE_SIZE as usize)
        .map(|off| bytes[off as usize]);
    let scan = scan_ab_invariant(first_bytes, REPORT_FIRST);
    if scan.bad > 0 {
        let first = scan
            .first_bad
            .iter()
            .map(|b| BadPage {
                address: range_start + b.index * PAGE_SIZE,
                first_byte: scan.first,
                last_byte: b.expected,
                current: b.found,
                hit_edge: b.after_edge,
            })
            .collect();
        return Err(RamCheckError::Inconsistent {
            bad: scan.bad as usize,
            first,
        });
    }
    Ok(RamCheck {
        first_byte: scan.first,
        hit_edge: scan.edge.is_some(),
        pages: scan.pages,
    })
}

/// One differing page found by [`compare_memory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageDiff {
    /// Guest address of the page.
    pub page: u64,
    /// Offset of the first differing byte in the page.
    pub offset: u64,
    /// Source byte there.
    pub src: u8,
    /// Destination byte there.
    pub dst: u8,
}

/// Source and destination memory differ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MemoryMismatch {
    /// Pages compared.
    pub pages: u64,
    /// Pages that differ.
    pub differing_pages: u64,
    /// The first few.
    pub first: Vec<PageDiff>,
    /// Lengths, when they differ.
    pub lengths: Option<(usize, usize)>,
}

impl fmt::Display for MemoryMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((s, d)) = self.lengths {
            write!(
                f,
                "memory dumps differ in length: source {s}, destination {d} bytes; "
            )?;
        }
        write!(f, "{} of {} pages differ", self.differing_pages, self.pages)?;
        for d in &self.first {
            write!(
                f,
                "\n  page {:#x} +{:#x}: source {:#04x} destination {:#04x}",
                d.page, d.offset, d.src, d.dst
            )?;
        }
        if self.differing_pages > self.first.len() as u64 {
            write!(
                f,
                "\n  and {} more",
                self.differing_pages - self.first.len() as u64
            )?;
        }
        Ok(())
    }
}

/// Compares two dumps that start at guest address `base`, page by page.
pub fn compare_memory(src: &[u8], dst: &[u8], base: u64) -> Result<(), MemoryMismatch> {
    let len = src.len().min(dst.len());
    let ps = PAGE_SIZE as usize;
    let mut differing = 0u64;
    let mut first = Vec::new();
    let mut pages = 0u64;
    for (i, (a, b)) in src[..len].chunks(ps).zip(dst[..len].chunks(ps)).enumerate() {
        pages += 1;
        if a != b {
            differing += 1;
            if first.len() < REPORT_FIRST {
                let off = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
                first.push(PageDiff {
                    page: base + (i * ps) as u64,
                    offset: off as u64,
                    src: a[off],
                    dst: b[off],
                });
            }
        }
    }
    let lengths = (src.len() != dst.len()).then_some((src.len(), dst.len()));
    if differing == 0 && lengths.is_none() {
        return Ok(());
    }
    Err(MemoryMismatch {
        pages,
        differing_pages: differing,
        first,
        lengths,
    })
}

/// The xxh3-64 digest used for memory digests.
pub fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(first_bytes: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; first_bytes.len() * PAGE_SIZE as usize];
        for (i, b) in first_bytes.iter().enumerate() {
            m[i * PAGE_SIZE as usize] = *b;
            m[i * PAGE_SIZE as usize + 1] = 0xaa; // other bytes do not matter
        }
        m
    }

    fn check(first_bytes: &[u8]) -> Result<RamCheck, RamCheckError> {
        let m = mem(first_bytes);
        check_guests_ram_detail(&m, 0x100000, 0x100000 + m.len() as u64)
    }

    #[test]
    fn uniform_passes() {
        let r = check(&[5; 8]).unwrap();
        assert!(!r.hit_edge);
        assert_eq!(r.pages, 8);
    }

    #[test]
    fn one_edge_passes_including_wrap() {
        assert!(check(&[6, 6, 5, 5]).unwrap().hit_edge);
        assert!(check(&[0, 0, 255, 255]).unwrap().hit_edge);
    }

    #[test]
    fn two_edges_fail() {
        let e = check(&[7, 6, 5]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Memory content inconsistency at 102000 first_byte = 7 last_byte = 6 current = 5 hit_edge = 1"
        );
    }

    #[test]
    fn increase_fails_and_reports_ten() {
        let mut v = vec![1u8; 20];
        for x in v.iter_mut().skip(5) {
            *x = 9;
        }
        v[2] = 3;
        // page 2 is bad, pages 5.. all bad (last stays 1)
        let RamCheckError::Inconsistent { bad, first } = check(&v).unwrap_err() else {
            panic!()
        };
        assert_eq!(bad, 16);
        assert_eq!(first.len(), 10);
        assert_eq!(first[0].address, 0x102000);
        let msg = check(&v).unwrap_err().to_string();
        assert!(msg.ends_with("and in another 6 pages"), "{msg}");
    }

    proptest::proptest! {
        /// The dump adapter agrees with the invariant over the first bytes on
        /// pass/fail, the edge and the first bad page's address.
        #[test]
        fn agrees_with_vmm_abcheck(
            base in proptest::prelude::any::<u8>(),
            steps in proptest::collection::vec(
                proptest::prop_oneof![6 => proptest::strategy::Just(0u8), 2 => proptest::strategy::Just(255u8), 1 => proptest::prelude::any::<u8>()],
                1..40,
            ),
        ) {
            let mut bytes = vec![base];
            for s in &steps {
                let last = *bytes.last().unwrap();
                bytes.push(last.wrapping_add(*s));
            }
            let ours = check(&bytes);
            let theirs = migtest_vmm::guest::abcheck::check_ab_invariant(bytes.iter().copied());
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => {
                    proptest::prop_assert_eq!(a.hit_edge, b.edge.is_some());
                    proptest::prop_assert_eq!(a.pages, b.pages);
                }
                (Err(RamCheckError::Inconsistent { first, .. }), Err(v)) => {
                    let index = match v {
                        migtest_vmm::guest::abcheck::AbViolation::Mismatch { index, .. }
                        | migtest_vmm::guest::abcheck::AbViolation::SecondEdge { index, .. } => *index,
                    };
                    proptest::prop_assert_eq!(first[0].address, 0x100000 + index * PAGE_SIZE);
                }
                _ => proptest::prop_assert!(false, "disagree on {:?}: {:?} vs {:?}", bytes, ours, theirs),
            }
        }
    }

    #[test]
    fn short_dump() {
        assert!(matches!(
            check_guests_ram(&[0; 10], 0, 8192),
            Err(RamCheckError::Short { .. })
        ));
    }

    #[test]
    fn compare() {
        let a = mem(&[1, 2, 3, 4]);
        let mut b = a.clone();
        assert!(compare_memory(&a, &b, 0).is_ok());
        b[4096 + 17] = 9;
        b[3 * 4096] = 0;
        let e = compare_memory(&a, &b, 0x1000).unwrap_err();
        assert_eq!(e.differing_pages, 2);
        assert_eq!(
            e.first[0],
            PageDiff {
                page: 0x2000,
                offset: 17,
                src: 0,
                dst: 9
            }
        );
        assert_eq!(
            e.to_string(),
            "2 of 4 pages differ\n  page 0x2000 +0x11: source 0x00 destination 0x09\n  page 0x4000 +0x0: source 0x04 destination 0x00"
        );
        let e = compare_memory(&a, &a[..4096], 0).unwrap_err();
        assert_eq!(e.lengths, Some((4 * 4096, 4096)));
    }
}
