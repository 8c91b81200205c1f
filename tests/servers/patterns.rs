//! Pattern invalidation: the L1 matcher against Redis's own `SCAN MATCH`, and
//! namespace walks that stay within one call's timeout per step.

use std::collections::BTreeSet;

use tiered::{Pattern, TieredCache};

use crate::support::Redis;

/// Bytes that glob syntax gives meaning to, plus separators and non-ASCII.
const KEY_CHARS: &[&str] = &[
    "a", "b", "c", "z", "*", "?", "[", "]", "\\", ":", "^", "-", "é", "日", "0",
];
const PATTERN_PARTS: &[&str] = &[
    "a", "b", "*", "?", "[ab]", "[^a]", "[a-c]", "[c-a]", "\\*", "\\?", "\\[", "\\", "[", "]", ":",
    "^", "-", "é", "?", "[é]", "[\\]]", "[*?]", "[^*]", "**",
];

fn generate(rng: &mut fastrand::Rng, parts: &[&str], max: usize) -> String {
    (0..rng.usize(0..=max))
        .map(|_| parts[rng.usize(..parts.len())])
        .collect()
}

async fn connection(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn scan_match(conn: &mut redis::aio::MultiplexedConnection, glob: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(glob)
            .arg("COUNT")
            .arg(10_000)
            .query_async(conn)
            .await
            .unwrap();
        found.extend(keys);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// Generated keys and patterns full of `*`, `?`, `[`, `]`, `\`, `:` and non-ASCII:
/// the keys `Pattern` matches are exactly those `SCAN MATCH` returns.
#[tokio::test]
async fn the_l1_matcher_agrees_with_redis_scan_match() {
    let redis = Redis::start_own(&[]);
    let mut conn = connection(&redis).await;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut keys = BTreeSet::new();
    while keys.len() < 400 {
        keys.insert(generate(&mut rng, KEY_CHARS, 7));
    }
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("SET").arg(format!("ns:{key}")).arg(1).ignore();
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();
    let mut checked_matches = 0;
    for _ in 0..600 {
        let glob = generate(&mut rng, PATTERN_PARTS, 5);
        let from_redis: BTreeSet<String> = scan_match(&mut conn, &format!("ns:{glob}"))
            .await
            .into_iter()
            .map(|k| k["ns:".len()..].to_owned())
            .collect();
        let pattern = Pattern::new(glob.clone());
        let ours: BTreeSet<String> = keys
            .iter()
            .filter(|k| pattern.matches(k))
            .cloned()
            .collect();
        assert_eq!(ours, from_redis, "pattern {glob:?}");
        checked_matches += ours.len();
    }
    assert!(
        checked_matches > 1000,
        "the patterns matched too little: {checked_matches}"
    );
}

/// Through the cache: after `invalidate_pattern`, L1 (a cache without L2) and L2 (a
/// fresh instance) hold exactly the keys the pattern does not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_pattern_removes_exactly_the_matching_keys_in_each_tier() {
    let redis = Redis::start_own(&[]);
    let mut rng = fastrand::Rng::with_seed(11);
    let mut keys = BTreeSet::new();
    while keys.len() < 60 {
        keys.insert(generate(&mut rng, KEY_CHARS, 5));
    }
    let l1_only = TieredCache::<String, u64>::builder("pl1").build().unwrap();
    for round in 0..25 {
        let glob = generate(&mut rng, PATTERN_PARTS, 4);
        let pattern = Pattern::new(glob.clone());
        let name = format!("pl2-{round}");
        let writer = TieredCache::<String, u64>::builder(&name)
            .l2_redis(redis.url())
            .build()
            .unwrap();
        for key in &keys {
            l1_only.insert(key.clone(), 1).await;
            writer.insert(key.clone(), 1).await;
        }
        l1_only.invalidate_pattern(&glob).await;
        writer.invalidate_pattern(&glob).await;
        let reader = TieredCache::<String, u64>::builder(&name)
            .l2_redis(redis.url())
            .build()
            .unwrap();
        for key in &keys {
            let kept = !pattern.matches(key);
            let in_l1 = l1_only.get(key).await.unwrap().is_some();
            let in_l2 = reader.get(key).await.unwrap().is_some();
            assert_eq!(
                (in_l1, in_l2),
                (kept, kept),
                "key {key:?}, pattern {glob:?}"
            );
        }
        assert_eq!(writer.stats().l2_errors, 0);
    }
}

/// `invalidate_all_and_reclaim` with 1M unrelated keys in Redis: each `SCAN` step is its own
/// call under the default 100 ms timeout, so it finishes, and only this cache's
/// keys go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_all_and_reclaim_walks_a_large_database_in_steps() {
    let redis = Redis::start_own(&["--enable-debug-command", "yes"]);
    redis.cli(&["debug", "populate", "1000000", "unrelated"]);
    let cache = TieredCache::<String, u64>::builder("big")
        .l2_redis(redis.url())
        .build()
        .unwrap();
    for i in 0..500u64 {
        cache.insert(format!("k{i}"), i).await;
    }
    assert_eq!(redis.cli(&["dbsize"]).trim(), "1000500");
    cache.invalidate_all_and_reclaim().await;
    let stats = cache.stats();
    assert_eq!(stats.l2_errors, 0, "{stats:?}");
    assert_eq!(
        redis.cli(&["dbsize"]).trim(),
        "1000000",
        "only the cache's keys went"
    );
    assert_eq!(
        redis.cli(&["exists", &cache.l2_key("k7").unwrap()]).trim(),
        "0",
        "gone when the call returned"
    );
    // The same walk for a pattern.
    for i in 0..500u64 {
        cache.insert(format!("k{i}"), i).await;
    }
    cache.invalidate_pattern("k1*").await;
    assert_eq!(redis.cli(&["dbsize"]).trim(), "1000389");
}
