//! A miniature simulation of both eviction policies, on a sample of the keys,
//! that says which one L1 should run.
//!
//! Keys are sampled by hash (a fixed 1 in 2^k of them, so a sampled key is seen on
//! every access, and reuse distances keep their shape), and each sampled access
//! goes through two small key-only moka caches, one TinyLFU and one LRU, of L1's
//! capacity scaled by the same 2^k. Their hit ratios estimate what each policy
//! would get from L1's own traffic (Waldspurger et al., "Cache Modeling and
//! Optimization using Miniature Simulations", USENIX ATC 2017). The simulation does
//! not depend on which policy L1 runs, so switching cannot feed back into it.
//!
//! Every `window` sampled accesses (one simulated capacity's worth), the window's
//! hit-ratio difference updates a moving average (weight 1/8 per window); the
//! verdict names the better policy once that average leads by more than
//! [`MARGIN`], and says nothing while the two are closer (so traffic on which both
//! do about as well does not make L1 flap between them).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use crate::policy::L1Eviction;

/// How many keys each simulated cache holds, at least (unless L1 holds fewer):
/// L1's capacity is divided by the largest power of two that keeps it above this.
const SIMULATED_KEYS: u64 = 1024;

/// How far (in hit ratio) the other policy must lead before it is preferred.
pub(crate) const MARGIN: f64 = 0.02;

/// Windows whose verdict is withheld while both simulated caches fill.
const WARM_UP_WINDOWS: u64 = 2;

pub(crate) struct Shadow {
    /// A key is sampled when the low bits of its hash under this mask are zero.
    mask: u64,
    hasher: foldhash::fast::FixedState,
    tiny_lfu: Cache<u64, ()>,
    lru: Cache<u64, ()>,
    sampled: AtomicU64,
    tiny_lfu_hits: AtomicU64,
    lru_hits: AtomicU64,
    window: u64,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    windows: u64,
    tiny_lfu_hits: u64,
    lru_hits: u64,
    /// The moving average of (LRU's hit ratio − TinyLFU's) per window.
    lru_lead: f64,
}

impl Shadow {
    /// A simulation for an L1 of `capacity` entries (at least 1).
    pub(crate) fn new(capacity: u64) -> Self {
        let capacity = capacity.max(1);
        let mut shift = 0;
        while capacity >> (shift + 1) >= SIMULATED_KEYS {
            shift += 1;
        }
        let simulated = capacity.div_ceil(1 << shift);
        let cache = |policy| {
            Cache::builder()
                .max_capacity(simulated)
                .eviction_policy(policy)
                .build()
        };
        Shadow {
            mask: (1 << shift) - 1,
            hasher: foldhash::fast::FixedState::with_seed(0x5eed_ca11),
            tiny_lfu: cache(EvictionPolicy::tiny_lfu()),
            lru: cache(EvictionPolicy::lru()),
            sampled: AtomicU64::new(0),
            tiny_lfu_hits: AtomicU64::new(0),
            lru_hits: AtomicU64::new(0),
            window: simulated,
            tally: Mutex::default(),
        }
    }

    /// Simulates an access to `key` if it is sampled. Returns the policy the
    /// simulation prefers when a window closes with a clear verdict.
    #[inline]
    pub(crate) fn record<K: std::hash::Hash + ?Sized>(&self, key: &K) -> Option<L1Eviction> {
        let hash = self.hasher.hash_one(key);
        if hash & self.mask != 0 {
            return None;
        }
        self.access(hash)
    }

    fn access(&self, hash: u64) -> Option<L1Eviction> {
        for (cache, hits) in [
            (&self.tiny_lfu, &self.tiny_lfu_hits),
            (&self.lru, &self.lru_hits),
        ] {
            // A miss is a read too (moka's sketch counts it), then an insert: what
            // L1 sees of a missed key that is then loaded.
            if cache.get(&hash).is_some() {
                hits.fetch_add(1, Ordering::Relaxed);
            } else {
                cache.insert(hash, ());
            }
        }
        let sampled = self.sampled.fetch_add(1, Ordering::Relaxed) + 1;
        if sampled.is_multiple_of(self.window) {
            self.close_window()
        } else {
            None
        }
    }

    fn close_window(&self) -> Option<L1Eviction> {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        let tiny_lfu = self.tiny_lfu_hits.load(Ordering::Relaxed);
        let lru = self.lru_hits.load(Ordering::Relaxed);
        let window = self.window as f64;
        let lead = lru.saturating_sub(tally.lru_hits) as f64 / window
            - tiny_lfu.saturating_sub(tally.tiny_lfu_hits) as f64 / window;
        tally.tiny_lfu_hits = tiny_lfu;
        tally.lru_hits = lru;
        tally.windows += 1;
        tally.lru_lead += (lead - tally.lru_lead) / 8.0;
        if tally.windows <= WARM_UP_WINDOWS {
            None
        } else if tally.lru_lead > MARGIN {
            Some(L1Eviction::Lru)
        } else if tally.lru_lead < -MARGIN {
            Some(L1Eviction::TinyLfu)
        } else {
            None
        }
    }

    /// How many keys in every 2^k are simulated (1 means every key).
    #[cfg(test)]
    fn sampling(&self) -> u64 {
        self.mask + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdicts of a stream of keys.
    fn verdicts(shadow: &Shadow, keys: impl Iterator<Item = u64>) -> Vec<L1Eviction> {
        keys.filter_map(|key| shadow.record(&key)).collect()
    }

    #[test]
    fn small_caches_are_simulated_whole_and_large_ones_sampled() {
        assert_eq!(Shadow::new(100).sampling(), 1);
        assert_eq!(Shadow::new(2047).sampling(), 1);
        assert_eq!(Shadow::new(2048).sampling(), 2);
        let large = Shadow::new(1_000_000);
        assert_eq!(large.sampling(), 512);
        assert!((1024..2048).contains(&large.window));
    }

    #[test]
    fn a_moving_hot_set_prefers_lru() {
        // 200 hot keys out of a cache of 1,000; every 2,000 accesses the hot set
        // moves to keys never seen before. TinyLFU keeps the old, frequent keys
        // out of habit; LRU follows.
        let shadow = Shadow::new(1000);
        let mut rng = fastrand::Rng::with_seed(7);
        let keys = (0..200_000u64).map(|i| (i / 2_000) * 1_000_000 + rng.u64(0..200));
        let verdicts = verdicts(&shadow, keys);
        assert!(verdicts.len() > 10, "{verdicts:?}");
        assert!(
            verdicts.iter().all(|v| *v == L1Eviction::Lru),
            "{verdicts:?}"
        );
    }

    #[test]
    fn a_stable_skewed_set_with_scans_prefers_tiny_lfu() {
        // 800 keys drawn with a skew (the square of a uniform draw), broken by
        // one-touch scans: LRU lets each scan flush the hot keys, TinyLFU does not.
        let shadow = Shadow::new(500);
        let mut rng = fastrand::Rng::with_seed(11);
        let mut scan = 1_000_000u64;
        let keys = (0..200_000u64).map(|i| {
            if i % 5_000 < 4_000 {
                let u = rng.f64();
                (u * u * 800.0) as u64
            } else {
                scan += 1;
                scan
            }
        });
        let verdicts = verdicts(&shadow, keys);
        assert!(verdicts.len() > 10, "{verdicts:?}");
        assert!(
            verdicts.iter().all(|v| *v == L1Eviction::TinyLfu),
            "{verdicts:?}"
        );
    }

    #[test]
    fn equal_policies_give_no_verdict() {
        // Everything fits: both hit on every access after the first.
        let shadow = Shadow::new(1000);
        let keys = (0..100_000u64).map(|i| i % 100);
        assert_eq!(verdicts(&shadow, keys), vec![]);
    }
}
