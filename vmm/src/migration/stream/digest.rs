//! The stream digest (END record): XXH3-64, seed 0.
//!
//! Computed with `twox-hash`, which picks AVX2 at run time where the CPU
//! has it; `xxhash-rust` (used elsewhere for one-shot hashes) selects its
//! SIMD at compile time and, without `target-cpu`, runs SSE2 only, at about
//! half the speed on this data path (`docs/performance.md`, fourth round).
//! Both compute the same function, so the digest on the wire is unchanged.

use std::hash::Hasher;

/// A running XXH3-64 over the stream bytes END covers (all but page data).
#[derive(Clone, Default)]
pub struct StreamDigest(twox_hash::XxHash3_64);

impl StreamDigest {
    /// An empty digest.
    pub fn new() -> StreamDigest {
        StreamDigest::default()
    }

    /// Adds `bytes`.
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    /// The digest of everything added so far (the state is kept).
    pub fn digest(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Same function as xxhash-rust's XXH3-64 (the stream format's
        /// digest), however the input is split.
        #[test]
        fn equals_xxh3_64(data in proptest::collection::vec(any::<u8>(), 0..5000), cuts in proptest::collection::vec(0usize..5000, 0..6)) {
            let mut d = StreamDigest::new();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                d.update(&data[at..c]);
                at = c;
            }
            prop_assert_eq!(d.digest(), xxhash_rust::xxh3::xxh3_64(&data));
        }
    }

    #[test]
    fn equals_xxh3_64_on_large_input() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut d = StreamDigest::new();
        for c in data.chunks(4096 + 9) {
            d.update(c);
        }
        assert_eq!(d.digest(), xxhash_rust::xxh3::xxh3_64(&data));
    }
}
