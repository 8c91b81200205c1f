//! `L1Eviction::Adaptive`: it picks the better policy for the traffic, and a
//! switch (a new L1, entries moved over) loses no invalidation.

use tiered::{BoxError, L1Eviction, TieredCache};

use crate::support::rewrites::reads_follow_invalidations;

/// 200 hot keys (drawn uniformly) that move to keys never seen before every
/// 2,000 requests: LRU follows them, TinyLFU keeps the old ones out of habit.
fn moving_hot_set(requests: u64, seed: u64) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..requests)
        .map(|i| (i / 2_000) * 1_000_000 + rng.u64(0..200))
        .collect()
}

/// Skewed traffic over 800 keys, with a one-touch scan of 1,000 keys after every
/// 4,000 requests: TinyLFU keeps the scans out, LRU lets them flush the hot keys.
fn skewed_with_scans(requests: u64, seed: u64) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut scan = 1_000_000u64;
    (0..requests)
        .map(|i| {
            if i % 5_000 < 4_000 {
                let u = rng.f64();
                (u * u * 800.0) as u64
            } else {
                scan += 1;
                scan
            }
        })
        .collect()
}

/// The L1 hit ratio and the stats after replaying `trace`.
async fn replay(trace: &[u64], policy: L1Eviction) -> (f64, tiered::Stats) {
    let cache = TieredCache::<u64, u64>::builder("adaptive")
        .l1_max_entries(1000)
        .l1_eviction(policy)
        .build()
        .unwrap();
    for &key in trace {
        let load = std::future::ready(Ok::<_, BoxError>(Some(key)));
        assert_eq!(cache.get_with(&key, load).await.unwrap(), Some(key));
    }
    let stats = cache.stats();
    (stats.l1.hit_ratio(), stats)
}

#[tokio::test]
async fn an_adaptive_l1_switches_to_lru_for_a_moving_hot_set() {
    let trace = moving_hot_set(100_000, 1);
    let (tiny_lfu, _) = replay(&trace, L1Eviction::TinyLfu).await;
    let (lru, _) = replay(&trace, L1Eviction::Lru).await;
    let (adaptive, stats) = replay(&trace, L1Eviction::Adaptive).await;
    assert!(
        lru > tiny_lfu + 0.05,
        "the trace favours LRU: {lru:.3} against {tiny_lfu:.3}"
    );
    assert_eq!(stats.l1_policy, L1Eviction::Lru);
    assert_eq!(stats.l1_policy_switches, 1, "one switch, no flapping");
    assert!(
        adaptive > tiny_lfu && adaptive >= lru - 0.03,
        "adaptive {adaptive:.3}, LRU {lru:.3}, TinyLFU {tiny_lfu:.3}"
    );
}

#[tokio::test]
async fn an_adaptive_l1_keeps_tiny_lfu_for_skewed_traffic_with_scans() {
    let trace = skewed_with_scans(100_000, 2);
    let (tiny_lfu, _) = replay(&trace, L1Eviction::TinyLfu).await;
    let (lru, _) = replay(&trace, L1Eviction::Lru).await;
    let (adaptive, stats) = replay(&trace, L1Eviction::Adaptive).await;
    assert!(
        tiny_lfu > lru + 0.05,
        "the trace favours TinyLFU: {tiny_lfu:.3} against {lru:.3}"
    );
    assert_eq!(stats.l1_policy, L1Eviction::TinyLfu);
    assert_eq!(stats.l1_policy_switches, 0);
    assert!(
        (adaptive - tiny_lfu).abs() < 0.005,
        "adaptive {adaptive:.3} against TinyLFU {tiny_lfu:.3}"
    );
}

#[test]
fn an_adaptive_l1_needs_an_entry_count() {
    let built = TieredCache::<u64, u64>::builder("adaptive-bytes")
        .l1_max_bytes(1 << 20)
        .l1_eviction(L1Eviction::Adaptive)
        .build();
    let error = built.unwrap_err().to_string();
    assert!(error.contains("l1_max_entries"), "{error}");
}

/// While traffic makes L1 switch back and forth (a new cache each time, the old
/// one drained into it by a task of its own), writers invalidate the keys the
/// traffic reads: a read after `invalidate` returns never gets an older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_invalidation_is_lost_while_l1_switches_policy() {
    // Blocks that favour LRU, then TinyLFU, in turn (each key space its own).
    let trace: Vec<u64> = (0..6u64)
        .flat_map(|block| {
            let keys = if block % 2 == 0 {
                moving_hot_set(40_000, block)
            } else {
                skewed_with_scans(60_000, block)
            };
            keys.into_iter().map(move |key| key + block * 1_000_000_000)
        })
        .collect();
    let (checked, stats) = reads_follow_invalidations(L1Eviction::Adaptive, trace, 3).await;
    assert!(
        stats.l1_policy_switches >= 4,
        "L1 switched {} times",
        stats.l1_policy_switches
    );
    assert!(checked > 1_000, "only {checked} invalidations were checked");
}
