//! Cache-aside with a `'static` loader and what a loader is told and may
//! answer, against a real redis-server: a loader's TTL in Redis, "not modified"
//! writing the stale value to Redis again as fresh, `get_or_load` sharing one
//! load with a configured-loader instance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{eventually, Redis};
use tiered::{loader_with_context_fn, BoxError, LoadContext, Loaded, TieredCache};

fn pttl(redis: &Redis, key: &str) -> Duration {
    let millis: u64 = redis.cli(&["pttl", key]).trim().parse().unwrap();
    Duration::from_millis(millis)
}

/// Adaptive TTL: the loader's TTL is the entry's life in Redis (kept past it
/// by the store's grace: the life, at most the 30 s reservation TTL), and
/// another instance reading it from Redis keeps it in L1 no longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_the_loader_sets_is_the_entrys_life_in_redis() {
    let redis = Redis::start();
    let instance = || {
        TieredCache::<u64, u64>::builder("context-ttl-redis")
            .l2_redis(redis.url())
            .jitter(0.0)
            .l1_ttl(Duration::from_secs(60))
            .l2_ttl(Duration::from_secs(60))
            .loader(loader_with_context_fn(
                |key: u64, _: LoadContext<u64>| async move {
                    let loaded = Loaded::value(key);
                    Ok::<_, BoxError>(match key {
                        1 => loaded.with_ttl(Duration::from_secs(2)),
                        _ => loaded,
                    })
                },
            ))
            .build()
            .unwrap()
    };
    let writer = instance();
    assert_eq!(writer.get(&1).await.unwrap(), Some(1));
    assert_eq!(writer.get(&2).await.unwrap(), Some(2));
    let short = pttl(&redis, &writer.l2_key(&1).unwrap());
    let long = pttl(&redis, &writer.l2_key(&2).unwrap());
    assert!(
        short <= Duration::from_secs(4) && short > Duration::from_secs(3),
        "{short:?}"
    );
    assert!(long > Duration::from_secs(85), "{long:?}");
    let reader = instance();
    assert_eq!(reader.get(&1).await.unwrap(), Some(1));
    assert_eq!(reader.stats().l2.hits, 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(reader.get(&1).await.unwrap(), Some(1));
    assert_eq!(
        reader.stats().loads,
        1,
        "past the loader's TTL: gone from the reader's L1 and stale in Redis"
    );
}

/// "Not modified" writes the stale value to Redis again as fresh: another
/// instance then reads it from Redis without loading, and the value was built
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_modified_writes_the_stale_value_to_redis_again_as_fresh() {
    let redis = Redis::start();
    let builds = Arc::new(AtomicU64::new(0));
    let instance = || {
        let builds = builds.clone();
        TieredCache::<u64, String>::builder("context-not-modified-redis")
            .l2_redis(redis.url())
            .jitter(0.0)
            .l1_ttl(Duration::from_millis(500))
            .l2_ttl(Duration::from_millis(500))
            .no_early_refresh()
            .stale_while_revalidate(Duration::from_secs(30))
            .loader(loader_with_context_fn(
                move |key: u64, context: LoadContext<String>| {
                    let builds = builds.clone();
                    async move {
                        if context.has_stale() {
                            return Ok::<_, BoxError>(Loaded::not_modified());
                        }
                        let n = builds.fetch_add(1, Ordering::SeqCst) + 1;
                        Ok(Loaded::value(format!("{key} built {n}")))
                    }
                },
            ))
            .build()
            .unwrap()
    };
    let writer = instance();
    assert_eq!(writer.get(&1).await.unwrap().as_deref(), Some("1 built 1"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        writer.get(&1).await.unwrap().as_deref(),
        Some("1 built 1"),
        "stale, at once"
    );
    eventually("the refresh", || async { writer.stats().not_modified == 1 }).await;
    let reader = instance();
    assert_eq!(reader.get(&1).await.unwrap().as_deref(), Some("1 built 1"));
    let stats = reader.stats();
    assert_eq!(
        (stats.l2.hits, stats.loads, stats.stale_served),
        (1, 0, 0),
        "a fresh L2 hit"
    );
    assert_eq!(builds.load(Ordering::SeqCst), 1, "built once");
}

/// `get_or_load` on one instance and the configured loader on another share
/// the fleet's L2: what one loaded, the other reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_load_fills_redis_for_the_fleet() {
    let redis = Redis::start();
    let aside = TieredCache::<u64, String>::builder("aside-redis")
        .l2_redis(redis.url())
        .build()
        .unwrap();
    let loaded = aside
        .get_or_load(&9, |id| async move {
            Ok::<_, BoxError>(Some(format!("row {id}")))
        })
        .await
        .unwrap();
    assert_eq!(loaded.as_deref(), Some("row 9"));
    let other = TieredCache::<u64, String>::builder("aside-redis")
        .l2_redis(redis.url())
        .loader_fn(|_: u64| async { Err::<Option<String>, _>("not called") })
        .build()
        .unwrap();
    assert_eq!(other.get(&9).await.unwrap().as_deref(), Some("row 9"));
    assert_eq!(other.stats().l2.hits, 1);
}
