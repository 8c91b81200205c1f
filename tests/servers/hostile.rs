//! What another client, an old version or an attacker can put in Redis, and
//! settings at their extremes: a counted miss or a clear error, never a crash.

use std::time::Duration;

use tiered::{BoxError, TieredCache, Ttl};

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
    bytes.truncate(23);
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
        assert!(matches!(build, Err(e) if e.message().contains("Ttl::MAX")));
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

/// Bytes another writer left that this cache cannot take: another codec id, JSON
/// nested past serde_json's limit. Each a counted miss, repaired.
#[tokio::test]
async fn foreign_codecs_and_deep_nesting_are_counted_misses() {
    let redis = Redis::start_own(&[]);
    let json = |url: &str| {
        TieredCache::<String, serde_json::Value>::builder("nested")
            .l2_redis(url)
            .codec(tiered::Codec::Json)
            .loader_fn(|_k: String| async { Ok::<_, BoxError>(Some(serde_json::json!([1]))) })
            .build()
            .unwrap()
    };
    let writer = json(redis.url());
    writer.get("deep").await.unwrap();
    plant(
        redis.url(),
        &writer.l2_key("deep").unwrap(),
        &b"[".repeat(100_000),
    )
    .await;
    let reader = json(redis.url());
    assert_eq!(
        reader.get("deep").await.unwrap(),
        Some(serde_json::json!([1]))
    );
    assert_eq!(reader.stats().l2_corrupt, 1);

    let cache = instance(redis.url());
    cache.get("codec").await.unwrap();
    let key = cache.l2_key("codec").unwrap();
    let mut conn = raw(redis.url()).await;
    let mut bytes: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    bytes[3] = 3; // MessagePack's id, under a bincode cache
    redis::cmd("SET")
        .arg(&key)
        .arg(bytes)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let fresh = instance(redis.url());
    assert_eq!(
        fresh.get("codec").await.unwrap().as_deref(),
        Some("value of codec")
    );
    assert_eq!(fresh.stats().l2_corrupt, 1);
}

/// Compressed and MessagePack entries round-trip between instances; a value past
/// `l2_max_value_bytes` stays in L1 only (counted) and never reaches Redis.
#[tokio::test]
async fn compression_codecs_and_size_limits_against_redis() {
    let redis = Redis::start_own(&[]);
    let build = |url: &str| {
        TieredCache::<String, String>::builder("sized")
            .l2_redis(url)
            .codec(tiered::Codec::MessagePack)
            .l2_compression(512)
            .l2_max_value_bytes(16_384)
            .loader_fn(|key: String| async move {
                let n: usize = key.parse().unwrap();
                Ok::<_, BoxError>(Some(format!("{n}:").repeat(n)))
            })
            .build()
            .unwrap()
    };
    let a = build(redis.url());
    for key in ["10", "2000", "100000"] {
        a.get(&key.to_owned()).await.unwrap();
    }
    let size = |key: &str| -> usize {
        redis
            .cli(&["strlen", &a.l2_key(&key.to_owned()).unwrap()])
            .trim()
            .parse()
            .unwrap()
    };
    assert!(size("2000") < 2000, "10 kB compressed: {}", size("2000"));
    // 700 kB encoded is past the limit, however well it compresses: L1 only.
    assert_eq!(a.stats().l2_oversized, 1);
    let big_key = a.l2_key("100000").unwrap();
    let stored: usize = redis.cli(&["strlen", &big_key]).trim().parse().unwrap();
    assert!(
        stored <= 35,
        "at most the reader's fill reservation: {stored} bytes"
    );
    let big = a.get("100000").await.unwrap();
    assert_eq!(big.map(|v| v.len()), Some(700_000));
    let b = build(redis.url());
    for key in ["10", "2000"] {
        let n: usize = key.parse().unwrap();
        let want = format!("{n}:").repeat(n);
        assert_eq!(b.get(&key.to_owned()).await.unwrap(), Some(want));
    }
    assert_eq!(b.stats().l2.hits, 2, "{:?}", b.stats());
    assert!(TieredCache::<String, String>::builder("x")
        .l2_max_value_bytes(10)
        .build()
        .is_err());
}

#[cfg(feature = "encryption")]
mod encrypted {
    use super::*;
    use tiered::Encryption;

    fn sealed(url: &str, keys: Encryption) -> TieredCache<String, String> {
        TieredCache::builder("sealed")
            .l2_redis(url)
            .l2_encryption(keys)
            .loader_fn(
                |key: String| async move { Ok::<_, BoxError>(Some(format!("secret {key}"))) },
            )
            .build()
            .unwrap()
    }

    /// Rotation against real Redis: entries under the old key are read by the new
    /// configuration, which writes under the new key; a reader without the key
    /// and truncated ciphertext are counted misses, repaired.
    #[tokio::test]
    async fn rotation_wrong_keys_and_truncated_ciphertext() {
        let redis = Redis::start_own(&[]);
        let old = sealed(redis.url(), Encryption::new(1, &[1; 32]));
        old.get("a").await.unwrap();
        let key = old.l2_key("a").unwrap();
        let stored = redis.cli(&["get", &key]);
        assert!(!stored.contains("secret"), "plaintext in Redis: {stored}");

        let rotated = || {
            sealed(
                redis.url(),
                Encryption::new(2, &[2; 32]).also_read(1, &[1; 32]),
            )
        };
        let reader = rotated();
        assert_eq!(reader.get("a").await.unwrap().as_deref(), Some("secret a"));
        assert_eq!(reader.stats().l2.hits, 1, "the old key still reads");
        reader.insert("b".into(), "secret b".into()).await;

        // The old configuration does not know key 2: a counted miss, then repaired
        // under its own key.
        let stale = sealed(redis.url(), Encryption::new(1, &[1; 32]));
        assert_eq!(stale.get("b").await.unwrap().as_deref(), Some("secret b"));
        assert_eq!(stale.stats().l2_corrupt, 1);

        // Truncated ciphertext.
        let mut conn = raw(redis.url()).await;
        let bytes: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        redis::cmd("SET")
            .arg(&key)
            .arg(&bytes[..bytes.len() - 5])
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        let fresh = rotated();
        assert_eq!(fresh.get("a").await.unwrap().as_deref(), Some("secret a"));
        assert_eq!(fresh.stats().l2_corrupt, 1);
        let again = rotated();
        assert_eq!(again.get("a").await.unwrap().as_deref(), Some("secret a"));
        assert_eq!(again.stats().l2.hits, 1, "repaired");
    }
}

/// A key in the cache's namespace that is not UTF-8 (written by another client)
/// is removed by a pattern and by `invalidate_all_and_reclaim` like any other; before, every
/// walk failed on it (SCAN's reply was read as strings) and stayed owed forever.
#[tokio::test]
async fn keys_that_are_not_utf8_do_not_stop_a_walk() {
    let redis = Redis::start_own(&[]);
    let cache = instance(redis.url());
    let prefix = cache.l2_key("x").unwrap();
    let prefix = prefix.strip_suffix('x').unwrap().as_bytes().to_vec();
    let mut conn = raw(redis.url()).await;
    let foreign = |tail: &[u8]| [prefix.as_slice(), tail].concat();
    for tail in [&b"p\xff\xfe"[..], b"q\xc3"] {
        redis::cmd("SET")
            .arg(foreign(tail))
            .arg("junk")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let exists = |key: Vec<u8>| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<u64>(&mut conn)
                .await
                .unwrap()
        }
    };

    cache.invalidate_pattern("p*").await;
    assert_eq!(
        exists(foreign(b"p\xff\xfe")).await,
        0,
        "the pattern removed it"
    );
    assert_eq!(
        exists(foreign(b"q\xc3")).await,
        1,
        "and only what it matches"
    );
    cache.invalidate_all_and_reclaim().await;
    assert_eq!(
        exists(foreign(b"q\xc3")).await,
        0,
        "invalidate_all_and_reclaim removed it"
    );
    assert_eq!(cache.stats().l2_errors, 0);
}
