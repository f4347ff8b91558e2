//! QEMU's A-B guest memory invariant (`check_guests_ram` in
//! `tests/qtest/migration-helpers`), as a pure function the harness reuses.
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

/// Checks the A-B invariant over the first bytes of the pages of a range, in
/// address order. An empty iterator passes with `pages == 0`.
pub fn check_ab_invariant(
    first_bytes: impl IntoIterator<Item = u8>,
) -> Result<AbSummary, AbViolation> {
    let mut iter = first_bytes.into_iter();
    let Some(first) = iter.next() else {
        return Ok(AbSummary {
            pages: 0,
            first: 0,
            edge: None,
        });
    };
    let mut last = first;
    let mut edge = None;
    let mut pages = 1u64;
    for (index, b) in (1u64..).zip(iter) {
        pages += 1;
        if b == last {
            continue;
        }
        if b.wrapping_add(1) == last {
            if let Some(first_edge) = edge {
                return Err(AbViolation::SecondEdge {
                    index,
                    found: b,
                    first_edge,
                });
            }
            edge = Some(index);
            last = b;
            continue;
        }
        return Err(AbViolation::Mismatch {
            index,
            found: b,
            expected: last,
        });
    }
    Ok(AbSummary { pages, first, edge })
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
