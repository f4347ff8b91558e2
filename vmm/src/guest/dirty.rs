//! Software dirty-page tracking: one bit per 4 KiB guest page.
//!
//! # Ordering protocol
//!
//! Writers (vCPUs) store the data first and call [`DirtyBitmap::mark`]
//! afterwards; the migration thread calls [`DirtyBitmap::take`] and only then
//! copies the pages it found dirty. `mark` issues a `SeqCst` fence before it
//! looks at the bitmap word and `take` issues one after clearing it, so for
//! every write one of two things holds:
//!
//! * the writer's fence comes first in the global order: the copy made after
//!   `take` observes the written data, or
//! * the reader's fence comes first: the writer's load observes the cleared
//!   bit and sets it again, so the page is in the next snapshot.
//!
//! A concurrent mark therefore lands in this snapshot or the next one and is
//! never lost.

use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Bits per bitmap word.
const WORD_BITS: u64 = 64;

/// A dirty bitmap over `page_count` guest pages, safe to share between
/// vCPU threads (which mark) and the migration thread (which takes).
#[derive(Debug)]
pub struct DirtyBitmap {
    words: Vec<AtomicU64>,
    page_count: u64,
}

impl DirtyBitmap {
    /// Creates a bitmap for `page_count` pages with every bit clear.
    pub fn new(page_count: u64) -> DirtyBitmap {
        let words = page_count.div_ceil(WORD_BITS);
        DirtyBitmap {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            page_count,
        }
    }

    /// Number of pages tracked.
    pub fn page_count(&self) -> u64 {
        self.page_count
    }

    /// Number of `u64` words in a snapshot returned by [`take`](Self::take).
    pub fn word_count(&self) -> usize {
        self.words.len()
    }

    /// Marks `page` dirty. Out-of-range pages are ignored.
    ///
    /// Call this *after* storing the data (see the module documentation).
    /// The read-modify-write is skipped when the bit is already set, so a
    /// page rewritten in a tight loop does not bounce the bitmap cache line.
    #[inline]
    pub fn mark(&self, page: u64) {
        if page >= self.page_count {
            return;
        }
        let word = &self.words[(page / WORD_BITS) as usize];
        let bit = 1u64 << (page % WORD_BITS);
        fence(Ordering::SeqCst);
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Marks `count` pages starting at `first` dirty (clipped to the bitmap).
    pub fn mark_range(&self, first: u64, count: u64) {
        let end = first.saturating_add(count).min(self.page_count);
        for page in first..end {
            self.mark(page);
        }
    }

    /// Marks every page dirty, as QEMU's `ram_save_setup` does at the start
    /// of a migration.
    pub fn set_all(&self) {
        let full_words = (self.page_count / WORD_BITS) as usize;
        for word in &self.words[..full_words] {
            word.store(u64::MAX, Ordering::SeqCst);
        }
        let rest = self.page_count % WORD_BITS;
        if rest != 0 {
            self.words[full_words].fetch_or((1u64 << rest) - 1, Ordering::SeqCst);
        }
    }

    /// Atomically takes a snapshot of the bitmap and clears it.
    ///
    /// Each word is swapped with zero, so a concurrent [`mark`](Self::mark)
    /// is either in the returned snapshot or stays set for the next call.
    /// Copy the pages only after this returns.
    pub fn take(&self) -> Vec<u64> {
        let snapshot = self
            .words
            .iter()
            .map(|w| w.swap(0, Ordering::SeqCst))
            .collect();
        fence(Ordering::SeqCst);
        snapshot
    }

    /// Moves the dirty bits into `into` (OR-ed in, word by word) and
    /// returns how many pages were newly set there. Same protocol as
    /// [`take`](Self::take) without allocating; words that read as zero are
    /// not written, so an idle guest's bitmap cache lines stay shared.
    pub fn take_into(&self, into: &mut [u64]) -> u64 {
        let mut newly = 0u64;
        for (w, dst) in self.words.iter().zip(into.iter_mut()) {
            if w.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let bits = w.swap(0, Ordering::SeqCst);
            newly += u64::from((bits & !*dst).count_ones());
            *dst |= bits;
        }
        fence(Ordering::SeqCst);
        newly
    }

    /// Number of dirty pages right now.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Whether `page` is currently dirty (`false` for out-of-range pages).
    pub fn is_dirty(&self, page: u64) -> bool {
        if page >= self.page_count {
            return false;
        }
        let word = self.words[(page / WORD_BITS) as usize].load(Ordering::Relaxed);
        word & (1u64 << (page % WORD_BITS)) != 0
    }
}

/// Iterates over the page numbers whose bits are set in a snapshot returned
/// by [`DirtyBitmap::take`], in increasing order.
pub fn iter_pages(snapshot: &[u64]) -> SetBits<'_> {
    SetBits {
        words: snapshot,
        index: 0,
        current: snapshot.first().copied().unwrap_or(0),
    }
}

/// Number of set bits in a snapshot.
pub fn snapshot_count(snapshot: &[u64]) -> u64 {
    snapshot.iter().map(|w| u64::from(w.count_ones())).sum()
}

/// Iterator over set bits of a snapshot; see [`iter_pages`].
#[derive(Debug, Clone)]
pub struct SetBits<'a> {
    words: &'a [u64],
    index: usize,
    current: u64,
}

impl Iterator for SetBits<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            if self.current != 0 {
                let bit = u64::from(self.current.trailing_zeros());
                self.current &= self.current - 1;
                return Some(self.index as u64 * WORD_BITS + bit);
            }
            self.index += 1;
            self.current = *self.words.get(self.index)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    #[test]
    fn mark_take_clears() {
        let b = DirtyBitmap::new(130);
        b.mark(0);
        b.mark(64);
        b.mark(129);
        b.mark(129);
        b.mark(130); // out of range: ignored
        assert_eq!(b.count(), 3);
        assert!(b.is_dirty(64));
        assert!(!b.is_dirty(65));
        assert!(!b.is_dirty(10_000));
        let snap = b.take();
        assert_eq!(snap.len(), 3);
        assert_eq!(iter_pages(&snap).collect::<Vec<_>>(), vec![0, 64, 129]);
        assert_eq!(snapshot_count(&snap), 3);
        assert_eq!(b.count(), 0);
        assert_eq!(snapshot_count(&b.take()), 0);
    }

    #[test]
    fn set_all_sets_exactly_the_pages() {
        for pages in [0u64, 1, 63, 64, 65, 200] {
            let b = DirtyBitmap::new(pages);
            b.set_all();
            assert_eq!(b.count(), pages);
            let snap = b.take();
            assert_eq!(
                iter_pages(&snap).collect::<Vec<_>>(),
                (0..pages).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn take_into_merges_and_counts_new_pages() {
        let b = DirtyBitmap::new(130);
        let mut into = vec![0u64; b.word_count()];
        into[0] = 1; // page 0 already pending
        b.mark(0);
        b.mark(1);
        b.mark(129);
        assert_eq!(b.take_into(&mut into), 2);
        assert_eq!(iter_pages(&into).collect::<Vec<_>>(), vec![0, 1, 129]);
        assert_eq!(b.count(), 0);
        assert_eq!(b.take_into(&mut into), 0);
    }

    #[test]
    fn mark_range_clips() {
        let b = DirtyBitmap::new(10);
        b.mark_range(8, 5);
        b.mark_range(u64::MAX - 1, 5);
        assert_eq!(iter_pages(&b.take()).collect::<Vec<_>>(), vec![8, 9]);
    }

    #[test]
    fn concurrent_marks_are_never_lost() {
        const PAGES: u64 = 512;
        const ROUNDS: u64 = 2_000;
        let b = Arc::new(DirtyBitmap::new(PAGES));
        let writers: Vec<_> = (0..2u64)
            .map(|t| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    for r in 0..ROUNDS {
                        b.mark((r * 7 + t * 131) % PAGES);
                    }
                })
            })
            .collect();
        let mut seen = BTreeSet::new();
        while !writers.iter().all(|w| w.is_finished()) {
            seen.extend(iter_pages(&b.take()));
        }
        for w in writers {
            w.join().unwrap();
        }
        seen.extend(iter_pages(&b.take()));
        let expected: BTreeSet<u64> = (0..2u64)
            .flat_map(|t| (0..ROUNDS).map(move |r| (r * 7 + t * 131) % PAGES))
            .collect();
        assert_eq!(seen, expected);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Mark(u64),
        Take,
        SetAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u64..300).prop_map(Op::Mark),
            2 => Just(Op::Take),
            1 => Just(Op::SetAll),
        ]
    }

    proptest! {
        /// Model check: every mark shows up in the next snapshot, nothing else does.
        #[test]
        fn take_and_mark_match_model(pages in 1u64..260, ops in proptest::collection::vec(op(), 0..200)) {
            let b = DirtyBitmap::new(pages);
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Mark(p) => {
                        b.mark(p);
                        if p < pages {
                            model.insert(p);
                        }
                    }
                    Op::SetAll => {
                        b.set_all();
                        model.extend(0..pages);
                    }
                    Op::Take => {
                        let snap = b.take();
                        let got: BTreeSet<u64> = iter_pages(&snap).collect();
                        prop_assert_eq!(&got, &model);
                        model.clear();
                    }
                }
                prop_assert_eq!(b.count(), model.len() as u64);
            }
        }
    }
}
