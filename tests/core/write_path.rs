//! Inserts and invalidations, and their race with loads in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tiered::{BoxError, CacheKey, TieredCache};

use crate::support::rewrites::reads_follow_invalidations;
use tokio::sync::Notify;

/// A "database" row whose version the test bumps, and a loader that can be held
/// mid-load until the test releases it.
struct Source {
    version: AtomicU64,
    loads: AtomicU64,
    started: Notify,
    release: Notify,
    hold_first: bool,
}

fn cache_over(source: Arc<Source>) -> TieredCache<String, u64> {
    TieredCache::builder("race")
        .loader_fn(move |_k: String| {
            let source = source.clone();
            async move {
                let n = source.loads.fetch_add(1, Ordering::SeqCst);
                let seen = source.version.load(Ordering::SeqCst);
                if n == 0 && source.hold_first {
                    source.started.notify_one();
                    source.release.notified().await;
                }
                Ok::<_, BoxError>(Some(seen))
            }
        })
        .build()
        .unwrap()
}

/// A `get` running in its own task.
fn spawn_get(
    cache: &TieredCache<String, u64>,
    key: &str,
) -> tokio::task::JoinHandle<Result<Option<u64>, tiered::Error>> {
    let (cache, key) = (cache.clone(), key.to_owned());
    tokio::spawn(async move { cache.get(&key).await })
}

fn source(hold_first: bool) -> Arc<Source> {
    Arc::new(Source {
        version: AtomicU64::new(1),
        loads: AtomicU64::new(0),
        started: Notify::new(),
        release: Notify::new(),
        hold_first,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_load_keeps_the_old_value_out() {
    let source = source(true);
    let cache = cache_over(source.clone());
    let key = "k".to_owned();
    let reader = spawn_get(&cache, &key);
    // The load has read version 1; the database moves on and the cache is told.
    source.started.notified().await;
    source.version.store(2, Ordering::SeqCst);
    cache.invalidate(&key).await;
    source.release.notify_one();

    // The flight noticed, reloaded, and hands out (and caches) version 2.
    assert_eq!(reader.await.unwrap().unwrap(), Some(2));
    assert_eq!(cache.get(&key).await.unwrap(), Some(2));
    let stats = cache.stats();
    assert_eq!(stats.superseded, 1);
    assert_eq!(stats.loads, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_all_during_a_load_keeps_the_old_value_out() {
    let source = source(true);
    let cache = cache_over(source.clone());
    let key = "k".to_owned();
    let reader = spawn_get(&cache, &key);
    source.started.notified().await;
    source.version.store(2, Ordering::SeqCst);
    cache.invalidate_all().await;
    source.release.notify_one();
    assert_eq!(reader.await.unwrap().unwrap(), Some(2));
    assert_eq!(cache.get(&key).await.unwrap(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_during_a_load_is_not_overwritten_by_the_old_value() {
    let source = source(true);
    let cache = cache_over(source.clone());
    let key = "k".to_owned();
    let reader = spawn_get(&cache, &key);
    source.started.notified().await;
    // Write-through: the service updates the database, then the cache.
    source.version.store(3, Ordering::SeqCst);
    cache.insert(key.clone(), 3).await;
    source.release.notify_one();
    assert_eq!(reader.await.unwrap().unwrap(), Some(3));
    assert_eq!(cache.get(&key).await.unwrap(), Some(3));
}

#[tokio::test]
async fn invalidate_removes_and_the_next_get_reloads() {
    let source = source(false);
    let cache = cache_over(source.clone());
    let key = "k".to_owned();
    assert_eq!(cache.get(&key).await.unwrap(), Some(1));
    source.version.store(2, Ordering::SeqCst);
    assert_eq!(cache.get(&key).await.unwrap(), Some(1), "cached");
    cache.invalidate(&key).await;
    assert_eq!(cache.get(&key).await.unwrap(), Some(2));
    source.version.store(3, Ordering::SeqCst);
    cache.invalidate_all().await;
    assert_eq!(cache.get(&key).await.unwrap(), Some(3));
    assert_eq!(cache.stats().invalidations, 2);
}

#[tokio::test]
async fn inserts_are_served_and_counted() {
    let cache = TieredCache::<String, u64>::builder("ins").build().unwrap();
    cache.insert("a".into(), 1).await;
    cache
        .insert_with_ttl("b".into(), 2, Duration::from_secs(1))
        .await;
    cache.insert_with_ttl("c".into(), 3, Duration::ZERO).await;
    assert_eq!(cache.get("a").await.unwrap(), Some(1));
    assert_eq!(cache.get("b").await.unwrap(), Some(2));
    assert_eq!(cache.get("c").await.unwrap(), None, "a zero TTL removes");
    assert_eq!(cache.stats().inserts, 2);
}

/// Writers invalidate the very keys a stream of reads is loading: a read after
/// `invalidate` returns never gets a version older than the write before it. (A
/// caller used to join a flight that began before the invalidation, and take
/// what that flight had found in L1, or committed, before it.) L1 only: with
/// Redis in the path an invalidation is too slow to fit in that window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_after_invalidate_never_joins_an_older_flight() {
    let mut rng = fastrand::Rng::with_seed(9);
    // 100 hot keys at a time, moving every 1,000 reads.
    let trace = (0..60_000u64)
        .map(|i| (i / 1_000) * 1_000 + rng.u64(0..100))
        .collect();
    let (checked, _) = reads_follow_invalidations(tiered::L1Eviction::TinyLfu, trace, 3).await;
    assert!(checked > 500, "only {checked} invalidations were checked");
}

/// One hot key: readers hammer it while writers bump its row, invalidate it and
/// read it back. A read after `invalidate` returns never gets an older row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_key_read_back_after_invalidate_is_never_older() {
    let row = Arc::new(AtomicU64::new(0));
    let db = Arc::clone(&row);
    // An adaptive L1 empties two caches per invalidation: the widest window.
    let cache = TieredCache::<u64, u64>::builder("hot")
        .l1_eviction(tiered::L1Eviction::Adaptive)
        .loader_fn(move |_key: u64| {
            let version = db.load(Ordering::SeqCst);
            async move { Ok::<_, BoxError>(Some(version)) }
        })
        .build()
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (cache, stop) = (cache.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    cache.get(&1).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let (cache, row) = (cache.clone(), row.clone());
            tokio::spawn(async move {
                for _ in 0..3_000 {
                    let version = row.fetch_add(1, Ordering::SeqCst) + 1;
                    cache.invalidate(&1).await;
                    let read = cache.get(&1).await.unwrap().unwrap();
                    assert!(read >= version, "read {read} after writing {version}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
}

/// A write during a store outage says it is queued (with what is owed); once
/// the store is back, `flush` sends it and says applied, and another instance
/// reads the new value. A publish that fails is queued too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_say_what_happened_and_flush_sends_what_waits() {
    use tiered::{MemoryBus, MemoryStore, Written};
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let (a_store, a_bus) = (store.connect(), bus.connect());
    let instance = |store: MemoryStore, bus: MemoryBus| {
        TieredCache::<String, u64>::builder("written")
            .l2(store)
            .bus(bus)
            .l2_timeout(Duration::from_millis(50))
            .build()
            .unwrap()
    };
    let a = instance(a_store.clone(), a_bus.clone());
    assert_eq!(a.insert("k".into(), 1).await, Written::Applied);
    a_store.disconnect();
    let written = a.insert("k".into(), 2).await;
    assert!(
        matches!(written, Written::Queued { owed, .. } if owed >= 1),
        "{written:?}"
    );
    assert_eq!(a.get("k").await.unwrap(), Some(2), "here at once");
    a_store.reconnect();
    assert_eq!(a.flush(Duration::from_secs(5)).await, Written::Applied);
    let b = instance(store.connect(), bus.connect());
    assert_eq!(b.get("k").await.unwrap(), None, "the old entry went");

    a_bus.fail_next_publishes(1_000_000);
    let written = a.invalidate("k").await;
    assert!(
        matches!(written, Written::Queued { unsent, .. } if unsent >= 1),
        "{written:?}"
    );
    assert!(!a.flush(Duration::from_millis(50)).await.is_applied());
    a_bus.clear_faults();
    assert_eq!(a.flush(Duration::from_secs(5)).await, Written::Applied);
}

/// Tuple keys: their string form is one-to-one, and another instance's
/// invalidation reaches them (parsed back, not by a walk of L1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuple_keys_round_trip_across_instances() {
    use tiered::{MemoryBus, MemoryStore};
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let instance = || {
        TieredCache::<(u64, String), u64>::builder("tuples")
            .l2(store.connect())
            .bus(bus.connect())
            .build()
            .unwrap()
    };
    let (a, b) = (instance(), instance());
    let key = (7, "a:b".to_owned());
    let other = (7, "a".to_owned());
    a.insert(key.clone(), 1).await;
    a.insert(other.clone(), 2).await;
    assert_eq!(b.get(&key).await.unwrap(), Some(1), "from L2");
    assert_eq!(b.get(&other).await.unwrap(), Some(2));
    assert!(a.l2_key(&key).unwrap().ends_with(":7:a\\:b"));
    a.invalidate(&key).await;
    crate::support::eventually("b drops it", || async {
        b.get(&key).await.unwrap().is_none()
    })
    .await;
    assert_eq!(b.get(&other).await.unwrap(), Some(2));
    // A pattern over a part with ':' takes the part's escaped form.
    a.insert((8, "x:y".to_owned()), 3).await;
    let glob = format!("8:{}", tiered::escape_glob(&("x:y",).to_key_string()));
    a.invalidate_pattern(&glob).await;
    assert_eq!(a.get(&(8, "x:y".to_owned())).await.unwrap(), None);
}

#[tokio::test]
async fn dropping_the_last_handle_still_sends_what_was_queued() {
    let store = tiered::MemoryStore::new();
    let handle = store.connect();
    let cache = TieredCache::<String, u64>::builder("dropped")
        .l2(handle.clone())
        .build()
        .unwrap();
    cache.insert("k".into(), 1).await;
    let l2_key = cache.l2_key("k").unwrap();
    assert!(store.raw(&l2_key).is_some());
    handle.disconnect();
    assert!(matches!(
        cache.invalidate("k").await,
        tiered::Written::Queued { owed: 1, .. }
    ));
    handle.reconnect();
    // No flush: the process drops its cache (a shutdown that forgot it).
    drop(cache);
    crate::support::eventually("the owed deletion lands after the drop", || async {
        store.raw(&l2_key).is_none()
    })
    .await;
}
