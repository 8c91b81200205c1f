//! The fleet's costs, on a redis-server of the bench's own:
//! 1. bus latency: from `invalidate` returning on instance A to instance B having
//!    dropped its L1 copy (each instance on its own `RedisStore`, as two processes
//!    would be), next to a bare `PUBLISH` → subscriber round trip;
//! 2. a group of 10k, 100k and 1M keys with 1M unrelated keys in Redis, dropped
//!    by `invalidate_pattern` and, tagged, by `invalidate_tag`, and the whole
//!    cache dropped by `invalidate_all` (the namespace epoch) and by
//!    `invalidate_all_and_reclaim` (the walk): how long each takes, and another
//!    client's `GET` latency meanwhile, next to the same `GET`s with nothing
//!    else running.
//!
//! Run: `cargo bench --bench fleet` (add `-- --quick` for 1k/10k keys).

#[path = "support/redis_server.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tiered::{BoxError, Observer, RedisStore, TieredCache};

const ROUNDS: usize = 1000;

/// Records when B applied an invalidation from the bus, and wakes the bench.
#[derive(Default, Clone)]
struct Received(Arc<(Mutex<Option<Instant>>, tokio::sync::Notify)>);

impl Observer for Received {
    fn invalidation_received(&self) {
        *self.0 .0.lock().unwrap() = Some(Instant::now());
        self.0 .1.notify_one();
    }
}

fn instance(url: &str, observer: Option<Received>) -> TieredCache<u64, u64> {
    let builder = TieredCache::builder("fleet")
        .redis(RedisStore::standalone(url).expect("url"))
        .loader_fn(|k: u64| async move { Ok::<_, BoxError>(Some(k)) });
    match observer {
        Some(o) => builder.observer(o),
        None => builder,
    }
    .build()
    .expect("build")
}

fn row(name: &str, samples: &mut [Duration]) {
    let n = samples.len();
    let max = samples.iter().max().copied().unwrap_or_default();
    let (p50, p99) = support::percentiles(samples);
    println!(
        "{name:<52} n {n:>7}   p50 {:>9.1} µs   p99 {:>9.1} µs   max {:>9.1} µs",
        support::micros(p50),
        support::micros(p99),
        support::micros(max)
    );
}

async fn bus_latency(url: &str) {
    let received = Received::default();
    let a = instance(url, None);
    let b = instance(url, Some(received.clone()));
    a.get(&0).await.expect("subscribe a");
    let mut after_return = Vec::with_capacity(ROUNDS);
    let mut after_start = Vec::with_capacity(ROUNDS);
    let mut early = 0;
    for key in 0..ROUNDS as u64 {
        b.get(&key).await.expect("read");
        *received.0 .0.lock().unwrap() = None;
        let start = Instant::now();
        a.invalidate(&key).await;
        let returned = Instant::now();
        let at = loop {
            if let Some(at) = *received.0 .0.lock().unwrap() {
                break at;
            }
            received.0 .1.notified().await;
        };
        if at <= returned {
            early += 1;
        }
        after_return.push(at.saturating_duration_since(returned));
        after_start.push(at.duration_since(start));
    }
    let client = redis::Client::open(url).expect("url");
    let mut publisher = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let mut subscriber = client.get_async_pubsub().await.expect("pubsub");
    subscriber.subscribe("bare").await.expect("subscribe");
    let mut messages = subscriber.into_on_message();
    let mut bare = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        redis::cmd("PUBLISH")
            .arg("bare")
            .arg(&[0u8; 40][..])
            .query_async::<()>(&mut publisher)
            .await
            .expect("publish");
        messages.next().await.expect("message");
        bare.push(start.elapsed());
    }
    println!("bus latency, {ROUNDS} invalidations of keys B holds in L1:");
    row(
        "A.invalidate returned -> B applied (0 if before)",
        &mut after_return,
    );
    row("A.invalidate called -> B applied", &mut after_start);
    row("bare PUBLISH -> subscriber received", &mut bare);
    println!("  B had applied it before A's call returned in {early} of {ROUNDS} rounds");
}

/// How a group of keys is dropped.
#[derive(Clone, Copy, PartialEq)]
enum Group {
    Pattern,
    Tag,
    All,
    Reclaim,
}

async fn group(url: &str, keys: u64, how: Group) {
    let cache = instance(url, None);
    // The cache's own keys in Redis, counted by another client.
    let namespace = cache.l2_key(&0).expect("an L2");
    let glob = format!("{}*", &namespace[..namespace.len() - 1]);
    let in_namespace = || {
        let keys = support::cli(url, &["--scan", "--pattern", &glob]);
        keys.lines().count() as u64
    };
    let tasks = futures_util::stream::iter(0..keys)
        .map(|i| {
            let cache = cache.clone();
            async move {
                match how {
                    Group::Tag => cache.insert_with_tags(i, i, &["group"]).await,
                    _ => cache.insert(i, i).await,
                }
            }
        })
        .buffer_unordered(64);
    tasks.collect::<Vec<tiered::Written>>().await;
    let client = redis::Client::open(url).expect("url");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let get_latencies = |stop: Arc<AtomicBool>, mut conn: redis::aio::MultiplexedConnection| async move {
        let mut samples = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let start = Instant::now();
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("unrelated:{}", i % 1_000_000))
                .query_async(&mut conn)
                .await
                .expect("get");
            samples.push(start.elapsed());
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        samples
    };
    let stop = Arc::new(AtomicBool::new(false));
    let quiet = tokio::spawn(get_latencies(stop.clone(), conn.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut quiet = quiet.await.expect("task");

    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(get_latencies(stop.clone(), conn.clone()));
    let start = Instant::now();
    let written = match how {
        Group::Pattern => cache.invalidate_pattern("*").await,
        Group::Tag => cache.invalidate_tag("group").await,
        Group::All => cache.invalidate_all().await,
        Group::Reclaim => cache.invalidate_all_and_reclaim().await,
    };
    let took = start.elapsed();
    assert!(written.is_applied(), "{written:?}");
    stop.store(true, Ordering::Relaxed);
    let mut during = during.await.expect("task");
    let left = in_namespace();
    assert_eq!(cache.stats().l2_errors, 0);
    // Every key of the group is gone for every instance (a new one reads
    // Redis): it is loaded again.
    let other = instance(url, None);
    for i in [0, keys / 2, keys - 1] {
        other.get(&i).await.expect("get");
    }
    assert_eq!(
        other.stats().loads,
        3,
        "each key of the group is loaded again"
    );
    let unrelated = support::cli(url, &["dbsize"])
        .trim()
        .parse::<u64>()
        .expect("dbsize");
    assert!(unrelated >= 1_000_000, "the unrelated keys stay");
    let (name, walk) = match how {
        Group::Pattern => {
            assert_eq!(left, 0, "every key of the group went");
            ("invalidate_pattern", "the pattern walk")
        }
        Group::Tag => {
            // The entries stay in Redis (until read or their TTL), besides the
            // clock and the stamp.
            assert!(left >= keys, "nothing was deleted: {left} keys");
            ("invalidate_tag", "the tag invalidation")
        }
        Group::All => {
            assert!(left >= keys, "nothing was deleted: {left} keys");
            ("invalidate_all", "the epoch's stamp")
        }
        Group::Reclaim => {
            assert_eq!(left, 0, "every key of the namespace went");
            ("invalidate_all_and_reclaim", "the namespace walk")
        }
    };
    println!(
        "{name} of {keys} keys among 1,000,000 unrelated: {:.6} s",
        took.as_secs_f64()
    );
    row("  another client's GET, nothing else running", &mut quiet);
    row(
        &format!("  another client's GET, during {walk}"),
        &mut during,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let server = support::RedisServer::start_with(&["--enable-debug-command", "yes"]);
    bus_latency(&server.url).await;
    support::cli(&server.url, &["debug", "populate", "1000000", "unrelated"]);
    let sizes: &[u64] = if quick {
        &[1_000, 10_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    for &keys in sizes {
        for how in [Group::Pattern, Group::Tag, Group::All, Group::Reclaim] {
            group(&server.url, keys, how).await;
        }
    }
}
