//! The read path with closure loaders: flights, errors, panics, expiry, weights.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tiered::{BoxError, Error, ManualClock, TieredCache};

use crate::support::at_once;

#[derive(Debug)]
struct Boom(u32);

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "boom {}", self.0)
    }
}

impl std::error::Error for Boom {}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_loader_fails_every_waiter_without_poisoning_the_cache() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let cache = TieredCache::<u32, String>::builder("panics")
        .loader_fn(move |k: u32| {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if first {
                    panic!("loader exploded on {k}");
                }
                Ok::<_, BoxError>(Some(format!("v{k}")))
            }
        })
        .build()
        .unwrap();
    // No task panics (at_once would fail): each gets the contained panic as an error.
    let results = at_once(50, || {
        let cache = cache.clone();
        async move { cache.get(&1).await }
    })
    .await;
    for result in results {
        match result {
            Err(Error::LoaderPanicked { key, message }) => {
                assert_eq!(key, "1");
                assert_eq!(message, "loader exploded on 1");
            }
            other => panic!("expected LoaderPanicked, got {other:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one flight, one panic");
    assert_eq!(cache.get(&1).await.unwrap().as_deref(), Some("v1"));
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_errors), (2, 1));
}

#[tokio::test]
async fn get_with_errors_keep_their_source_and_are_not_cached() {
    let cache = TieredCache::<String, u32>::builder("adhoc")
        .build()
        .unwrap();
    let key = "k".to_owned();
    let err = cache
        .get_with(&key, async { Err::<Option<u32>, _>(Boom(7)) })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "loading key `k` failed: boom 7");
    let source = std::error::Error::source(&err).unwrap();
    assert_eq!(source.downcast_ref::<Boom>().unwrap().0, 7);

    let ok = cache.get_with(&key, async { Ok::<_, Boom>(Some(3)) }).await;
    assert_eq!(ok.unwrap(), Some(3));
    // Now cached: the loader future is not polled.
    let hit = cache
        .get_with(&key, async {
            unreachable!("a hit does not load") as Result<Option<u32>, Boom>
        })
        .await;
    assert_eq!(hit.unwrap(), Some(3));
}

#[tokio::test]
async fn without_a_loader_get_reads_the_cache_only() {
    let cache = TieredCache::<u64, u64>::builder("plain").build().unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), None);
    cache.insert(1, 10).await;
    assert_eq!(cache.get(&1).await.unwrap(), Some(10));
    let got = cache.get_many(&[1, 2]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(cache.stats().loads, 0);
}

#[tokio::test]
async fn an_empty_get_many_is_fine() {
    let cache = TieredCache::<u64, u64>::builder("empty")
        .loader_fn(|_k: u64| async { Err::<Option<u64>, BoxError>("never called".into()) })
        .build()
        .unwrap();
    assert!(cache.get_many(&[]).await.unwrap().is_empty());
    assert_eq!(cache.stats().loads, 0);
}

#[tokio::test]
async fn a_value_heavier_than_l1_is_returned_but_not_kept() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let cache = TieredCache::<u64, Vec<u8>>::builder("weights")
        .l1_max_bytes(64 * 1024)
        .loader_fn(move |k: u64| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(Some(vec![7u8; if k == 0 { 1 << 20 } else { 100 }])) }
        })
        .build()
        .unwrap();
    for _ in 0..2 {
        let huge = cache.get(&0).await.unwrap().unwrap();
        assert_eq!(huge.len(), 1 << 20);
        cache.run_pending_tasks().await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the huge value is loaded each time"
    );
    for _ in 0..2 {
        assert_eq!(cache.get(&1).await.unwrap().unwrap().len(), 100);
        cache.run_pending_tasks().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the small value is kept");
    assert_eq!(cache.stats().l1_entries, 1);
}

#[tokio::test]
async fn entries_expire_by_the_cache_clock_and_explicit_ttls_are_exact() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let cache = TieredCache::<u64, usize>::builder("ttl")
        .l1_ttl(Duration::from_secs(100))
        .jitter(0.25)
        .clock(clock.clone())
        .loader_fn(move |_k: u64| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(Some(n)) }
        })
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some(0));
    // With 25% jitter the entry lives 75 to 100 s.
    clock.advance(Duration::from_secs(74));
    assert_eq!(cache.get(&1).await.unwrap(), Some(0));
    clock.advance(Duration::from_secs(26));
    assert_eq!(cache.get(&1).await.unwrap(), Some(1));

    cache.insert_with_ttl(2, 99, Duration::from_secs(5)).await;
    clock.advance(Duration::from_millis(4999));
    assert_eq!(cache.get(&2).await.unwrap(), Some(99));
    clock.advance(Duration::from_millis(1));
    assert_eq!(cache.get(&2).await.unwrap(), Some(2), "expired, so loaded");
}

#[tokio::test]
async fn negative_caching_can_be_turned_off() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let cache = TieredCache::<u64, u64>::builder("noneg")
        .negative_ttl(Duration::ZERO)
        .loader_fn(move |_k: u64| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(None) }
        })
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), None);
    assert_eq!(cache.get(&1).await.unwrap(), None);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_many_shares_flights_with_concurrent_gets() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let cache = TieredCache::<u64, u64>::builder("mixed")
        .loader_fn(move |k: u64| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, BoxError>(Some(k * 2))
            }
        })
        .build()
        .unwrap();
    // A slow single-key load of key 5 is under way when the batch asks for it.
    let single = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get(&5).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let batch = cache.get_many(&[4, 5, 6]).await.unwrap();
    assert_eq!(single.await.unwrap().unwrap(), Some(10));
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[&5], 10);
    assert!(
        cache.stats().coalesced >= 1,
        "key 5 of the batch waited on the single load"
    );
}

/// Callers whose deadline is shorter than the load: the load started by the first
/// one goes on after it gave up, the next callers join it rather than start
/// another, and once it is done the value is served. (Before, each caller's
/// cancellation dropped the load, and with such deadlines no caller ever got a
/// value.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_outlives_callers_that_give_up() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let loads = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = loads.clone();
    let cache = tiered::TieredCache::<String, String>::builder("outlive")
        .loader_fn(move |key: String| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                Ok::<_, tiered::BoxError>(Some(format!("slow {key}")))
            }
        })
        .build()
        .unwrap();
    let key = "k".to_owned();
    let start = std::time::Instant::now();
    let value = loop {
        let deadline = std::time::Duration::from_millis(50);
        if let Ok(found) = tokio::time::timeout(deadline, cache.get(&key)).await {
            break found.unwrap();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "never loaded"
        );
    };
    assert_eq!(value.as_deref(), Some("slow k"));
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "one load for all the callers"
    );
}

/// L1 keeps as many hot keys as a bare moka cache of the same size fed the same
/// requests: a miss is counted once in moka's frequency sketch, as bare moka's
/// `try_get_with` counts it. (When the flight ran inside `try_get_with` after
/// the L1 read, every miss counted twice, and TinyLFU admitted more cold keys.)
#[tokio::test]
async fn l1_admits_hot_keys_as_well_as_bare_moka() {
    use crate::support::zipf::Zipf;
    const KEYS: usize = 100_000;
    let zipf = Zipf::new(KEYS, 0.99);
    let mut rng = fastrand::Rng::with_seed(7);
    let trace: Vec<u64> = (0..200_000).map(|_| zipf.sample(&mut rng) as u64).collect();
    let cache = TieredCache::<u64, u64>::builder("admission")
        .l1_max_entries(1000)
        .build()
        .unwrap();
    let bare: moka::future::Cache<u64, u64> = moka::future::Cache::new(1000);
    let mut bare_misses = 0u64;
    for &key in &trace {
        let load = std::future::ready(Ok::<_, BoxError>(Some(key)));
        cache.get_with(&key, load).await.unwrap();
        bare.get_with(key, async {
            bare_misses += 1;
            key
        })
        .await;
    }
    let tiered = cache.stats().l1.hit_ratio();
    let bare = 1.0 - bare_misses as f64 / trace.len() as f64;
    assert!(
        tiered >= bare - 0.005,
        "tiered's L1 hit ratio {tiered:.3} against bare moka's {bare:.3}"
    );
}

/// A caller whose own load (`get_with`) is cancelled while others wait on its
/// flight does not strand them: one of them runs its own load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_takes_over_when_the_caller_running_the_flight_gives_up() {
    let cache = TieredCache::<u64, u64>::builder("takeover")
        .build()
        .unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let runner = {
        let (cache, started) = (cache.clone(), started.clone());
        tokio::spawn(async move {
            let load = async move {
                started.notify_one();
                std::future::pending::<Result<Option<u64>, BoxError>>().await
            };
            tokio::time::timeout(Duration::from_millis(200), cache.get_with(&1, load)).await
        })
    };
    started.notified().await;
    let waiter = cache.get_with(&1, async { Ok::<_, BoxError>(Some(7)) });
    let value = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is not stranded");
    assert_eq!(value.unwrap(), Some(7));
    assert!(runner.await.unwrap().is_err(), "the runner gave up");
    assert_eq!(
        cache.stats().coalesced,
        0,
        "the waiter ran the next flight itself"
    );
    assert_eq!(
        cache.get(&1).await.unwrap(),
        Some(7),
        "and cached its value"
    );
}

/// Any finite early-refresh beta is accepted, and a huge one never panics (it
/// makes every hit draw a refresh).
#[tokio::test]
async fn a_huge_early_refresh_beta_never_panics() {
    for beta in [1e9, 1e300, f64::MAX] {
        let cache = TieredCache::<u32, u32>::builder("beta")
            .early_refresh(beta)
            .loader_fn(|k: u32| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<_, BoxError>(Some(k))
            })
            .build()
            .unwrap();
        for _ in 0..3 {
            assert_eq!(cache.get(&7).await.unwrap(), Some(7));
        }
    }
}

/// `get_many` of a key whose L2 entry is stale (kept for fail-safe) loads it
/// with the loader: the batch did not ask for it (L2 answered), and its "not
/// found" must not be cached as an absence.
#[tokio::test]
async fn get_many_loads_a_key_that_l2_answered_stale_instead_of_caching_an_absence() {
    let row = Arc::new(AtomicUsize::new(1));
    let db = Arc::clone(&row);
    // L2 times are wall-clock times (they are shared by instances): real TTLs.
    let cache = TieredCache::<u32, usize>::builder("stale-batch")
        .l2(tiered::MemoryStore::new())
        .jitter(0.0)
        .l1_ttl(Duration::from_millis(200))
        .l2_ttl(Duration::from_millis(200))
        .fail_safe(Duration::from_secs(3600))
        .loader_fn(move |_k: u32| {
            let value = db.load(Ordering::SeqCst);
            async move { Ok::<_, BoxError>(Some(value)) }
        })
        .build()
        .unwrap();
    cache.insert(7, 1).await;
    row.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await; // stale in L1 and L2, still kept
    let found = cache.get_many(&[7]).await.unwrap();
    assert_eq!(found.get(&7), Some(&2));
    assert_eq!(cache.get(&7).await.unwrap(), Some(2));
}

/// Several observers: each is called (before, the last one given replaced the
/// others, so `.observer(a).metrics()` dropped `a`).
#[tokio::test]
async fn every_observer_given_is_called() {
    use std::sync::atomic::AtomicU64;
    struct Hits(Arc<AtomicU64>);
    impl tiered::Observer for Hits {
        fn hit(&self, _tier: tiered::Tier) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let (a, b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let cache = TieredCache::<u64, u64>::builder("observed")
        .observer(Hits(a.clone()))
        .observer(Hits(b.clone()))
        .build()
        .unwrap();
    cache.insert(1, 10).await;
    assert_eq!(cache.get(&1).await.unwrap(), Some(10));
    assert_eq!((a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)), (1, 1));
}
