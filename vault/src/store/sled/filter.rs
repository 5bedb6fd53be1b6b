//! An in-memory filter of the fingerprints indexed in this folder, so the common case of a
//! store (a token never seen) answers "not indexed" without a sled read. A sled `get` that
//! misses in the `fingerprints` tree costs ~35 µs (its pages fill with deltas under random
//! keys) — more than the rest of a store.
//!
//! A Bloom filter with 4 probes. Fingerprints are keyed HMAC-SHA256 outputs, uniform and
//! unpredictable without the fingerprint key, so the probe positions are simply four 64-bit
//! words of the fingerprint: no hashing, and an attacker cannot aim collisions at it. (A filter
//! crate would hash the key again; that is all it would add here.)
//!
//! Invariants: a false "maybe" only costs the sled read it saves otherwise; there is never a
//! false "no": every fingerprint written to the index is added before its insert's lock is
//! released (`SledStore::insert`, `reindex_one`) and all of them are loaded at open. Removed
//! fingerprints stay set (a filter cannot forget): their later lookups just read sled.

use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct FpFilter {
    words: Vec<AtomicU64>,
    mask: u64,
}

impl FpFilter {
    /// A filter sized for `expected` fingerprints at under 1% false positives (16 bits each),
    /// at least 1 MiB (8M bits: good to 500k fingerprints), rounded up to a power of two.
    pub(crate) fn with_capacity(expected: u64) -> Self {
        let bits = (expected.saturating_mul(16))
            .max(8 << 20)
            .next_power_of_two();
        let words = (bits / 64) as usize;
        Self {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            mask: bits - 1,
        }
    }

    fn probes(fp: &[u8; 32]) -> [u64; 4] {
        let mut out = [0u64; 4];
        for (i, chunk) in fp.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            out[i] = u64::from_le_bytes(w);
        }
        out
    }

    pub(crate) fn add(&self, fp: &[u8; 32]) {
        for p in Self::probes(fp) {
            let bit = p & self.mask;
            self.words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::AcqRel);
        }
    }

    /// False: certainly not indexed. True: maybe.
    pub(crate) fn may_contain(&self, fp: &[u8; 32]) -> bool {
        Self::probes(fp).into_iter().all(|p| {
            let bit = p & self.mask;
            self.words[(bit / 64) as usize].load(Ordering::Acquire) & (1 << (bit % 64)) != 0
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn fp(i: u32) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, &i.to_be_bytes());
        d.as_ref().try_into().unwrap()
    }

    #[test]
    fn every_added_fingerprint_is_found_and_few_others_are() {
        let f = FpFilter::with_capacity(100_000);
        for i in 0..100_000 {
            f.add(&fp(i));
        }
        assert!((0..100_000).all(|i| f.may_contain(&fp(i))), "a false no");
        let false_maybes = (100_000..200_000)
            .filter(|i| f.may_contain(&fp(*i)))
            .count();
        assert!(
            false_maybes < 1_000,
            "{false_maybes} false positives in 100k"
        );
    }
}
