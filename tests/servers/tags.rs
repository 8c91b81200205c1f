//! Tags against a real redis-server: `invalidate_tag` racing loads on two
//! instances, a lost subscription, and a server that loses its data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::Redis;
use tiered::{loader_with_context_fn, BoxError, LoadContext, Loaded, TieredCache};

/// The service's database: a version per key (1 until set), and a load count.
/// A key `user:N:…` is tagged `user:N`; a load takes up to 3 ms after it read
/// its row.
#[derive(Debug, Default)]
struct Db {
    rows: Mutex<HashMap<String, u64>>,
    loads: AtomicU64,
}

impl Db {
    fn bump(&self, key: &str) -> u64 {
        let mut rows = self.rows.lock().unwrap();
        let row = rows.entry(key.to_owned()).or_insert(1);
        *row += 1;
        *row
    }
}

fn instance(db: &Arc<Db>, url: &str) -> TieredCache<String, u64> {
    let db = db.clone();
    TieredCache::builder("tags-redis")
        .l2_redis(url)
        .l1_ttl(Duration::from_secs(3600))
        .l2_ttl(Duration::from_secs(3600))
        .loader(loader_with_context_fn(
            move |key: String, _: LoadContext<u64>| {
                db.loads.fetch_add(1, Ordering::SeqCst);
                let version = *db.rows.lock().unwrap().get(&key).unwrap_or(&1);
                let tag = key.split(':').take(2).collect::<Vec<_>>().join(":");
                async move {
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3000))).await;
                    Ok::<_, BoxError>(Loaded::value(version).with_tags([tag]))
                }
            },
        ))
        .build()
        .expect("build")
}

async fn get(cache: &TieredCache<String, u64>, key: &str) -> u64 {
    cache
        .get(&key.to_owned())
        .await
        .unwrap()
        .expect("every row exists")
}

/// Reads `key` until it is at least `want` (failing after 5 s).
async fn until(cache: &TieredCache<String, u64>, key: &str, want: u64) {
    let start = Instant::now();
    while get(cache, key).await < want {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{key} never reached {want}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Readers on two instances load the keys of user 7 (tagged `user:7`) without
/// pause while instance A updates them and invalidates the tag, 30 times: once
/// `invalidate_tag` returns, A never reads an older version, a new instance
/// reads the new one from Redis at once, and B gets it once the message is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_racing_loads_on_two_instances_never_brings_an_old_value_back() {
    let redis = Redis::start();
    racing_loads(&redis, false).await;
}

/// The same race with `invalidate_all` (the namespace epoch): the old values
/// stay in Redis (no walk), and are never served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_all_racing_loads_on_two_instances_never_brings_an_old_value_back() {
    let redis = Redis::start_own(&[]);
    racing_loads(&redis, true).await;
    let stats = redis.cli(&["info", "commandstats"]);
    assert!(!stats.contains("cmdstat_scan"), "no walk: {stats}");
    let epoch = redis.cli(&["keys", "*#all"]);
    assert_eq!(epoch.lines().count(), 1, "the epoch's key: {epoch}");
}

/// Readers on A and B without pause while A bumps user 7's rows and
/// invalidates them (`all`: everything, else the tag), 30 times.
async fn racing_loads(redis: &Redis, all: bool) {
    let db = Arc::new(Db::default());
    let (a, b) = (instance(&db, redis.url()), instance(&db, redis.url()));
    let keys = ["user:7:profile", "user:7:orders", "user:7:cart"];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .map(|cache| {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let key = keys[fastrand::usize(..keys.len())];
                    get(&cache, key).await;
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..500))).await;
                }
            })
        })
        .collect();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..5))).await;
        let written: Vec<(&str, u64)> = keys.iter().map(|k| (*k, db.bump(k))).collect();
        if all {
            a.invalidate_all().await;
        } else {
            a.invalidate_tag("user:7").await;
        }
        let fresh = instance(&db, redis.url());
        for (key, version) in &written {
            assert!(get(&a, key).await >= *version, "{key} on A");
            assert!(
                get(&fresh, key).await >= *version,
                "{key} on a new instance"
            );
            until(&b, key, *version).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    assert!(
        a.stats().superseded + b.stats().superseded > 0,
        "loads overlapped"
    );
}

/// B's subscription is cut while A invalidates the tag (the message is lost):
/// when B resubscribes it forgets the stamps it knew, reads them from Redis
/// again, and never serves the old entry it has in L1 or finds in L2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_message_does_not_keep_an_invalidated_tag_readable() {
    let redis = Redis::start_own(&[]);
    let db = Arc::new(Db::default());
    let (a, b) = (instance(&db, redis.url()), instance(&db, redis.url()));
    assert_eq!(get(&b, "user:7:profile").await, 1);
    assert_eq!(get(&a, "user:7:profile").await, 1);
    let version = db.bump("user:7:profile");
    // Cut every client's subscription, then invalidate before they are back.
    redis.cli(&["client", "kill", "type", "pubsub"]);
    a.invalidate_tag("user:7").await;
    until(&b, "user:7:profile", version).await;
    assert!(b.stats().bus_resubscribes >= 1);
}

/// The server restarts empty (no persistence): stamps and entries are gone.
/// B, whose view of the tag clock dates from before, fills Redis again; A's
/// invalidation after the restart still makes B's new entry unreadable (the
/// clock is the server's time, so it kept moving forward).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lost_its_data_still_invalidates_what_was_written_since() {
    let mut redis = Redis::start_own(&[]);
    let db = Arc::new(Db::default());
    let (a, b) = (instance(&db, redis.url()), instance(&db, redis.url()));
    assert_eq!(get(&a, "user:7:profile").await, 1);
    a.invalidate_tag("user:7").await; // both now know a stamp from before
    until(&b, "user:7:profile", 1).await;
    redis.restart();
    let start = Instant::now();
    // B loads into the empty server once its connection is back (an
    // invalidation first each time, so that it does not answer from L1).
    while redis.cli(&["dbsize"]).trim() == "0" {
        b.invalidate("user:7:profile").await;
        get(&b, "user:7:profile").await;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "B never refilled Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let version = db.bump("user:7:profile");
    a.invalidate_tag("user:7").await;
    while redis.cli(&["keys", "*#tag:user:7"]).trim().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "A's stamp never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = instance(&db, redis.url());
    assert_eq!(get(&fresh, "user:7:profile").await, version);
    until(&b, "user:7:profile", version).await;
}
