//! One conformance suite for the L2 tier, run against a standalone Redis and a
//! 3-master Redis Cluster.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tiered::{BoxError, TieredCache, TieredCacheBuilder};

use crate::support::{Redis, RedisCluster};

/// A cache over a loader that counts its calls and knows keys `k0`..`k99`.
fn counted(
    builder: TieredCacheBuilder<String, u64>,
) -> (TieredCache<String, u64>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let cache = builder
        .loader_fn(move |key: String| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let n: Option<u64> = key.strip_prefix('k').and_then(|n| n.parse().ok());
                Ok::<_, BoxError>(n.filter(|n| *n < 100).map(|n| n * 10))
            }
        })
        .build()
        .expect("build");
    (cache, calls)
}

/// Every behaviour of the L2 tier, against whatever `l2` points the builder at.
async fn conformance(
    l2: impl Fn(TieredCacheBuilder<String, u64>) -> TieredCacheBuilder<String, u64>,
) {
    let instance = |name: &str| counted(l2(TieredCache::builder(name)));
    let (a, a_loads) = instance("conf");
    let (b, b_loads) = instance("conf");
    let k = |n: u64| format!("k{n}");

    // A load fills L2; another instance (its own L1) finds it there.
    assert_eq!(a.get(&k(1)).await.unwrap(), Some(10));
    assert_eq!(b.get(&k(1)).await.unwrap(), Some(10));
    assert_eq!(
        (
            a_loads.load(Ordering::SeqCst),
            b_loads.load(Ordering::SeqCst)
        ),
        (1, 0)
    );
    assert_eq!(b.stats().l2.hits, 1);

    // Absence is shared too.
    assert_eq!(a.get(&k(500)).await.unwrap(), None);
    assert_eq!(b.get(&k(500)).await.unwrap(), None);
    assert_eq!(b_loads.load(Ordering::SeqCst), 0);

    // get_many: L2 answers what it has in one round trip, the rest is loaded once.
    for n in 2..6 {
        a.get(&k(n)).await.unwrap();
    }
    let keys: Vec<String> = (1..20).map(k).collect();
    let many = b.get_many(&keys).await.unwrap();
    assert_eq!(many.len(), 19);
    assert_eq!(many[&k(19)], 190);
    assert_eq!(
        b_loads.load(Ordering::SeqCst),
        14,
        "keys 6..20 loaded, 1..6 from L2"
    );

    // insert writes L2.
    a.insert(k(50), 7).await;
    let (c, c_loads) = instance("conf");
    assert_eq!(c.get(&k(50)).await.unwrap(), Some(7));
    assert_eq!(c_loads.load(Ordering::SeqCst), 0);

    // invalidate reaches L2: a fresh instance loads again.
    a.invalidate(&k(1)).await;
    let (d, d_loads) = instance("conf");
    assert_eq!(d.get(&k(1)).await.unwrap(), Some(10));
    assert_eq!(d_loads.load(Ordering::SeqCst), 1);

    // invalidate_all clears this cache's namespace, and only it.
    let (other, _) = instance("other");
    other.get(&k(1)).await.unwrap();
    a.invalidate_all().await;
    let (e, e_loads) = instance("conf");
    for n in 1..6 {
        e.get(&k(n)).await.unwrap();
    }
    assert_eq!(e_loads.load(Ordering::SeqCst), 5);
    let (other2, other_loads) = instance("other");
    assert_eq!(other2.get(&k(1)).await.unwrap(), Some(10));
    assert_eq!(
        other_loads.load(Ordering::SeqCst),
        0,
        "another cache's entries survive"
    );

    for cache in [&a, &b, &c, &d, &e] {
        let stats = cache.stats();
        assert_eq!(stats.l2_errors, 0, "{stats:?}");
        assert_eq!(stats.l2_corrupt, 0);
    }
}

#[tokio::test]
async fn conformance_standalone() {
    let redis = Redis::start();
    let url = redis.url().to_owned();
    // A server shared through REDIS_URL may hold a previous run's entries.
    if std::env::var("REDIS_URL").is_ok() {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("FLUSHDB")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    conformance(|b| b.l2_redis(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cluster() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    conformance(|b| b.l2_redis_cluster(&urls)).await;
    // The keys really are spread over the masters (the test exercised MGET and
    // SCAN across slots).
    let counts = cluster.key_counts();
    assert!(counts.iter().filter(|&&n| n > 0).count() >= 2, "{counts:?}");
}
