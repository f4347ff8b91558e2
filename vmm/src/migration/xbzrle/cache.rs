//! The source's page cache (QEMU's `migration/page_cache.c`): the last
//! sent copy of a page, direct-mapped by page number, bounded by
//! `xbzrle-cache-size`.

use super::super::host::PAGE_SIZE;

/// QEMU's `CACHED_PAGE_LIFETIME`: a slot used in one of the last two syncs
/// is not taken over by another page.
const CACHED_PAGE_LIFETIME: u64 = 2;

struct Slot {
    page: u64,
    age: u64,
    data: Box<[u8; PAGE_SIZE]>,
}

/// A direct-mapped cache of `slots` pages (a power of two).
pub struct PageCache {
    slots: Vec<Option<Slot>>,
    mask: u64,
}

impl PageCache {
    /// A cache of `cache_size` bytes (a power of two, at least a page, as
    /// `xbzrle-cache-size` is checked) for a guest of `page_count` pages.
    /// Slots beyond the guest's pages could never be used, so at most the
    /// guest's page count (rounded up to a power of two) are allocated,
    /// and a slot's page only when it is first filled.
    pub fn new(cache_size: u64, page_count: u64) -> PageCache {
        let want = (cache_size / PAGE_SIZE as u64).max(1);
        let items = want.min(page_count.max(1).next_power_of_two());
        let mut slots = Vec::new();
        slots.resize_with(items as usize, || None);
        PageCache {
            slots,
            mask: items - 1,
        }
    }

    fn slot(&self, page: u64) -> usize {
        (page & self.mask) as usize
    }

    /// QEMU's `cache_is_cached`: whether `page` is cached; a hit makes the
    /// slot young again.
    pub fn lookup(&mut self, page: u64, age: u64) -> Option<&mut [u8; PAGE_SIZE]> {
        let i = self.slot(page);
        match self.slots[i].as_mut() {
            Some(s) if s.page == page => {
                s.age = age;
                Some(&mut s.data)
            }
            _ => None,
        }
    }

    /// QEMU's `cache_insert`: stores `data` as `page`'s copy, unless the
    /// slot holds another page used in the last [`CACHED_PAGE_LIFETIME`]
    /// syncs. Returns whether it was stored.
    pub fn insert(&mut self, page: u64, data: &[u8; PAGE_SIZE], age: u64) -> bool {
        let i = self.slot(page);
        match &mut self.slots[i] {
            Some(s) if s.page != page && s.age + CACHED_PAGE_LIFETIME > age => false,
            Some(s) => {
                s.page = page;
                s.age = age;
                s.data.copy_from_slice(data);
                true
            }
            empty => {
                *empty = Some(Slot {
                    page,
                    age,
                    data: Box::new(*data),
                });
                true
            }
        }
    }

    /// Pages the cache can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_mapped_with_lifetime() {
        let mut c = PageCache::new(2 * PAGE_SIZE as u64, 1000);
        assert_eq!(c.capacity(), 2);
        let a = [1u8; PAGE_SIZE];
        assert!(c.lookup(4, 1).is_none());
        assert!(c.insert(4, &a, 1));
        assert_eq!(c.lookup(4, 1).map(|d| d[0]), Some(1));
        // Page 6 maps to the same slot, which is still fresh.
        assert!(!c.insert(6, &[2u8; PAGE_SIZE], 2));
        assert!(c.lookup(6, 2).is_none());
        // Two syncs later the slot may be taken over.
        assert!(c.insert(6, &[2u8; PAGE_SIZE], 3));
        assert!(c.lookup(4, 3).is_none());
        assert_eq!(c.lookup(6, 3).map(|d| d[0]), Some(2));
    }

    #[test]
    fn never_more_slots_than_guest_pages() {
        assert_eq!(PageCache::new(1 << 62, 100).capacity(), 128);
        assert_eq!(PageCache::new(64 << 20, 1 << 20).capacity(), 16384);
    }
}
