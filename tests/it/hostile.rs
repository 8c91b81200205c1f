//! What another client, an old version or an attacker can put in Redis, and
//! settings at their extremes: a counted miss or a clear error, never a crash.

use std::time::Duration;

use tiered::{BoxError, Error, TieredCache, Ttl};

use crate::support::slow_proxy::SlowProxy;
use crate::support::Redis;

fn instance(url: &str) -> TieredCache<String, String> {
    TieredCache::builder("hostile")
        .l2_redis(url)
        .loader_fn(|key: String| async move { Ok::<_, BoxError>(Some(format!("value of {key}"))) })
        .build()
        .unwrap()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A valid header and envelope (taken from a real entry), then `body`.
async fn plant(url: &str, l2_key: &str, body: &[u8]) {
    let mut conn = raw(url).await;
    let mut bytes: Vec<u8> = redis::cmd("GET")
        .arg(l2_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    bytes.truncate(21);
    bytes.extend_from_slice(body);
    redis::cmd("SET")
        .arg(l2_key)
        .arg(bytes)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

/// Length prefixes claiming 2^47 bytes, behind a valid header: each a counted
/// miss, the key repaired, the process alive (before, the allocation aborted it).
#[tokio::test]
async fn huge_length_prefixes_are_a_counted_miss_and_the_key_is_repaired() {
    let redis = Redis::start_own(&[]);
    let writer = instance(redis.url());
    for (n, body) in [
        [&[253u8][..], &(1u64 << 47).to_le_bytes()].concat(),
        [&[252u8][..], &u32::MAX.to_le_bytes()].concat(),
        vec![251u8, 0xff, 0xff],
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("k{n}");
        writer.get(&key).await.unwrap();
        plant(redis.url(), &writer.l2_key(&key).unwrap(), &body).await;
        let fresh = instance(redis.url());
        assert_eq!(
            fresh.get(&key).await.unwrap(),
            Some(format!("value of {key}"))
        );
        assert_eq!(fresh.stats().l2_corrupt, 1, "{key}");
        let again = instance(redis.url());
        assert_eq!(
            again.get(&key).await.unwrap(),
            Some(format!("value of {key}"))
        );
        assert_eq!(again.stats().l2.hits, 1, "{key} repaired");
    }
}

/// TTLs too long for a `SystemTime` or for Redis: clamped to `Ttl::MAX` at run
/// time, rejected by the builder.
#[tokio::test]
async fn huge_ttls_are_clamped_or_rejected() {
    let redis = Redis::start_own(&[]);
    let cache = instance(redis.url());
    let key = "forever".to_owned();
    cache
        .insert_with_ttl(key.clone(), "v".into(), Duration::MAX)
        .await;
    assert_eq!(cache.stats().l2_errors, 0);
    let pttl: i64 = redis
        .cli(&["pttl", &cache.l2_key(&key).unwrap()])
        .trim()
        .parse()
        .unwrap();
    let max = Ttl::MAX.as_millis() as i64;
    assert!(pttl > max - 60_000 && pttl <= max, "{pttl}");
    let other = instance(redis.url());
    assert_eq!(other.get(&key).await.unwrap().as_deref(), Some("v"));
    assert_eq!(other.stats().l2.hits, 1);

    for build in [
        TieredCache::<String, String>::builder("x")
            .l2_ttl(Duration::MAX)
            .build(),
        TieredCache::<String, String>::builder("x")
            .negative_ttl(Duration::MAX)
            .build(),
        TieredCache::<String, String>::builder("x")
            .l1_ttl(Duration::MAX)
            .build(),
    ] {
        assert!(matches!(build, Err(Error::Config(m)) if m.contains("Ttl::MAX")));
    }
}

/// A connect (with AUTH) that takes 1.5 s, longer than a call (100 ms) or a probe
/// (1 s) waits:
/// the connection is made in the background and Redis is used once it is up
/// (before, each call started a connect and dropped it at its timeout: never).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_slower_than_the_call_timeout_still_succeeds() {
    let redis = Redis::start_own(&["--requirepass", "s3cret"]);
    let proxy = SlowProxy::start(redis.port(), Duration::from_millis(1500)).await;
    let url = format!("redis://:s3cret@127.0.0.1:{}/", proxy.port);
    let cache = TieredCache::<String, String>::builder("slowconn")
        .l2_redis(&url)
        .l1_max_entries(0)
        .loader_fn(|key: String| async move { Ok::<_, BoxError>(Some(key)) })
        .build()
        .unwrap();
    let start = std::time::Instant::now();
    let mut n = 0;
    while cache.stats().l2.hits == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never connected: {:?}",
            cache.stats()
        );
        n += 1;
        let key = format!("k{}", n % 4);
        assert_eq!(cache.get(&key).await.unwrap(), Some(key));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
