//! Cache-aside with a `'static` loader (`get_or_load`): the same freshness as the
//! configured loader (a flight that outlives its callers, early refresh,
//! stale-while-revalidate, fail-safe), on a cache that has no loader of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::eventually;
use tiered::{BoxError, ManualClock, TieredCache};

/// A `get_or_load` closure whose loads count themselves, take `delay`, and
/// return `v1`, `v2`, … (or fail while `failing` is set).
#[allow(clippy::type_complexity)]
fn counting(
    loads: &Arc<AtomicU64>,
    delay: Duration,
    failing: &Arc<std::sync::atomic::AtomicBool>,
) -> impl Fn(u64) -> futures_util::future::BoxFuture<'static, Result<Option<String>, BoxError>>
       + Send
       + Sync
       + 'static {
    let (loads, failing) = (loads.clone(), failing.clone());
    move |_key| {
        let (loads, failing) = (loads.clone(), failing.clone());
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
            if failing.load(Ordering::SeqCst) {
                return Err("the source is down".into());
            }
            Ok(Some(format!("v{n}")))
        })
    }
}

/// 100 callers that each give up after 50 ms on a 300 ms load, and try again
/// until they have the value: one load in all (with `get_with`, whose load dies
/// with the caller running it, each give-up starts the load over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_give_up_share_one_load_that_outlives_them() {
    let loads = Arc::new(AtomicU64::new(0));
    let failing = Arc::default();
    let cache = TieredCache::<u64, String>::builder("aside-cancel")
        .build()
        .unwrap();
    let load = Arc::new(counting(&loads, Duration::from_millis(300), &failing));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, load) = (cache.clone(), load.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                loop {
                    let load = Arc::clone(&load);
                    let call = cache.get_or_load(&1, move |k| load(k));
                    if let Ok(found) = tokio::time::timeout(Duration::from_millis(50), call).await {
                        return found.unwrap();
                    }
                    assert!(start.elapsed() < Duration::from_secs(10), "never loaded");
                }
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().as_deref(), Some("v1"));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for 100 callers");
    assert_eq!(cache.stats().loads, 1);
}

/// A hit just before its entry goes stale returns at once and refreshes the
/// entry in the background with the caller's closure, though the cache has no
/// loader of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_refreshed_early_with_the_callers_loader() {
    let (loads, failing) = (Arc::new(AtomicU64::new(0)), Arc::default());
    let clock = ManualClock::new();
    let cache = TieredCache::<u64, String>::builder("aside-early")
        .clock(clock.clone())
        .jitter(0.0)
        .l1_ttl(Duration::from_secs(10))
        .early_refresh(1.0)
        .build()
        .unwrap();
    let load = counting(&loads, Duration::from_millis(5), &failing);
    let load = Arc::new(load);
    let get = || {
        let load = Arc::clone(&load);
        cache.get_or_load(&1, move |k| load(k))
    };
    assert_eq!(get().await.unwrap().as_deref(), Some("v1"));
    // One nanosecond before it goes stale: an XFetch draw there always refreshes.
    clock.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    assert_eq!(get().await.unwrap().as_deref(), Some("v1"), "at once");
    eventually("the early refresh", || async {
        cache.stats().refreshes == 1 && loads.load(Ordering::SeqCst) == 2
    })
    .await;
    eventually("the refreshed value", || async {
        get().await.unwrap().as_deref() == Some("v2")
    })
    .await;
    // A plain `get` of the same cache reads what the closure loaded.
    assert_eq!(cache.get(&1).await.unwrap().as_deref(), Some("v2"));
}

/// Past its TTL, within the stale-while-revalidate window, a read returns the
/// stale value at once and the closure refreshes it once in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_are_served_while_the_callers_loader_refreshes_them() {
    let (loads, failing) = (Arc::new(AtomicU64::new(0)), Arc::default());
    let clock = ManualClock::new();
    let cache = TieredCache::<u64, String>::builder("aside-swr")
        .clock(clock.clone())
        .jitter(0.0)
        .l1_ttl(Duration::from_secs(10))
        .no_early_refresh()
        .stale_while_revalidate(Duration::from_secs(60))
        .build()
        .unwrap();
    let load = Arc::new(counting(&loads, Duration::from_millis(100), &failing));
    let get = || {
        let load = Arc::clone(&load);
        cache.get_or_load(&1, move |k| load(k))
    };
    assert_eq!(get().await.unwrap().as_deref(), Some("v1"));
    clock.advance(Duration::from_secs(11));
    for _ in 0..50 {
        assert_eq!(
            get().await.unwrap().as_deref(),
            Some("v1"),
            "stale, at once"
        );
    }
    assert_eq!(cache.stats().refreshes, 1, "one refresh for 50 stale reads");
    eventually("the refreshed value", || async {
        get().await.unwrap().as_deref() == Some("v2")
    })
    .await;
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

/// A failing closure is answered with the stale copy fail-safe kept, which is
/// then served for the throttle before the closure is called again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_answers_a_failing_callers_loader_with_the_stale_copy() {
    let loads = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clock = ManualClock::new();
    let cache = TieredCache::<u64, String>::builder("aside-fail-safe")
        .clock(clock.clone())
        .jitter(0.0)
        .l1_ttl(Duration::from_secs(10))
        .no_early_refresh()
        .fail_safe(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_secs(30))
        .build()
        .unwrap();
    let load = Arc::new(counting(&loads, Duration::ZERO, &failing));
    let get = || {
        let load = Arc::clone(&load);
        cache.get_or_load(&1, move |k| load(k))
    };
    assert_eq!(get().await.unwrap().as_deref(), Some("v1"));
    failing.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(11));
    assert_eq!(get().await.unwrap().as_deref(), Some("v1"), "fail-safe");
    assert_eq!(cache.stats().fail_safe, 1);
    assert_eq!(get().await.unwrap().as_deref(), Some("v1"), "throttled");
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "not called within the throttle"
    );
    failing.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_secs(31));
    assert_eq!(get().await.unwrap().as_deref(), Some("v3"));
}

/// Batch cache-aside: L1 answers what it has, and the rest is loaded with one
/// call of the caller's batch load; keys it did not return are remembered as
/// absent.
#[tokio::test]
async fn get_many_with_loads_what_is_missing_in_one_call() {
    let cache = TieredCache::<u64, u64>::builder("aside-many")
        .l2(tiered::MemoryStore::new())
        .build()
        .unwrap();
    cache.insert(1, 10).await;
    let calls = std::sync::Mutex::new(Vec::new());
    let load = |missing: Vec<u64>| {
        calls.lock().unwrap().push(missing.clone());
        async move {
            Ok::<_, BoxError>(
                missing
                    .into_iter()
                    .filter(|k| k % 2 == 0)
                    .map(|k| (k, k * 10))
                    .collect::<std::collections::HashMap<_, _>>(),
            )
        }
    };
    let found = cache.get_many_with(&[1, 2, 3, 4, 2], load).await.unwrap();
    assert_eq!(
        found,
        std::collections::HashMap::from([(1, 10), (2, 20), (4, 40)])
    );
    let mut batch = calls.lock().unwrap().clone();
    batch[0].sort_unstable();
    assert_eq!(
        batch,
        [vec![2, 3, 4]],
        "one call, for the missing keys only"
    );
    // Now every key is cached, the absence of 3 too.
    let again = cache.get_many_with(&[1, 2, 3, 4], load).await.unwrap();
    assert_eq!(again.len(), 3);
    assert_eq!(calls.lock().unwrap().len(), 1, "no second call");
    assert_eq!(cache.get(&3).await.unwrap(), None);
    assert_eq!(cache.stats().loads, 1);
}

/// A batch load's error reaches the caller as `Error::Load`, and nothing of it
/// is cached.
#[tokio::test]
async fn a_failing_batch_load_fails_the_call_and_caches_nothing() {
    let cache = TieredCache::<u64, u64>::builder("aside-many-error")
        .build()
        .unwrap();
    let failing = |_: Vec<u64>| async {
        Err::<std::collections::HashMap<u64, u64>, _>("the database is down")
    };
    match cache.get_many_with(&[1, 2], failing).await {
        Err(tiered::Error::Load { source, .. }) => {
            assert_eq!(source.to_string(), "the database is down");
        }
        other => panic!("expected a load error, got {other:?}"),
    }
    let working = |keys: Vec<u64>| async move {
        Ok::<_, BoxError>(keys.into_iter().map(|k| (k, k)).collect())
    };
    let found = cache.get_many_with(&[1, 2], working).await.unwrap();
    assert_eq!(found.len(), 2, "loaded again: the failure was not cached");
}

/// A key L2 answered stale (kept by fail-safe) must load after all: it is
/// loaded alone with a batch of one, not taken as absent because the batch
/// (which did not hold it) had no value for it.
#[tokio::test]
async fn get_many_with_loads_a_key_that_l2_answered_stale_on_its_own() {
    // L2 times are wall-clock times (they are shared by instances): real TTLs.
    let cache = TieredCache::<u32, usize>::builder("aside-many-stale")
        .l2(tiered::MemoryStore::new())
        .jitter(0.0)
        .l1_ttl(Duration::from_millis(200))
        .l2_ttl(Duration::from_millis(200))
        .fail_safe(Duration::from_secs(3600))
        .build()
        .unwrap();
    cache.insert(7, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // stale in L1 and L2, still kept
    let calls = std::sync::Mutex::new(Vec::new());
    let load = |keys: Vec<u32>| {
        calls.lock().unwrap().push(keys.clone());
        async move { Ok::<_, BoxError>(keys.into_iter().map(|k| (k, 2)).collect()) }
    };
    let found = cache.get_many_with(&[7, 8], load).await.unwrap();
    assert_eq!(found.get(&7), Some(&2), "the stale key was loaded");
    assert_eq!(found.get(&8), Some(&2));
    let mut calls = calls.lock().unwrap().clone();
    calls.sort();
    assert_eq!(
        calls,
        [vec![7], vec![8]],
        "the batch, then the stale key alone"
    );
}
