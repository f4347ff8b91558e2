//! XBZRLE: re-sent pages as deltas against the last sent copy (QEMU's
//! `xbzrle` capability and `xbzrle-cache-size` parameter).
//!
//! - [`codec`]: QEMU's encoding (`migration/xbzrle.c`) and the validating decoder.
//! - [`cache`]: the source's page cache (`migration/page_cache.c`).
//! - [`Xbzrle`]: the source's per-migration state and counters (QEMU's
//!   `save_xbzrle_page`, `xbzrle_cache_zero_page`, `migration_update_rates`).
//!
//! The destination needs no state: an XBZRLE record is decoded against
//! the page it holds, which is the source's cached copy because every send
//! of a page updates the cache (or the page is not cached).

mod cache;
mod codec;
mod send;

pub use cache::PageCache;
pub use codec::{
    decode, decode_sparse, encode, encode_sparse, walk, DecodeError, Encoded, MAX_ENCODED,
    SPARSE_MAX_ENCODED, SPARSE_WORDS,
};
pub use send::{Send, Xbzrle};

use super::host::PAGE_SIZE;

/// QEMU 7.2's `migrate_params_check` rule for `xbzrle-cache-size`: a power
/// of two, at least one target page. The error is the `expects` part of
/// "Parameter 'xbzrle_cache_size' expects ...".
pub fn check_cache_size(size: u64) -> Result<(), &'static str> {
    if size < PAGE_SIZE as u64 || !size.is_power_of_two() {
        return Err("a power of two no less than the target page size");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_size_rule_as_qemu_7_2() {
        // Checked against QEMU 7.2's migrate-set-parameters.
        for ok in [4096, 65536, 64 << 20, 1 << 40, 1 << 62] {
            assert!(check_cache_size(ok).is_ok(), "{ok}");
        }
        for bad in [0, 1, 2048, 4095, 5000, 100_000_000, u64::MAX] {
            assert!(check_cache_size(bad).is_err(), "{bad}");
        }
    }
}
