//! Redis failing in every way a server can: killed, frozen, restarted empty,
//! holding bytes it should not, asking for a password. Reads must never fail.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiered::{BoxError, BreakerState, RedisStore, TieredCache};

use crate::support::Redis;

const COOLDOWN: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(100);

fn instance(url: &str, name: &str) -> (TieredCache<String, String>, Arc<AtomicUsize>) {
    let loads = Arc::new(AtomicUsize::new(0));
    let counter = loads.clone();
    let cache = TieredCache::builder(name)
        .l2_redis(url)
        .l2_timeout(TIMEOUT)
        .l2_breaker(5, COOLDOWN)
        .l1_ttl(Duration::from_millis(200))
        .jitter(0.0)
        .loader_fn(move |key: String| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(Some(format!("value of {key}"))) }
        })
        .build()
        .unwrap();
    (cache, loads)
}

/// 64 tasks reading hot and cold keys until `stop`; returns (reads, errors, slowest).
fn readers(
    cache: &TieredCache<String, String>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64, Duration)>> {
    (0..64)
        .map(|task| {
            let (cache, stop) = (cache.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut reads, mut errors, mut slowest) = (0, 0, Duration::ZERO);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = if i.is_multiple_of(4) {
                        format!("cold:{task}:{i}")
                    } else {
                        format!("hot:{}", i % 16)
                    };
                    let start = Instant::now();
                    match cache.get(&key).await {
                        Ok(Some(v)) => assert_eq!(v, format!("value of {key}")),
                        Ok(None) => panic!("the loader always has a value"),
                        Err(_) => errors += 1,
                    }
                    slowest = slowest.max(start.elapsed());
                    reads += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (reads, errors, slowest)
            })
        })
        .collect()
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<(u64, u64, Duration)>>) -> (u64, u64, Duration) {
    let mut total = (0, 0, Duration::ZERO);
    for task in tasks {
        let (reads, errors, slowest) = task.await.unwrap();
        total = (total.0 + reads, total.1 + errors, total.2.max(slowest));
    }
    total
}

async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(Duration::from_secs(20), what, check).await;
}

/// A liveness bound, not a speed claim: fails only if `check` never holds.
async fn eventually_within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_fails_no_read_and_recovers_through_a_probe() {
    let mut redis = Redis::start_own(&[]);
    let (cache, _) = instance(redis.url(), "killed");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = readers(&cache, &stop);
    eventually("L2 hits", || cache.stats().l2.hits > 50).await;

    redis.kill();
    eventually("the breaker opens", || {
        cache.stats().breaker == BreakerState::Open
    })
    .await;
    let opened = cache.stats();
    tokio::time::sleep(COOLDOWN * 3).await;

    redis.restart();
    eventually("the breaker closes", || {
        cache.stats().breaker == BreakerState::Closed
    })
    .await;
    let hits_after = cache.stats().l2.hits;
    eventually("L2 hits resume", || cache.stats().l2.hits > hits_after + 50).await;
    stop.store(true, Ordering::Relaxed);
    let (reads, errors, _) = finish(tasks).await;

    assert_eq!(
        errors, 0,
        "no read may fail because Redis died ({reads} reads)"
    );
    assert!(reads > 1000, "{reads}");
    let stats = cache.stats();
    assert!(opened.breaker_opened >= 1);
    assert!(stats.l2_errors >= 5, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_frozen_costs_at_most_the_timeout_until_the_breaker_opens() {
    let mut redis = Redis::start_own(&[]);
    let (cache, _) = instance(redis.url(), "frozen");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = readers(&cache, &stop);
    eventually("L2 hits", || cache.stats().l2.hits > 50).await;

    redis.freeze();
    eventually("the breaker opens", || {
        cache.stats().breaker == BreakerState::Open
    })
    .await;
    // Calls already under way when it opened time out (and count); after that,
    // reads skip L2 entirely until the probe: the error count stands still.
    tokio::time::sleep(TIMEOUT * 2).await;
    let errors_open = cache.stats().l2_errors;
    tokio::time::sleep(COOLDOWN / 2).await;
    let errors_later = cache.stats().l2_errors;
    assert_eq!(cache.stats().breaker, BreakerState::Open);
    assert_eq!(errors_open, errors_later, "no L2 calls while open");

    redis.thaw();
    eventually("the breaker closes", || {
        cache.stats().breaker == BreakerState::Closed
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (reads, errors, slowest) = finish(tasks).await;

    assert_eq!(errors, 0, "{reads} reads");
    // A hang check, not a speed claim: one L2 timeout plus a loader call, with a
    // wide margin for a loaded machine. (The latency figures are in
    // benches/outage.rs.)
    assert!(slowest < Duration::from_secs(2), "slowest read {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_means_reloads_not_errors() {
    let mut redis = Redis::start_own(&[]);
    let (writer, _) = instance(redis.url(), "restart");
    for n in 0..20 {
        writer.get(&format!("k{n}")).await.unwrap();
    }
    redis.restart();
    let (reader, loads) = instance(redis.url(), "restart");
    for n in 0..20 {
        let key = format!("k{n}");
        assert_eq!(
            reader.get(&key).await.unwrap(),
            Some(format!("value of {key}"))
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn bad_bytes_are_a_counted_miss_and_the_key_is_repaired() {
    let redis = Redis::start_own(&[]);
    let (cache, loads) = instance(redis.url(), "bytes");
    // Another client writes garbage, a truncated entry, and an entry of another type.
    cache.get("good").await.unwrap();
    let l2_key = |k: &str| cache.l2_key(&k.to_owned()).unwrap();
    let good = redis.cli(&["--no-raw", "get", &l2_key("good")]);
    assert!(good.starts_with("\"TR"), "{good}");
    redis.cli(&["set", &l2_key("garbage"), "definitely not an entry"]);
    redis.cli(&["set", &l2_key("truncated"), "TR\x01\x01abc"]);
    let other_type = TieredCache::<String, Vec<u64>>::builder("bytes")
        .l2_redis(redis.url())
        .loader_fn(|_k: String| async { Ok::<_, BoxError>(Some(vec![1u64, 2, 3])) })
        .build()
        .unwrap();
    other_type.get("old_schema").await.unwrap();

    for key in ["garbage", "truncated", "old_schema"] {
        let key = key.to_owned();
        let (fresh, _) = instance(redis.url(), "bytes");
        assert_eq!(
            fresh.get(&key).await.unwrap(),
            Some(format!("value of {key}"))
        );
        let stats = fresh.stats();
        assert_eq!(stats.l2_corrupt, 1, "{key}: {stats:?}");
        // Repaired: the next fresh instance reads a good entry from L2.
        let (again, again_loads) = instance(redis.url(), "bytes");
        assert_eq!(
            again.get(&key).await.unwrap(),
            Some(format!("value of {key}"))
        );
        assert_eq!(again_loads.load(Ordering::SeqCst), 0, "{key} was repaired");
        assert_eq!(again.stats().l2_corrupt, 0);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn caches_with_other_names_or_schema_versions_never_share_entries() {
    let redis = Redis::start_own(&[]);
    let build = |name: &str, version: u32, tag: &'static str| {
        TieredCache::<String, String>::builder(name)
            .l2_redis(redis.url())
            .schema_version(version)
            .loader_fn(
                move |k: String| async move { Ok::<_, BoxError>(Some(format!("{tag}:{k}"))) },
            )
            .build()
            .unwrap()
    };
    let key = "same".to_owned();
    let a = build("alpha", 1, "a1");
    let b = build("beta", 1, "b1");
    let a2 = build("alpha", 2, "a2");
    assert_eq!(a.get(&key).await.unwrap().unwrap(), "a1:same");
    assert_eq!(b.get(&key).await.unwrap().unwrap(), "b1:same");
    assert_eq!(a2.get(&key).await.unwrap().unwrap(), "a2:same");
    for cache in [&a, &b, &a2] {
        assert_eq!(cache.stats().l2.hits, 0);
        assert_eq!(cache.stats().l2_corrupt, 0);
    }
    let keys = redis.cli(&["--scan"]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    let mut expected: Vec<String> = [&a, &a2, &b]
        .iter()
        .map(|c| c.l2_key(&key).unwrap())
        .collect();
    expected.sort();
    assert_eq!(keys, expected);
    assert!(expected[0].ends_with(":alpha:1:same"), "{expected:?}");
}

#[tokio::test]
async fn a_wrong_password_is_a_counted_l2_failure_and_ping_says_why() {
    let redis = Redis::start_own(&["--requirepass", "s3cret"]);
    let port = redis.port();
    let wrong = format!("redis://:nope@127.0.0.1:{port}/");
    let right = format!("redis://:s3cret@127.0.0.1:{port}/");

    let store = RedisStore::standalone(&wrong).unwrap();
    let err = store.ping().await.unwrap_err().to_string();
    assert!(
        err.to_lowercase().contains("authentication failed"),
        "{err}"
    );

    let (cache, _) = instance(&wrong, "auth");
    assert_eq!(cache.get("k").await.unwrap().unwrap(), "value of k");
    assert!(cache.stats().l2_errors >= 1);

    RedisStore::standalone(&right)
        .unwrap()
        .ping()
        .await
        .unwrap();
    let (writer, _) = instance(&right, "auth");
    writer.get("k").await.unwrap();
    let (reader, loads) = instance(&right, "auth");
    assert_eq!(reader.get("k").await.unwrap().unwrap(), "value of k");
    assert_eq!(loads.load(Ordering::SeqCst), 0);
    assert_eq!(reader.stats().l2_errors, 0);

    // An ACL user, from the URL too.
    redis.cli(&[
        "-a", "s3cret", "ACL", "SETUSER", "app", "on", ">apppass", "~*", "+@all",
    ]);
    let acl = format!("redis://app:apppass@127.0.0.1:{port}/");
    let (acl_reader, acl_loads) = instance(&acl, "auth");
    assert_eq!(acl_reader.get("k").await.unwrap().unwrap(), "value of k");
    assert_eq!(acl_loads.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_invalidation_that_cannot_reach_redis_is_replayed_before_l2_is_read_again() {
    let redis = Redis::start_own(&[]);
    let url = redis.url().to_owned();
    let (writer, writer_loads) = instance(&url, "replay");
    let key = "k".to_owned();
    writer.get(&key).await.unwrap();
    // Redis refuses deletions for a while (as it would while unreachable).
    redis.cli(&["ACL", "SETUSER", "default", "-unlink"]);
    writer.invalidate(&key).await;
    assert!(writer.stats().l2_errors >= 1);
    assert_eq!(
        redis.cli(&["exists", &writer.l2_key(&key).unwrap()]).trim(),
        "1",
        "not deleted yet"
    );

    redis.cli(&["ACL", "SETUSER", "default", "+unlink"]);
    // The writer's next L2 read replays the deletion first, so it cannot be
    // served the entry it invalidated.
    assert_eq!(writer.get(&key).await.unwrap().unwrap(), "value of k");
    assert_eq!(writer_loads.load(Ordering::SeqCst), 2);
    let (reader, reader_loads) = instance(&url, "replay");
    reader.get(&key).await.unwrap();
    assert_eq!(
        reader_loads.load(Ordering::SeqCst),
        0,
        "the reload refilled L2"
    );
}

/// With the default breaker settings (5 failures, probes from 0.5 s backing off to
/// 30 s), reads come back to Redis once it returns, without waiting out the
/// cool-down: after a freeze, and after a kill and an empty restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_default_settings_reads_return_to_redis_after_an_outage() {
    let mut redis = Redis::start_own(&[]);
    let url = redis.url().to_owned();
    let loads = Arc::new(AtomicUsize::new(0));
    let counter = loads.clone();
    let cache = TieredCache::<String, String>::builder("defaults")
        .l2_redis(&url)
        .l1_max_entries(0)
        .loader_fn(move |key: String| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(Some(format!("value of {key}"))) }
        })
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = readers(&cache, &stop);
    eventually("L2 hits", || cache.stats().l2.hits > 50).await;

    for outage in ["freeze", "kill"] {
        match outage {
            "freeze" => redis.freeze(),
            _ => redis.kill(),
        }
        eventually("the breaker opens", || {
            cache.stats().breaker == BreakerState::Open
        })
        .await;
        // Calls already under way when it opened time out (and count) first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let errors_open = cache.stats().l2_errors;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            cache.stats().l2_errors,
            errors_open,
            "{outage}: no read calls Redis (or waits for a probe) while open"
        );
        match outage {
            "freeze" => redis.thaw(),
            _ => redis.restart(),
        }
        let hits = cache.stats().l2.hits;
        eventually_within(
            Duration::from_secs(40),
            "reads served from Redis again",
            || cache.stats().l2.hits > hits + 50,
        )
        .await;
        assert_eq!(cache.stats().breaker, BreakerState::Closed);
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, errors, _) = finish(tasks).await;
    assert_eq!(errors, 0, "{reads} reads");
}

/// Caches on one `RedisStore` share its breaker: one cache's failures open it for
/// all, each cache's observer hears the transitions, and one probe closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_on_one_store_share_one_breaker() {
    #[derive(Clone, Default)]
    struct Transitions(Arc<std::sync::Mutex<Vec<BreakerState>>>);
    impl tiered::Observer for Transitions {
        fn breaker(&self, state: BreakerState) {
            self.0.lock().unwrap().push(state);
        }
    }
    let mut redis = Redis::start_own(&[]);
    let store = RedisStore::standalone(redis.url()).unwrap();
    let build = |name: &str, seen: &Transitions| {
        TieredCache::<String, String>::builder(name)
            .redis(store.clone())
            .l1_max_entries(0)
            .observer(seen.clone())
            .loader_fn(|key: String| async move { Ok::<_, BoxError>(Some(key)) })
            .build()
            .unwrap()
    };
    let (seen_a, seen_b) = (Transitions::default(), Transitions::default());
    let (a, b) = (build("one", &seen_a), build("two", &seen_b));
    a.get("k").await.unwrap();
    b.get("k").await.unwrap();
    redis.kill();
    for n in 0..10 {
        a.get(&format!("x{n}")).await.unwrap();
    }
    assert_eq!(a.stats().breaker, BreakerState::Open);
    assert_eq!(b.stats().breaker, BreakerState::Open, "shared");
    let b_errors = b.stats().l2_errors;
    b.get("y").await.unwrap();
    assert_eq!(b.stats().l2_errors, b_errors, "b skips Redis too");
    redis.restart();
    eventually_within(Duration::from_secs(20), "the probe closes it", || {
        b.stats().breaker == BreakerState::Closed
    })
    .await;
    for seen in [&seen_a, &seen_b] {
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(seen, [BreakerState::Open, BreakerState::Closed], "{seen:?}");
    }
}

/// `health()` against a real server that is killed, then started again: the
/// breaker opens with the error recorded and the subscription is seen lost,
/// then both come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_sees_a_server_go_and_come_back() {
    let mut redis = Redis::start_own(&[]);
    let cache = TieredCache::<String, u64>::builder("health")
        .l2_redis(redis.url())
        .l2_breaker(2, Duration::from_millis(300))
        .loader_fn(|key: String| async move { Ok::<_, BoxError>(Some(key.len() as u64)) })
        .build()
        .unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(1));
    let until = |what: &str, done: &dyn Fn(&tiered::Health) -> bool| {
        let start = Instant::now();
        loop {
            let health = cache.health();
            if done(&health) {
                return health;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: {health:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    until("subscribed", &|h| {
        h.bus.as_ref().is_some_and(|b| b.subscribed)
    });
    redis.kill();
    for key in ["a", "b", "c"] {
        assert!(
            cache.get(&key.to_owned()).await.unwrap().is_some(),
            "reads go on"
        );
    }
    let down = until("down", &|h| {
        h.l2.as_ref()
            .is_some_and(|l2| l2.breaker == BreakerState::Open)
            && h.bus.as_ref().is_some_and(|b| !b.subscribed)
    });
    assert!(down.degraded());
    assert!(down.l2.unwrap().last_error.is_some());
    redis.restart();
    let up = until("back", &|h| {
        h.l2.as_ref()
            .is_some_and(|l2| l2.breaker == BreakerState::Closed)
            && h.bus.as_ref().is_some_and(|b| b.subscribed)
    });
    assert!(!up.degraded(), "{up:?}");
    assert!(cache.stats().bus_resubscribes >= 1);
}

/// On a real server: an insert while Redis is frozen says it is queued; once
/// Redis answers again, `flush` lands the owed deletion and says applied, and
/// a new instance does not read the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_during_an_outage_is_queued_and_flush_applies_it() {
    let mut redis = Redis::start_own(&[]);
    let url = redis.url().to_owned();
    let instance = || {
        TieredCache::<String, u64>::builder("flushed")
            .l2_redis(&url)
            .build()
            .unwrap()
    };
    let a = instance();
    assert_eq!(a.insert("k".into(), 1).await, tiered::Written::Applied);
    redis.freeze();
    let written = a.insert("k".into(), 2).await;
    assert!(!written.is_applied(), "{written:?}");
    redis.thaw();
    assert_eq!(
        a.flush(Duration::from_secs(10)).await,
        tiered::Written::Applied
    );
    assert_eq!(instance().get("k").await.unwrap(), None);
}
