//! Several instances of one cache on one Redis (standalone and Cluster): what one
//! changes, the others stop serving, and a load that raced an invalidation never
//! writes its old value back anywhere.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tiered::{RedisStore, TieredCache, TieredCacheBuilder};

use crate::support::versions::{instance, until_value, Versions};
use crate::support::{Redis, RedisCluster};

type Tier<'a> = dyn Fn(TieredCacheBuilder<String, u64>) -> TieredCacheBuilder<String, u64> + 'a;

/// insert / invalidate / invalidate_pattern / invalidate_all on A reach B's L1.
async fn changes_reach_other_instances(tier: &Tier<'_>) {
    let db = Versions::new();
    let a = instance(&db, "fleet", tier);
    let b = instance(&db, "fleet", tier);

    // invalidate
    assert_eq!(b.get("k1").await.unwrap(), Some(1));
    db.set("k1", 2);
    a.invalidate("k1").await;
    until_value(&b, "k1", 2).await;
    assert!(b.stats().invalidations_received >= 1);

    // invalidate_many: 1,000 keys, one message
    let bulk: Vec<String> = (0..1000).map(|i| format!("bulk:{i}")).collect();
    for key in &bulk {
        assert_eq!(b.get(key).await.unwrap(), Some(1));
    }
    for key in &bulk {
        db.set(key, 6);
    }
    let received = b.stats().invalidations_received;
    a.invalidate_many(&bulk).await;
    for key in &bulk {
        until_value(&b, key, 6).await;
    }
    assert_eq!(b.stats().invalidations_received, received + 1);
    let fresh = instance(&db, "fleet", tier);
    assert_eq!(fresh.get(&bulk[999]).await.unwrap(), Some(6));

    // insert_many: 1,000 entries, one message, new values in L2
    let received = b.stats().invalidations_received;
    a.insert_many(bulk.iter().map(|k| (k.clone(), 8))).await;
    for key in &bulk {
        until_value(&b, key, 8).await;
    }
    assert_eq!(b.stats().invalidations_received, received + 1);
    let fresh = instance(&db, "fleet", tier);
    assert_eq!(fresh.get(&bulk[0]).await.unwrap(), Some(8), "from L2");

    // insert
    assert_eq!(b.get("k2").await.unwrap(), Some(1));
    db.set("k2", 5);
    a.insert("k2".into(), 5).await;
    until_value(&b, "k2", 5).await;

    // a pattern: only the matching keys are dropped
    let users: Vec<String> = (0..20).map(|i| format!("user:{i}")).collect();
    for key in users.iter().chain([&"order:1".to_owned()]) {
        assert_eq!(b.get(key).await.unwrap(), Some(1));
    }
    for key in &users {
        db.set(key, 3);
    }
    db.set("order:1", 3);
    a.invalidate_pattern("user:*").await;
    for key in &users {
        until_value(&b, key, 3).await;
    }
    assert_eq!(
        b.get("order:1").await.unwrap(),
        Some(1),
        "not matched: still cached"
    );

    // everything
    db.set("order:1", 4);
    a.invalidate_all().await;
    until_value(&b, "order:1", 4).await;

    for cache in [&a, &b] {
        let stats = cache.stats();
        assert_eq!(stats.l2_errors, 0, "{stats:?}");
        assert_eq!(stats.bus_publish_errors, 0, "{stats:?}");
    }
}

/// B's load reads the old row and is held while A invalidates; released at once
/// or 50 ms later, its value is nowhere afterwards.
async fn a_racing_load_never_writes_back(tier: &Tier<'_>, name: &str, release_after: Duration) {
    let db = Versions::new();
    let a = instance(&db, name, tier);
    let b = instance(&db, name, tier);
    let key = "row".to_owned();
    db.hold_next_load();
    let reader = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move { b.get(&key).await })
    };
    db.held.notified().await; // B's load read version 1
    db.set(&key, 2);
    a.invalidate(&key).await;
    tokio::time::sleep(release_after).await;
    db.release();
    let first = reader.await.unwrap().unwrap();
    assert!(matches!(first, Some(1) | Some(2)), "{first:?}");

    // Nobody serves version 1 any more: not B, not A, not a fresh instance.
    assert_eq!(b.get(&key).await.unwrap(), Some(2));
    assert_eq!(a.get(&key).await.unwrap(), Some(2));
    let fresh = instance(&db, name, tier);
    assert_eq!(fresh.get(&key).await.unwrap(), Some(2));
    assert!(b.stats().superseded >= 1, "{:?}", b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_changes_reach_other_instances() {
    let redis = Redis::start_own(&[]);
    let url = redis.url().to_owned();
    changes_reach_other_instances(&|b| b.l2_redis(&url)).await;
}

/// A `RedisStore` given to `.l2` brings its bus, as `.redis` does (before,
/// `.l2` took the store alone: no instance heard another's invalidations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_store_given_to_l2_brings_its_bus() {
    let redis = Redis::start_own(&[]);
    let url = redis.url().to_owned();
    let db = Versions::new();
    // Through the re-exported `redis` crate (no version of the test's own).
    let store = |b: TieredCacheBuilder<String, u64>| {
        let client = tiered::redis::Client::open(url.as_str()).unwrap();
        b.l2(RedisStore::from_client(client))
    };
    let (a, b) = (
        instance(&db, "l2-bus", store),
        instance(&db, "l2-bus", store),
    );
    assert_eq!(b.get("k").await.unwrap(), Some(1));
    db.set("k", 2);
    a.invalidate("k").await;
    until_value(&b, "k", 2).await;
    assert!(b.stats().invalidations_received >= 1);
    // Another store given after it takes its bus away; no_bus() opts out.
    #[cfg(feature = "testing")]
    let redis_then_memory = TieredCache::<String, u64>::builder("l2-bus")
        .l2(RedisStore::standalone(&url).unwrap())
        .l2(tiered::MemoryStore::new())
        .build()
        .unwrap();
    #[cfg(feature = "testing")]
    assert!(redis_then_memory.health().bus.is_none());
    let opted_out = TieredCache::<String, u64>::builder("l2-bus")
        .l2(RedisStore::standalone(&url).unwrap())
        .no_bus()
        .build()
        .unwrap();
    assert!(opted_out.health().bus.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_changes_reach_other_instances() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    changes_reach_other_instances(&|b| b.l2_redis_cluster(&urls)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_sharing_one_store_share_its_subscription() {
    let redis = Redis::start_own(&[]);
    let store = RedisStore::standalone(redis.url()).unwrap();
    let other = store.clone();
    changes_reach_other_instances(&move |b| b.redis(store.clone())).await;
    // One subscriber connection for both instances (and a second test's caches).
    let db = Versions::new();
    let c = instance(&db, "shared", |b| b.redis(other.clone()));
    let d = instance(&db, "shared", |b| b.redis(other.clone()));
    assert_eq!(d.get("x").await.unwrap(), Some(1));
    db.set("x", 2);
    c.invalidate("x").await;
    until_value(&d, "x", 2).await;
    let clients = redis.cli(&["client", "list"]);
    let subscribers = clients.lines().filter(|l| l.contains("flags=P")).count();
    assert_eq!(subscribers, 1, "{clients}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_a_racing_load_never_writes_back() {
    let redis = Redis::start_own(&[]);
    let url = redis.url().to_owned();
    let tier = move |b: TieredCacheBuilder<String, u64>| b.l2_redis(&url);
    a_racing_load_never_writes_back(&tier, "race0", Duration::ZERO).await;
    a_racing_load_never_writes_back(&tier, "race50", Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_racing_load_never_writes_back() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let tier = move |b: TieredCacheBuilder<String, u64>| b.l2_redis_cluster(&urls);
    a_racing_load_never_writes_back(&tier, "race0", Duration::ZERO).await;
    a_racing_load_never_writes_back(&tier, "race50", Duration::from_millis(50)).await;
}

/// Without Redis (no L2): the bus alone is what stops B's held load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_message_stops_a_local_load_in_flight() {
    let redis = Redis::start_own(&[]);
    let store = RedisStore::standalone(redis.url()).unwrap();
    let db = Versions::new();
    let a = instance(&db, "busonly", |b| b.bus(store.clone()));
    let b = instance(&db, "busonly", |b| b.bus(store.clone()));
    let key = "row".to_owned();
    assert_eq!(a.get("warm").await.unwrap(), Some(1)); // A subscribed
    db.hold_next_load();
    let reader = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move { b.get(&key).await })
    };
    db.held.notified().await;
    db.set(&key, 2);
    a.invalidate(&key).await;
    // Wait until B applied the message, then let its load finish.
    let start = std::time::Instant::now();
    while b.stats().invalidations_received == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "no message");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    db.release();
    reader.await.unwrap().unwrap();
    assert_eq!(b.get(&key).await.unwrap(), Some(2));
}

/// Redis killed while B holds entries, an invalidation on A during the outage:
/// once Redis is back, B's stale entries are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_invalidated_during_a_bus_outage_are_gone_after_reconnect() {
    let mut redis = Redis::start_own(&[]);
    let url = redis.url().to_owned();
    let db = Versions::new();
    let tier = |b: TieredCacheBuilder<String, u64>| {
        b.l2_redis(&url)
            .l2_breaker(5, Duration::from_millis(200))
            .l2_timeout(Duration::from_millis(100))
    };
    let a = instance(&db, "outage", tier);
    let b = instance(&db, "outage", tier);
    for key in ["k1", "k2", "k3"] {
        assert_eq!(b.get(key).await.unwrap(), Some(1));
    }
    redis.kill();
    db.set("k1", 2);
    a.invalidate("k1").await;
    assert_eq!(
        b.get("k1").await.unwrap(),
        Some(1),
        "no bus: B still has it (this is what the reconnect must repair)"
    );
    redis.restart();
    until_value(&b, "k1", 2).await;
    assert!(b.stats().bus_resubscribes >= 1, "{:?}", b.stats());
    let loads_before = db.loads.load(Ordering::SeqCst);
    assert_eq!(b.get("k2").await.unwrap(), Some(1));
    assert!(
        db.loads.load(Ordering::SeqCst) > loads_before,
        "all of L1 was cleared: k2 reloaded"
    );
}

/// A child process: this same test binary (or a copy of it under another name),
/// running [`child_instance`], driven line by line.
struct ChildInstance {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: std::io::BufReader<std::process::ChildStdout>,
}

impl ChildInstance {
    fn spawn(exe: &std::path::Path, redis_url: &str) -> ChildInstance {
        use std::process::{Command, Stdio};
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "fleet::child_instance",
                "--ignored",
                "--nocapture",
            ])
            .env("TIERED_CHILD_REDIS", redis_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child instance");
        let to = child.stdin.take().unwrap();
        let from = std::io::BufReader::new(child.stdout.take().unwrap());
        ChildInstance { child, to, from }
    }

    fn ask(&mut self, line: &str) -> String {
        use std::io::{BufRead, Write};
        writeln!(self.to, "{line}").unwrap();
        loop {
            let mut reply = String::new();
            assert!(self.from.read_line(&mut reply).unwrap() > 0, "child exited");
            if let Some(answer) = reply.strip_prefix("> ") {
                return answer.trim().to_owned();
            }
        }
    }

    fn quit(mut self) {
        self.ask("quit");
        assert!(self.child.wait().unwrap().success());
    }
}

/// The cache both sides of the process tests build (the "database" is the Redis
/// key `row:{key}`, outside every cache).
fn procs_cache(url: &str, prefix: Option<&str>) -> TieredCache<String, u64> {
    let row_url = url.to_owned();
    let builder = TieredCache::<String, u64>::builder("procs")
        .l2_redis(url)
        .l1_ttl(Duration::from_secs(3600));
    match prefix {
        Some(prefix) => builder.l2_prefix(prefix),
        None => builder,
    }
    .loader_fn(move |key: String| {
        let url = row_url.clone();
        async move {
            let client = redis::Client::open(url)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let row: u64 = redis::cmd("GET")
                .arg(format!("row:{key}"))
                .query_async(&mut conn)
                .await?;
            Ok::<_, tiered::BoxError>(Some(row))
        }
    })
    .build()
    .unwrap()
}

/// Two OS processes: this test and a child process (this same test binary,
/// running [`child_instance`]) on one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_see_each_others_invalidations() {
    let redis = Redis::start_own(&[]);
    let mut child = ChildInstance::spawn(&std::env::current_exe().unwrap(), redis.url());
    let set_row = |v: u64| redis.cli(&["set", "row:k", &v.to_string()]);
    set_row(1);
    let a = procs_cache(redis.url(), None);
    assert_eq!(child.ask("get"), "1");
    set_row(2);
    a.invalidate("k").await;
    let start = std::time::Instant::now();
    while child.ask("get") != "2" {
        assert!(start.elapsed() < Duration::from_secs(10), "child kept 1");
    }
    set_row(3);
    a.invalidate_pattern("*").await;
    while child.ask("get") != "3" {
        assert!(start.elapsed() < Duration::from_secs(20), "child kept 2");
    }
    // At least both: delivery is at-least-once (a publish that timed out here,
    // under load, may still have reached Redis, and is sent again).
    let received: u64 = child.ask("received").parse().unwrap();
    assert!(received >= 2, "the child applied {received} invalidations");
    child.quit();
}

/// Two services (two executables) with a cache of the same name on one Redis,
/// with default settings: neither reads, nor clears, the other's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_with_the_same_cache_name_stay_isolated_by_default() {
    let redis = Redis::start_own(&[]);
    let dir = crate::support::scratch_dir("other-service");
    let other = dir.join("other-service");
    std::fs::copy(std::env::current_exe().unwrap(), &other).expect("copy the test binary");
    redis.cli(&["set", "row:k", "2"]);
    let ours = procs_cache(redis.url(), None);
    ours.insert("k".into(), 1).await;
    let mut theirs = ChildInstance::spawn(&other, redis.url());
    assert_eq!(
        theirs.ask("get"),
        "2",
        "the other service loads its own value"
    );
    assert_eq!(theirs.ask("invalidate_all"), "done");
    let fresh = procs_cache(redis.url(), None);
    assert_eq!(fresh.get("k").await.unwrap(), Some(1), "ours survived");
    assert_eq!(fresh.stats().l2.hits, 1);
    assert_eq!(
        ours.stats().invalidations_received,
        0,
        "their bus is not ours"
    );
    theirs.quit();
    // An explicit shared prefix shares.
    let a = procs_cache(redis.url(), Some("shop"));
    a.insert("s".into(), 7).await;
    let b = procs_cache(redis.url(), Some("shop"));
    assert_eq!(b.get("s").await.unwrap(), Some(7));
    let _ = std::fs::remove_dir_all(dir);
}

/// The child side of [`two_processes_see_each_others_invalidations`]: reads
/// commands from stdin, answers on stdout after `> `.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by two_processes_see_each_others_invalidations as a child process"]
async fn child_instance() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let url = std::env::var("TIERED_CHILD_REDIS").expect("started by the parent test");
    let cache = procs_cache(&url, None);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        let answer = match line.trim() {
            "get" => format!("{:?}", cache.get("k").await.unwrap().unwrap()),
            "received" => cache.stats().invalidations_received.to_string(),
            "invalidate_all" => {
                cache.invalidate_all().await;
                "done".to_owned()
            }
            "quit" => {
                println!("> bye");
                return;
            }
            other => format!("unknown command {other}"),
        };
        println!("> {answer}");
    }
}
