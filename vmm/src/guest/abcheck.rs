//! QEMU's A-B guest memory invariant (`check_guests_ram` in
//! `tests/qtest/migration-test.c`), as pure functions: the one definition,
//! used by the VMM's tests and by the harness (`migtest::checks`) for both
//! backends.
//!
//! The sweep workload increments the first byte of every page of its range
//! in address order, pass after pass. Stopped at any point, walking those
//! bytes in address order must show one value, except that at most once the
//! value may drop by one (the page where the interrupted pass stopped):
//! starting with `last` = the first byte, each byte must equal `last`, or at
//! most once be `b` with `(b + 1) % 256 == last`, after which `last = b`.

use thiserror::Error;

/// A violation of the A-B invariant.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AbViolation {
    /// A byte differs from the previous one by something other than the
    /// single allowed step of one.
    #[error("page #{index} of the range has first byte {found:#04x}, expected {expected:#04x}")]
    Mismatch {
        /// Index of the page within the checked range (0 = first page).
        index: u64,
        /// The byte found.
        found: u8,
        /// The byte expected (the previous page's byte).
        expected: u8,
    },
    /// A second step down by one: the pass edge appears twice.
    #[error("page #{index} of the range has first byte {found:#04x}: second pass edge (first at page #{first_edge})")]
    SecondEdge {
        /// Index of the page within the checked range.
        index: u64,
        /// The byte found.
        found: u8,
        /// Index of the first edge.
        first_edge: u64,
    },
}

/// Summary of a range that satisfies the invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbSummary {
    /// Number of pages checked.
    pub pages: u64,
    /// First byte of the first page.
    pub first: u8,
    /// Index of the page where the pass was interrupted, if any.
    pub edge: Option<u64>,
}

/// One page that broke the invariant, as QEMU's `check_guests_ram` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbBadPage {
    /// Index of the page within the checked range (0 = first page).
    pub index: u64,
    /// The byte found.
    pub found: u8,
    /// The byte expected (the last good page's byte; a bad page does not
    /// change it).
    pub expected: u8,
    /// Whether the one allowed edge had been passed before this page.
    pub after_edge: bool,
}

/// Everything one pass over a range saw: what [`check_ab_invariant`] decides
/// on, and every bad page for a QEMU-style report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbScan {
    /// Number of pages checked.
    pub pages: u64,
    /// First byte of the first page (0 for an empty range).
    pub first: u8,
    /// Index of the page where the pass was interrupted, if any.
    pub edge: Option<u64>,
    /// Number of bad pages.
    pub bad: u64,
    /// The first bad pages, at most the `keep` passed to [`scan_ab_invariant`].
    pub first_bad: Vec<AbBadPage>,
}

impl AbScan {
    /// The first violation, if any.
    pub fn violation(&self) -> Option<AbViolation> {
        let b = self.first_bad.first()?;
        Some(match self.edge {
            Some(first_edge) if b.after_edge && b.found.wrapping_add(1) == b.expected => {
                AbViolation::SecondEdge {
                    index: b.index,
                    found: b.found,
                    first_edge,
                }
            }
            _ => AbViolation::Mismatch {
                index: b.index,
                found: b.found,
                expected: b.expected,
            },
        })
    }
}

/// Walks the first bytes of the pages of a range, in address order, as
/// QEMU's `check_guests_ram` does: every page is checked, a bad page is
/// counted (the first `keep` are kept) and does not become the new expected
/// byte. This is the one definition of the invariant.
pub fn scan_ab_invariant(first_bytes: impl IntoIterator<Item = u8>, keep: usize) -> AbScan {
    let mut iter = first_bytes.into_iter();
    let Some(first) = iter.next() else {
        return AbScan {
            pages: 0,
            first: 0,
            edge: None,
            bad: 0,
            first_bad: Vec::new(),
        };
    };
    let mut scan = AbScan {
        pages: 1,
        first,
        edge: None,
        bad: 0,
        first_bad: Vec::new(),
    };
    let mut last = first;
    for (index, b) in (1u64..).zip(iter) {
        scan.pages += 1;
        if b == last {
            continue;
        }
        if b.wrapping_add(1) == last && scan.edge.is_none() {
            scan.edge = Some(index);
            last = b;
            continue;
        }
        scan.bad += 1;
        if scan.first_bad.len() < keep {
            scan.first_bad.push(AbBadPage {
                index,
                found: b,
                expected: last,
                after_edge: scan.edge.is_some(),
            });
        }
    }
    scan
}

/// Checks the A-B invariant over the first bytes of the pages of a range, in
/// address order; the first bad page is the error. An empty iterator passes
/// with `pages == 0`.
pub fn check_ab_invariant(
    first_bytes: impl IntoIterator<Item = u8>,
) -> Result<AbSummary, AbViolation> {
    let scan = scan_ab_invariant(first_bytes, 1);
    match scan.violation() {
        Some(v) => Err(v),
        None => Ok(AbSummary {
            pages: scan.pages,
            first: scan.first,
            edge: scan.edge,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn uniform_and_single_edge_pass() {
        assert_eq!(check_ab_invariant([]).unwrap().pages, 0);
        assert_eq!(check_ab_invariant([7, 7, 7]).unwrap().edge, None);
        let s = check_ab_invariant([8, 8, 7, 7]).unwrap();
        assert_eq!((s.pages, s.first, s.edge), (4, 8, Some(2)));
        // wrap-around: 0 then 255 is a step of one
        assert_eq!(check_ab_invariant([0, 0, 255]).unwrap().edge, Some(2));
    }

    #[test]
    fn violations_are_reported() {
        assert_eq!(
            check_ab_invariant([5, 5, 7]),
            Err(AbViolation::Mismatch {
                index: 2,
                found: 7,
                expected: 5
            })
        );
        // stepping up is not allowed
        assert!(check_ab_invariant([5, 6]).is_err());
        assert_eq!(
            check_ab_invariant([9, 8, 7]),
            Err(AbViolation::SecondEdge {
                index: 2,
                found: 7,
                first_edge: 1
            })
        );
        assert_eq!(
            check_ab_invariant([9, 8, 7]).unwrap_err().to_string(),
            "page #2 of the range has first byte 0x07: second pass edge (first at page #1)"
        );
    }

    #[test]
    fn scan_counts_every_bad_page_like_qemu() {
        // a bad page does not become the expected byte: 3 at page 2 is bad,
        // then pages 5.. (9 after 1) are all bad
        let mut v = [1u8; 20];
        v[5..].fill(9);
        v[2] = 3;
        let s = scan_ab_invariant(v.iter().copied(), 10);
        assert_eq!((s.pages, s.bad, s.first_bad.len()), (20, 16, 10));
        assert_eq!(
            s.first_bad[0],
            AbBadPage {
                index: 2,
                found: 3,
                expected: 1,
                after_edge: false
            }
        );
        assert_eq!(s.first_bad[1].index, 5);
        assert_eq!(scan_ab_invariant(v.iter().copied(), 0).bad, 16);
    }

    proptest! {
        /// Any snapshot of an interrupted sweep pass passes; bumping one page
        /// by any amount other than the allowed step breaks it.
        #[test]
        fn interrupted_passes_pass(len in 1usize..200, cut in 0usize..200, base: u8, bump in 2u8..=254, victim in 0usize..200) {
            let cut = cut % len;
            let bytes: Vec<u8> = (0..len).map(|i| if i < cut { base.wrapping_add(1) } else { base }).collect();
            prop_assert!(check_ab_invariant(bytes.iter().copied()).is_ok());
            let mut bad = bytes.clone();
            let victim = victim % len;
            bad[victim] = bad[victim].wrapping_add(bump);
            if len > 1 && victim > 0 {
                prop_assert!(check_ab_invariant(bad).is_err());
            }
        }
    }
}
