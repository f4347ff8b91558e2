//! The postcopy page gate of guest RAM (the userfaultfd of migtest-vmm).
//!
//! While a postcopy migration runs on the destination, some pages have not
//! arrived yet. Every guest access (read or write, through the
//! [`GuestRam`](super::GuestRam) accessors) first asks the gate; a vCPU that
//! touches a missing page asks the [`PageRequester`] for it (once per page)
//! and blocks until the loader has filled it ([`PostcopyGate::filled`]).
//! A page that is not missing is never written by the loader, so data the
//! running destination guest wrote is never overwritten.
//!
//! Fast path: one relaxed atomic load (`active`) per access outside
//! postcopy; one bitmap word load per page during postcopy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Asks the migration source for a page (the return path).
pub trait PageRequester: Send + Sync {
    /// Request page `page`; errors are the loader's to notice.
    fn request(&self, page: u64);
}

#[derive(Default)]
struct GateState {
    requester: Option<Box<dyn PageRequester>>,
    /// Pages asked for and not filled yet (bit per page, words of 64).
    requested: Vec<u64>,
    /// Total time vCPUs spent blocked on missing pages, ns.
    blocked_ns: u64,
}

/// The set of pages a postcopy destination has not received yet.
pub struct PostcopyGate {
    active: AtomicBool,
    missing: Vec<AtomicU64>,
    state: Mutex<GateState>,
    cv: Condvar,
}

impl std::fmt::Debug for PostcopyGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostcopyGate")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

fn lock(m: &Mutex<GateState>) -> MutexGuard<'_, GateState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PostcopyGate {
    /// An inactive gate for `pages` pages.
    pub fn new(pages: u64) -> PostcopyGate {
        PostcopyGate {
            active: AtomicBool::new(false),
            missing: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            state: Mutex::new(GateState::default()),
            cv: Condvar::new(),
        }
    }

    /// Starts postcopy: the pages set in `missing` (words of 64 pages, as
    /// long as the gate's bitmap) are missing until filled; `requester`
    /// asks the source for them.
    pub fn arm(&self, missing: &[u64], requester: Box<dyn PageRequester>) {
        let mut st = lock(&self.state);
        for (w, m) in self.missing.iter().zip(missing) {
            w.store(*m, Ordering::Relaxed);
        }
        st.requester = Some(requester);
        st.requested = vec![0; self.missing.len()];
        st.blocked_ns = 0;
        self.active.store(true, Ordering::Release);
    }

    /// Ends postcopy: every page is readable again, blocked vCPUs go on.
    /// Called when all pages arrived (and, failing that, never: a vCPU
    /// blocked on a page that will never come stays blocked, as on QEMU).
    pub fn disarm(&self) {
        let mut st = lock(&self.state);
        self.active.store(false, Ordering::Release);
        for w in &self.missing {
            w.store(0, Ordering::Relaxed);
        }
        st.requester = None;
        self.cv.notify_all();
    }

    /// Postcopy recovery: requests go to `requester` from now on, and every
    /// page a vCPU asked for and has not got yet is asked for again (the
    /// request may have been lost with the old connection).
    pub fn reconnect(&self, requester: Box<dyn PageRequester>) {
        let mut st = lock(&self.state);
        for (w, bits) in st.requested.iter().enumerate() {
            let mut b = *bits;
            while b != 0 {
                let page = w as u64 * 64 + u64::from(b.trailing_zeros());
                b &= b - 1;
                if self.is_missing(page) {
                    requester.request(page);
                }
            }
        }
        st.requester = Some(requester);
    }

    /// The pages still missing, words of 64 pages (bit set = missing).
    pub fn missing_bitmap(&self) -> Vec<u64> {
        self.missing
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .collect()
    }

    /// Whether postcopy is armed.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Whether page `page` is still missing.
    #[inline]
    pub fn is_missing(&self, page: u64) -> bool {
        self.missing
            .get((page / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1u64 << (page % 64)) != 0)
    }

    /// Called by every guest access of pages `first..=last`: returns once
    /// they are all present.
    #[inline]
    pub fn wait_present(&self, first: u64, last: u64) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        for page in first..=last {
            if self.is_missing(page) {
                self.wait_slow(page);
            }
        }
    }

    #[cold]
    fn wait_slow(&self, page: u64) {
        let start = Instant::now();
        let mut st = lock(&self.state);
        let (w, bit) = ((page / 64) as usize, 1u64 << (page % 64));
        let mut asked = false;
        while self.is_active() && self.is_missing(page) {
            if !asked {
                asked = true;
                if st.requested.get(w).is_some_and(|r| r & bit == 0) {
                    st.requested[w] |= bit;
                    if let Some(r) = &st.requester {
                        r.request(page);
                    }
                }
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.blocked_ns = st
            .blocked_ns
            .saturating_add(start.elapsed().as_nanos().min(u64::MAX as u128) as u64);
    }

    /// The loader has written page `page`: it is present from now on.
    /// Returns false if the page was not missing (the caller must then not
    /// have written it; see [`GuestRam::postcopy_fill`](super::GuestRam::postcopy_fill)).
    pub fn filled(&self, page: u64) -> bool {
        let Some(w) = self.missing.get((page / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (page % 64);
        let was = w.fetch_and(!bit, Ordering::AcqRel) & bit != 0;
        if was {
            let mut st = lock(&self.state);
            if let Some(r) = st.requested.get_mut((page / 64) as usize) {
                *r &= !bit;
            }
            self.cv.notify_all();
        }
        was
    }

    /// Pages still missing.
    pub fn missing_count(&self) -> u64 {
        self.missing
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Total time vCPUs were blocked on missing pages, in ms.
    pub fn blocktime_ms(&self) -> u64 {
        lock(&self.state).blocked_ns / 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Rec(Mutex<Vec<u64>>);
    impl PageRequester for Arc<Rec> {
        fn request(&self, page: u64) {
            self.0.lock().unwrap().push(page);
        }
    }

    #[test]
    fn inactive_gate_never_blocks() {
        let g = PostcopyGate::new(128);
        g.wait_present(0, 127);
        assert!(!g.is_missing(5));
    }

    #[test]
    fn a_missing_page_is_requested_once_and_unblocks_when_filled() {
        let g = Arc::new(PostcopyGate::new(128));
        let rec = Arc::new(Rec(Mutex::new(Vec::new())));
        g.arm(&[1 << 3, 0], Box::new(rec.clone()));
        g.wait_present(0, 2);
        let g2 = g.clone();
        let t = std::thread::spawn(move || g2.wait_present(3, 3));
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while rec.0.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "no request for page 3");
            std::thread::yield_now();
        }
        assert!(g.filled(3));
        t.join().unwrap();
        assert_eq!(*rec.0.lock().unwrap(), vec![3]);
        assert!(!g.filled(3), "a page is filled once");
        assert_eq!(g.missing_count(), 0);
    }

    #[test]
    fn reconnect_asks_again_for_pages_still_awaited() {
        let g = Arc::new(PostcopyGate::new(128));
        let old = Arc::new(Rec(Mutex::new(Vec::new())));
        g.arm(&[(1 << 3) | (1 << 9), 1 << 1], Box::new(old.clone()));
        let g2 = g.clone();
        let t = std::thread::spawn(move || g2.wait_present(65, 65));
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while old.0.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "no request for page 65");
            std::thread::yield_now();
        }
        assert_eq!(g.missing_bitmap(), vec![(1 << 3) | (1 << 9), 1 << 1]);
        let new = Arc::new(Rec(Mutex::new(Vec::new())));
        g.reconnect(Box::new(new.clone()));
        assert_eq!(*new.0.lock().unwrap(), vec![65], "only the awaited page");
        assert!(g.filled(65));
        t.join().unwrap();
        assert_eq!(g.missing_bitmap(), vec![(1 << 3) | (1 << 9), 0]);
    }
}
