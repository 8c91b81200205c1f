//! The circuit breaker as caches see it: shared by the caches on one store
//! (and its clones), not by another client of the same data, gone with its
//! caches; a hung or failing call is a counted miss, and the breaker opens, then
//! closes on the background probe.

use std::time::Duration;

use tiered::{BoxError, BreakerState, MemoryStore, StoreOp, TieredCache};

fn cache(store: &MemoryStore) -> TieredCache<u64, u64> {
    TieredCache::builder("breaker")
        .l2(store.clone())
        .l1_max_entries(0)
        .l2_timeout(Duration::from_millis(100))
        .l2_breaker(2, Duration::from_secs(5))
        .l2_probe_delay(Duration::from_millis(500))
        .loader_fn(|k: u64| async move { Ok::<_, BoxError>(Some(k)) })
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn caches_on_one_store_share_a_breaker_that_dies_with_them() {
    let store = MemoryStore::new();
    let (a, b) = (cache(&store), cache(&store.clone()));
    let other = cache(&store.connect());
    store.fail_next(StoreOp::Reserve, 2);
    a.get(&1).await.unwrap();
    a.get(&2).await.unwrap();
    assert_eq!(a.stats().breaker, BreakerState::Open);
    assert_eq!(b.stats().breaker, BreakerState::Open, "clones share one");
    assert_eq!(b.stats().breaker_opened, 1);
    assert_eq!(
        other.stats().breaker,
        BreakerState::Closed,
        "another client"
    );
    drop((a, b));
    let again = cache(&store);
    assert_eq!(again.stats().breaker, BreakerState::Closed);
    assert_eq!(
        again.stats().breaker_opened,
        0,
        "a new breaker for the next cache"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_or_failing_call_is_a_counted_miss_and_the_probe_closes_the_breaker() {
    let store = MemoryStore::new();
    let cache = cache(&store);
    store.hang_next(StoreOp::Reserve, 1);
    assert_eq!(cache.get(&1).await.unwrap(), Some(1), "timed out: loaded");
    store.fail_next(StoreOp::Reserve, 1);
    assert_eq!(cache.get(&2).await.unwrap(), Some(2), "failed: loaded");
    let stats = cache.stats();
    assert_eq!((stats.l2_errors, stats.breaker), (2, BreakerState::Open));
    let calls = store.calls(StoreOp::Reserve);
    assert_eq!(cache.get(&3).await.unwrap(), Some(3));
    assert_eq!(
        store.calls(StoreOp::Reserve),
        calls,
        "open: no call is made"
    );
    // The background probe (a PING) closes it once the store answers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cache.stats().breaker, BreakerState::Closed);
    cache.get(&4).await.unwrap();
    assert_eq!(store.calls(StoreOp::Reserve), calls + 1);
}

/// `health()` through a store outage (the breaker opens, the error is
/// recorded, then a probe closes it) and a lost bus subscription (down, then
/// subscribed again); it serializes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_breaker_and_the_bus() {
    use tiered::MemoryBus;
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let (store, bus) = (store.connect(), bus.connect());
    let cache = TieredCache::<String, u64>::builder("health")
        .l2(store.clone())
        .bus(bus.clone())
        .l2_timeout(Duration::from_millis(50))
        .l2_breaker(2, Duration::from_millis(200))
        .l2_probe_delay(Duration::from_millis(10))
        .loader_fn(|key: String| async move { Ok::<_, tiered::BoxError>(Some(key.len() as u64)) })
        .build()
        .unwrap();
    let idle = cache.health();
    assert!(!idle.degraded(), "a fresh, idle instance: {idle:?}");
    assert!(!idle.bus.unwrap().listening);
    assert_eq!(cache.get("k").await.unwrap(), Some(1));
    crate::support::eventually("subscribed", || async {
        cache.health().bus.is_some_and(|bus| bus.subscribed)
    })
    .await;
    let health = cache.health();
    assert!(!health.degraded(), "{health:?}");
    assert_eq!(health.l2.as_ref().unwrap().breaker, BreakerState::Closed);
    assert!(health.l2.as_ref().unwrap().last_error.is_none());

    store.disconnect();
    for key in ["a", "b", "c"] {
        assert!(
            cache.get(&key.to_owned()).await.unwrap().is_some(),
            "reads go on"
        );
    }
    let health = cache.health();
    let l2 = health.l2.as_ref().unwrap();
    assert_eq!(l2.breaker, BreakerState::Open);
    assert!(l2.last_error.is_some(), "{l2:?}");
    assert!(health.degraded());
    let json = serde_json::to_string(&health).unwrap();
    assert!(json.contains("\"breaker\":\"Open\""), "{json}");
    store.reconnect();
    crate::support::eventually("the breaker closes", || async {
        cache
            .health()
            .l2
            .is_some_and(|l2| l2.breaker == BreakerState::Closed)
    })
    .await;

    bus.disconnect();
    crate::support::eventually("the subscription is seen down", || async {
        cache.health().bus.is_some_and(|bus| !bus.subscribed)
    })
    .await;
    assert!(cache.health().degraded());
    bus.reconnect();
    crate::support::eventually("subscribed again", || async {
        cache.health().bus.is_some_and(|bus| bus.subscribed)
    })
    .await;
    assert!(!cache.health().degraded(), "{:?}", cache.health());
}

/// A backplane whose subscription stream ends: the cache hears nothing more,
/// and health says the bus is not subscribed (before, it said subscribed for
/// good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_stream_that_ends_is_reported_lost() {
    use futures_util::StreamExt;
    use std::sync::Arc;
    use tiered::{Backplane, Delivery};
    /// Yields `Subscribed`, then ends when told.
    #[derive(Debug)]
    struct Ending(Arc<tokio::sync::Notify>);
    impl Backplane for Ending {
        fn publish<'a>(
            &'a self,
            _channel: &'a str,
            _message: &'a [u8],
        ) -> futures_util::future::BoxFuture<'a, Result<(), BoxError>> {
            Box::pin(async { Ok(()) })
        }
        fn subscribe(&self, _channel: &str) -> futures_util::stream::BoxStream<'static, Delivery> {
            let end = Arc::clone(&self.0);
            let ending = futures_util::stream::once(async move {
                end.notified().await;
                None
            });
            futures_util::stream::once(async { Some(Delivery::Subscribed) })
                .chain(ending)
                .filter_map(|delivery| async move { delivery })
                .boxed()
        }
    }
    let end = Arc::new(tokio::sync::Notify::new());
    let cache = TieredCache::<u64, u64>::builder("ending")
        .l2(MemoryStore::new())
        .bus(Ending(Arc::clone(&end)))
        .build()
        .unwrap();
    cache.insert(1, 1).await;
    crate::support::eventually("subscribed", || async {
        cache.health().bus.is_some_and(|bus| bus.subscribed)
    })
    .await;
    assert!(!cache.health().degraded());
    end.notify_one();
    crate::support::eventually("seen lost", || async {
        cache
            .health()
            .bus
            .is_some_and(|bus| bus.listening && !bus.subscribed)
    })
    .await;
    assert!(cache.health().degraded());
}
