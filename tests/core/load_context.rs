//! What a loader is told and may answer (`LoadContext`, `Loaded`): TTLs of its
//! own in both tiers, "not modified" with the stale copy kept, against the
//! in-memory store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::eventually;
use tiered::{
    loader_with_context_fn, BoxError, Error, LoadContext, Loaded, ManualClock, MemoryStore,
    TieredCache,
};

/// Adaptive TTL: the loader gives odd keys 7 s and even keys the configured
/// 60 s; L2 keeps each entry for its own TTL, and L1 expires it then too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_the_loader_sets_is_honoured_in_both_tiers() {
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    let loads = Arc::new(AtomicU64::new(0));
    let counter = loads.clone();
    let cache = TieredCache::<u64, u64>::builder("context-ttl")
        .clock(clock.clone())
        .l2(store.clone())
        .jitter(0.0)
        .l1_ttl(Duration::from_secs(60))
        .l2_ttl(Duration::from_secs(60))
        .no_early_refresh()
        .loader(loader_with_context_fn(
            move |key: u64, _: LoadContext<u64>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let loaded = Loaded::value(key * 10);
                    Ok::<_, BoxError>(if key % 2 == 1 {
                        loaded.with_ttl(Duration::from_secs(7))
                    } else {
                        loaded
                    })
                }
            },
        ))
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some(10));
    assert_eq!(cache.get(&2).await.unwrap(), Some(20));
    // The store keeps an entry past its life by a grace (its life, at most
    // the reservation TTL of 30 s): 7 + 7 s and 60 + 30 s.
    let l2_ttl = |key: u64| store.ttl(&cache.l2_key(&key).unwrap()).unwrap().unwrap();
    assert_eq!(l2_ttl(1), Duration::from_secs(14), "the loader's TTL in L2");
    assert_eq!(
        l2_ttl(2),
        Duration::from_secs(90),
        "the configured TTL in L2"
    );
    clock.advance(Duration::from_secs(7));
    assert_eq!(cache.get(&2).await.unwrap(), Some(20));
    assert_eq!(cache.stats().l1.misses, 2, "key 2 is still an L1 hit");
    assert_eq!(cache.get(&1).await.unwrap(), Some(10));
    let stats = cache.stats();
    assert_eq!(stats.l1.misses, 3, "key 1 left L1 after 7 s");
    assert_eq!(loads.load(Ordering::SeqCst), stats.loads);
}

/// `with_l1_ttl` shortens L1 only: past it, the entry comes back from L2
/// without a load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l1_ttl_the_loader_sets_leaves_l2_its_own() {
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    let cache = TieredCache::<u64, u64>::builder("context-l1-ttl")
        .clock(clock.clone())
        .l2(store.clone())
        .jitter(0.0)
        .l1_ttl(Duration::from_secs(60))
        .l2_ttl(Duration::from_secs(60))
        .no_early_refresh()
        .loader(loader_with_context_fn(
            |key: u64, _: LoadContext<u64>| async move {
                Ok::<_, BoxError>(Loaded::value(key).with_l1_ttl(Duration::from_secs(2)))
            },
        ))
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some(1));
    let l2_key = cache.l2_key(&1).unwrap();
    assert_eq!(
        store.ttl(&l2_key).unwrap(),
        Some(Duration::from_secs(90)),
        "60 s and the store's grace"
    );
    clock.advance(Duration::from_secs(3));
    assert_eq!(cache.get(&1).await.unwrap(), Some(1));
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.l2.hits), (1, 1), "read again from L2");
}

/// Conditional refresh: the loader sees the stale copy and answers "not
/// modified"; the stale value is cached again as fresh without being built
/// again, after one call to the source. (L1 only: the manual clock does not
/// move the wall-clock times L2 entries carry; tests/servers/cache_aside.rs
/// shows L2 written again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_modified_keeps_the_stale_value_after_one_source_call() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (counter, log) = (calls.clone(), seen.clone());
    let cache = TieredCache::<u64, String>::builder("context-not-modified")
        .clock(clock.clone())
        .jitter(0.0)
        .l1_ttl(Duration::from_secs(10))
        .no_early_refresh()
        .stale_while_revalidate(Duration::from_secs(60))
        .loader(loader_with_context_fn(
            move |key: u64, context: LoadContext<String>| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                log.lock()
                    .unwrap()
                    .push((context.stale_value().cloned(), context.stale_for()));
                async move {
                    Ok::<_, BoxError>(match context.has_stale() {
                        true => Loaded::not_modified(),
                        false => Loaded::value(format!("{key} built by call {n}")),
                    })
                }
            },
        ))
        .build()
        .unwrap();
    assert_eq!(
        cache.get(&1).await.unwrap().as_deref(),
        Some("1 built by call 1")
    );
    clock.advance(Duration::from_secs(12));
    assert_eq!(
        cache.get(&1).await.unwrap().as_deref(),
        Some("1 built by call 1"),
        "stale, at once"
    );
    eventually("the refresh", || async { cache.stats().not_modified == 1 }).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one source call to refresh"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (None, None),
            (
                Some("1 built by call 1".to_owned()),
                Some(Duration::from_secs(2))
            )
        ],
        "the refresh saw the stale value, 2 s past its TTL"
    );
    // Fresh again, for a whole TTL from the refresh.
    eventually("the entry fresh again", || async {
        cache.run_pending_tasks().await;
        clock.advance(Duration::ZERO);
        cache.stats().stale_served == 1 && {
            let before = cache.stats().l1.hits;
            cache.get(&1).await.unwrap();
            cache.stats().stale_served == 1 && cache.stats().l1.hits == before + 1
        }
    })
    .await;
    clock.advance(Duration::from_secs(9));
    assert_eq!(
        cache.get(&1).await.unwrap().as_deref(),
        Some("1 built by call 1")
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.refreshes, stats.stale_served, stats.loads),
        (1, 1, 2),
        "9 s after the refresh: a fresh hit"
    );
}

/// A stale copy invalidated while its refresh runs is not what "not modified"
/// brings back: the attempt that follows the invalidation is told of no stale
/// copy, and builds the value. (Before, the refresh's next attempt still held
/// the invalidated copy, the loader answered "not modified", and the old value
/// was cached again as fresh.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_modified_never_brings_back_an_invalidated_copy() {
    let clock = ManualClock::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(AtomicU64::new(0));
    let (counter, wait, told) = (calls.clone(), gate.clone(), entered.clone());
    let cache = TieredCache::<u64, String>::builder("context-invalidated")
        .clock(clock.clone())
        .jitter(0.0)
        .l1_ttl(Duration::from_secs(10))
        .no_early_refresh()
        .stale_while_revalidate(Duration::from_secs(60))
        .loader(loader_with_context_fn(
            move |_: u64, context: LoadContext<String>| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let (wait, told) = (wait.clone(), told.clone());
                async move {
                    if n == 2 {
                        told.notify_one();
                        wait.acquire().await?.forget();
                    }
                    // A loader with no version to compare: the stale copy is
                    // always current, as far as it knows.
                    Ok::<_, BoxError>(match context.has_stale() {
                        true => Loaded::not_modified(),
                        false => Loaded::value(format!("built by call {n}")),
                    })
                }
            },
        ))
        .build()
        .unwrap();
    assert_eq!(
        cache.get(&1).await.unwrap().as_deref(),
        Some("built by call 1")
    );
    clock.advance(Duration::from_secs(12));
    assert_eq!(
        cache.get(&1).await.unwrap().as_deref(),
        Some("built by call 1")
    );
    entered.notified().await; // the refresh's load is running
    cache.invalidate(&1).await;
    gate.add_permits(1);
    eventually("the refresh's end", || async { cache.stats().loads >= 3 }).await;
    let value = cache.get(&1).await.unwrap();
    assert_eq!(
        value.as_deref(),
        Some("built by call 3"),
        "not the invalidated copy"
    );
    assert_eq!(
        cache.stats().not_modified,
        1,
        "only the superseded attempt said so"
    );
}

/// "Not modified" with no stale copy is a load error that says so, cached
/// nowhere.
#[tokio::test]
async fn not_modified_without_a_stale_copy_is_an_error() {
    let cache = TieredCache::<u64, u64>::builder("context-nothing-stale")
        .loader(loader_with_context_fn(
            |_: u64, _: LoadContext<u64>| async { Ok::<_, BoxError>(Loaded::not_modified()) },
        ))
        .build()
        .unwrap();
    for _ in 0..2 {
        match cache.get(&1).await {
            Err(Error::Load { source, .. }) => {
                assert!(source.to_string().contains("not modified"), "{source}");
            }
            other => panic!("expected a load error, got {other:?}"),
        }
    }
    assert_eq!(cache.stats().loads, 2, "the failure is not cached");
}
