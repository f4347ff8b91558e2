//! The source's XBZRLE state for one migration.

use super::super::faults::{self, Fault};
use super::super::host::PAGE_SIZE;
use super::{encode, Encoded, PageCache, MAX_ENCODED};
use migtest_qmp::schema::XbzrleCacheStats;

/// How a page goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// Whole (a cache miss, an overflow, or XBZRLE not in use).
    Whole,
    /// As [`Xbzrle::encoded`]`[..n]`.
    Encoded(usize),
    /// Not at all: it did not change since it was last sent.
    Skip,
}

/// The cache, the counters and the encoding buffer of one migration.
pub struct Xbzrle {
    cache: PageCache,
    page_count: u64,
    cache_size: u64,
    /// QEMU's `rs->xbzrle_enabled`: set after the first round over RAM.
    enabled: bool,
    /// Postcopy started: no more encoding (QEMU: `!migration_in_postcopy()`).
    postcopy: bool,
    buf: Box<[u8; MAX_ENCODED]>,
    stats: XbzrleCacheStats,
    /// Pages sent in any way, and the counters at the last rate update.
    pages_sent: u64,
    prev: (u64, u64, u64, u64),
}

impl Xbzrle {
    /// State for a migration of `page_count` pages with `cache_size` bytes of cache.
    pub fn new(cache_size: u64, page_count: u64) -> Xbzrle {
        Xbzrle {
            cache: PageCache::new(cache_size, page_count),
            page_count,
            cache_size,
            enabled: false,
            postcopy: false,
            buf: Box::new([0; MAX_ENCODED]),
            stats: XbzrleCacheStats {
                cache_size,
                ..XbzrleCacheStats::default()
            },
            pages_sent: 0,
            prev: (0, 0, 0, 0),
        }
    }

    /// At each dirty sync `sync` (the cache's age): the round after the
    /// first sync encodes (QEMU enables XBZRLE once the first round over
    /// RAM is done), and a changed `xbzrle-cache-size` replaces the cache
    /// by an empty one of the new size (QEMU's `xbzrle_cache_resize`).
    pub fn on_sync(&mut self, sync: u64, cache_size: u64) {
        if sync >= 2 {
            self.enabled = true;
        }
        if cache_size != self.cache_size {
            self.cache = PageCache::new(cache_size, self.page_count);
            self.cache_size = cache_size;
            self.stats.cache_size = cache_size;
        }
    }

    /// Postcopy started: pages go whole from now on.
    pub fn stop_for_postcopy(&mut self) {
        self.postcopy = true;
    }

    fn active(&self) -> bool {
        self.enabled && !self.postcopy
    }

    /// A zero page is being sent (QEMU's `xbzrle_cache_zero_page`): the
    /// cached copy becomes zero so a later delta has the right base.
    pub fn zero_page(&mut self, page: u64, age: u64) {
        self.pages_sent += 1;
        if self.active() {
            self.cache.insert(page, &[0u8; PAGE_SIZE], age);
        }
    }

    /// QEMU's `save_xbzrle_page` for a non-zero page whose content about
    /// to be sent is `data`. `last_stage`: the guest is stopped for
    /// switchover, the cache is no longer updated.
    pub fn save_page(
        &mut self,
        page: u64,
        data: &[u8; PAGE_SIZE],
        age: u64,
        last_stage: bool,
    ) -> Send {
        self.pages_sent += 1;
        if !self.active() {
            return Send::Whole;
        }
        let Some(cached) = self.cache.lookup(page, age) else {
            self.stats.cache_miss += 1;
            if !last_stage {
                self.cache.insert(page, data, age);
            }
            return Send::Whole;
        };
        self.stats.pages += 1;
        let r = encode(cached, data, &mut self.buf[..]);
        let stale = faults::on(Fault::XbzrleCacheStaleOnWholeSend) && r == Encoded::Overflow;
        if !last_stage && r != Encoded::Unchanged && !stale {
            cached.copy_from_slice(data);
        }
        match r {
            Encoded::Unchanged => Send::Skip,
            Encoded::Overflow => {
                self.stats.overflow += 1;
                self.stats.bytes += PAGE_SIZE as u64;
                Send::Whole
            }
            Encoded::Delta(n) => {
                // QEMU counts the encoding, its flag byte and length, not
                // the page header: our tag and length are the same 3 bytes.
                self.stats.bytes += n as u64 + 3;
                Send::Encoded(n)
            }
        }
    }

    /// The encoding of the last [`Send::Encoded`] page.
    pub fn encoded(&self, n: usize) -> &[u8] {
        &self.buf[..n]
    }

    /// QEMU's `migration_update_rates` (XBZRLE part), once per rate period:
    /// misses per page sent, and bytes encoded per byte of encoding.
    pub fn update_rates(&mut self) {
        let (sent, miss, pages, bytes) = self.prev;
        let period = self.pages_sent - sent;
        if period == 0 {
            return;
        }
        self.stats.cache_miss_rate = (self.stats.cache_miss - miss) as f64 / period as f64;
        let unencoded = (self.stats.pages - pages) * PAGE_SIZE as u64;
        let encoded = self.stats.bytes - bytes;
        self.stats.encoding_rate = if self.stats.pages == pages || encoded == 0 {
            0.0
        } else {
            unencoded as f64 / encoded as f64
        };
        self.prev = (
            self.pages_sent,
            self.stats.cache_miss,
            self.stats.pages,
            self.stats.bytes,
        );
    }

    /// The `xbzrle-cache` member of `query-migrate`.
    pub fn stats(&self) -> XbzrleCacheStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(v: u8) -> [u8; PAGE_SIZE] {
        let mut p = [0u8; PAGE_SIZE];
        p[0] = v;
        p[100] = 1;
        p
    }

    #[test]
    fn first_round_whole_then_miss_then_encoded() {
        let mut x = Xbzrle::new(1 << 20, 64);
        x.on_sync(1, 1 << 20);
        assert_eq!(x.save_page(3, &page(1), 1, false), Send::Whole);
        assert_eq!(x.stats().cache_miss, 0, "no cache in the first round");
        x.on_sync(2, 1 << 20);
        assert_eq!(x.save_page(3, &page(2), 2, false), Send::Whole);
        assert_eq!(x.stats().cache_miss, 1);
        x.on_sync(3, 1 << 20);
        assert_eq!(x.save_page(3, &page(3), 3, false), Send::Encoded(3));
        assert_eq!(x.encoded(3), &[0, 1, 3]);
        assert_eq!(x.save_page(3, &page(3), 3, false), Send::Skip);
        // Overflow: sent whole, and the cache follows.
        assert_eq!(x.save_page(3, &[7u8; PAGE_SIZE], 3, false), Send::Whole);
        assert_eq!(x.save_page(3, &[7u8; PAGE_SIZE], 3, false), Send::Skip);
        // A zero page resets the base.
        x.zero_page(3, 3);
        assert_eq!(x.save_page(3, &page(0), 3, false), Send::Encoded(3));
        let s = x.stats();
        assert_eq!((s.pages, s.overflow, s.cache_miss), (5, 1, 1));
        assert_eq!(s.bytes, 6 + PAGE_SIZE as u64 + 6);
        x.update_rates();
        assert!(x.stats().encoding_rate > 1.0);
        assert!(x.stats().cache_miss_rate > 0.0);
    }

    #[test]
    fn last_stage_does_not_update_the_cache() {
        let mut x = Xbzrle::new(1 << 20, 64);
        x.on_sync(2, 1 << 20);
        x.save_page(1, &page(1), 2, false);
        assert_eq!(x.save_page(1, &page(2), 3, true), Send::Encoded(3));
        assert_eq!(x.save_page(1, &page(2), 3, true), Send::Encoded(3));
        assert_eq!(x.save_page(9, &page(2), 3, true), Send::Whole);
        assert_eq!(x.save_page(9, &page(2), 3, true), Send::Whole);
    }

    #[test]
    fn resize_empties_the_cache() {
        let mut x = Xbzrle::new(1 << 20, 64);
        x.on_sync(2, 1 << 20);
        x.save_page(1, &page(1), 2, false);
        x.on_sync(3, 8192);
        assert_eq!(x.stats().cache_size, 8192);
        assert_eq!(x.save_page(1, &page(2), 3, false), Send::Whole);
    }
}
