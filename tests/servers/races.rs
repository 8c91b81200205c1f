//! Invalidations racing reads and loads inside one instance, lined up with a gate
//! in front of a real Redis: the old value never survives the invalidation call,
//! a lost or cancelled deletion is replayed, and a slow fill holds up no other key.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tiered::{BoxError, RedisStore, TieredCache};

use crate::support::gated::{Gate, Gated, Op};
use crate::support::versions::{instance, Versions};
use crate::support::Redis;

fn gated(redis: &Redis, op: Op, key_suffix: &str) -> (Gated<RedisStore>, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let store = Gated {
        inner: RedisStore::standalone(redis.url()).unwrap(),
        op,
        key_suffix: key_suffix.to_owned(),
        gate: gate.clone(),
    };
    (store, gate)
}

/// A read that reaches Redis while `invalidate` is deleting there must not put the
/// old value back into L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_an_invalidation_cannot_refill_l1_with_the_old_value() {
    let redis = Redis::start_own(&[]);
    let db = Versions::new();
    let key = "k".to_owned();
    let first = instance(&db, "inv", |b| b.l2_redis(redis.url()));
    assert_eq!(first.get(&key).await.unwrap(), Some(1)); // v1 in Redis
    let (store, gate) = gated(&redis, Op::Delete, ":k");
    let cache = instance(&db, "inv", |b| {
        b.l2(store).l2_timeout(Duration::from_secs(10))
    });
    db.set(&key, 2);
    gate.arm();
    let invalidation = {
        let (cache, key) = (cache.clone(), key.clone());
        tokio::spawn(async move { cache.invalidate(&key).await })
    };
    gate.reached.notified().await; // the deletion is on its way to Redis
                                   // L1 is empty: the reader finds v1 in Redis.
    let reader = {
        let (cache, key) = (cache.clone(), key.clone());
        tokio::spawn(async move { cache.get(&key).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.open();
    invalidation.await.unwrap();
    let during = reader.await.unwrap().unwrap();
    assert!(matches!(during, Some(1) | Some(2)), "{during:?}");
    assert_eq!(cache.get(&key).await.unwrap(), Some(2));
}

/// After `insert(k, v2)` returns, no read that saw v1 in Redis meanwhile can put v1
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_an_insert_cannot_put_the_old_value_back() {
    let redis = Redis::start_own(&[]);
    let db = Versions::new();
    let key = "k".to_owned();
    let first = instance(&db, "ins", |b| b.l2_redis(redis.url()));
    assert_eq!(first.get(&key).await.unwrap(), Some(1)); // v1 in Redis
    let (store, gate) = gated(&redis, Op::Set, ":k");
    let cache = instance(&db, "ins", |b| {
        b.l2(store).l2_timeout(Duration::from_secs(10))
    });
    db.set(&key, 2);
    gate.arm();
    let insert = {
        let (cache, key) = (cache.clone(), key.clone());
        tokio::spawn(async move { cache.insert(key, 2).await })
    };
    gate.reached.notified().await;
    let during = cache.get(&key).await.unwrap(); // L1 empty: reads v1 in Redis
    assert_eq!(during, Some(1));
    gate.open();
    insert.await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(2));
}

/// An `invalidate` cancelled before its deletion reached Redis is not lost: it is
/// replayed before this instance reads Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_invalidation_is_replayed() {
    let redis = Redis::start_own(&[]);
    let db = Versions::new();
    let (store, gate) = gated(&redis, Op::Delete, ":k");
    let cache = instance(&db, "cancel", |b| {
        b.l2(store)
            .l2_timeout(Duration::from_secs(10))
            .l1_max_entries(0)
    });
    let key = "k".to_owned();
    assert_eq!(cache.get(&key).await.unwrap(), Some(1)); // v1 in Redis
    db.set(&key, 2);
    gate.arm();
    let cancelled = tokio::time::timeout(Duration::from_millis(50), cache.invalidate(&key)).await;
    assert!(
        cancelled.is_err(),
        "the caller gave up while the deletion waited"
    );
    assert_eq!(
        redis.cli(&["exists", &cache.l2_key(&key).unwrap()]).trim(),
        "1",
        "not deleted yet"
    );
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Some(2),
        "replayed, then reloaded"
    );
    assert_eq!(
        redis.cli(&["exists", &cache.l2_key(&key).unwrap()]).trim(),
        "1",
        "refilled"
    );
}

/// An `insert` whose Redis write fails does not leave the old value there: the old
/// entry is deleted as soon as Redis accepts it (in the background), so a fresh
/// instance does not read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_that_could_not_reach_redis_does_not_leave_the_old_value_there() {
    let redis = Redis::start_own(&[]);
    let db = Versions::new();
    let key = "k".to_owned();
    let writer = instance(&db, "failins", |b| b.l2_redis(redis.url()));
    assert_eq!(writer.get(&key).await.unwrap(), Some(1)); // v1 in Redis
    redis.cli(&["ACL", "SETUSER", "default", "-set"]);
    db.set(&key, 5);
    writer.insert(key.clone(), 5).await;
    assert!(writer.stats().l2_errors >= 1);
    redis.cli(&["ACL", "SETUSER", "default", "+set"]);
    let start = std::time::Instant::now();
    while redis.cli(&["exists", &writer.l2_key(&key).unwrap()]).trim() != "0" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "v1 stayed in Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = instance(&db, "failins", |b| b.l2_redis(redis.url()));
    assert_eq!(fresh.get(&key).await.unwrap(), Some(5));
    assert_eq!(writer.get(&key).await.unwrap(), Some(5));
}

/// A caller that waited on a `get_with` flight invalidated meanwhile runs its own
/// load instead of taking the superseded value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_superseded_get_with_do_not_get_the_old_value() {
    let db = Versions::new();
    let cache = TieredCache::<String, u64>::builder("getwith")
        .build()
        .unwrap();
    let key = "k".to_owned();
    let load = |db: Arc<Versions>| {
        let key = "k".to_owned();
        async move {
            let version = db.get(&key);
            if db.loads.fetch_add(1, Ordering::SeqCst) == 0 {
                db.held.notify_one();
                db.release_notified().await;
            }
            Ok::<_, BoxError>(Some(version))
        }
    };
    let runner = {
        let (cache, key, db) = (cache.clone(), key.clone(), db.clone());
        tokio::spawn(async move { cache.get_with(&key, load(db)).await })
    };
    db.held.notified().await;
    let waiter = {
        let (cache, key, db) = (cache.clone(), key.clone(), db.clone());
        tokio::spawn(async move { cache.get_with(&key, load(db)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await; // the waiter joins the flight
    db.set(&key, 2);
    cache.invalidate(&key).await;
    db.release();
    let ran = runner.await.unwrap().unwrap();
    assert!(matches!(ran, Some(1) | Some(2)), "{ran:?}");
    assert_eq!(waiter.await.unwrap().unwrap(), Some(2));
    assert_eq!(cache.get(&key).await.unwrap(), Some(2));
}

/// A fill held up in Redis (its key's compare-and-set waiting) holds up no other
/// key: commits never wait on Redis I/O.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fill_does_not_hold_up_other_keys() {
    let redis = Redis::start_own(&[]);
    let db = Versions::new();
    let (store, gate) = gated(&redis, Op::Replace, ":slow");
    let cache = instance(&db, "slowfill", |b| {
        b.l2(store).l2_timeout(Duration::from_secs(30))
    });
    gate.arm();
    let slow = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get("slow").await })
    };
    gate.reached.notified().await;
    // 512 other keys: with 256 fence shards, several share the slow key's shard.
    let others = futures_util::future::join_all((0..512).map(|i| {
        let cache = cache.clone();
        async move { cache.get(&format!("other{i}")).await }
    }));
    let done = tokio::time::timeout(Duration::from_secs(20), others).await;
    let results = done.expect("other keys waited for the slow key's fill");
    assert!(results.into_iter().all(|r| r.unwrap() == Some(1)));
    gate.open();
    assert_eq!(slow.await.unwrap().unwrap(), Some(1));
}
