//! A Redis Cluster master killed under a read, write and invalidate load (three
//! masters, one replica each): no read fails, reads go to the loader while the
//! master's slots are away and to Redis again once its replica is promoted, and
//! no invalidation issued meanwhile is lost (what was owed reaches the new
//! master; what the old master took with it is a miss, not a stale value).
//!
//! The figures (time without L2, time to Redis again, invalidations issued and
//! applied) are printed: `scripts/failover 10`; docs/BENCHMARKS.md "Failover"
//! has ten runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tiered::{BoxError, RedisStore, TieredCache, Written};

use crate::support::RedisCluster;

const KEYS: u64 = 300;

/// The rows: a version per key, and how many loads read them.
#[derive(Default)]
struct Rows {
    versions: Mutex<HashMap<u64, u64>>,
    loads: AtomicU64,
}

impl Rows {
    fn version(&self, key: u64) -> u64 {
        *self.versions.lock().unwrap().get(&key).unwrap_or(&0)
    }

    fn bump(&self, key: u64) -> u64 {
        let mut versions = self.versions.lock().unwrap();
        let version = versions.entry(key).or_insert(0);
        *version += 1;
        *version
    }
}

fn instance(rows: &Arc<Rows>, urls: &[String]) -> TieredCache<u64, u64> {
    instance_keeping(rows, urls, Duration::from_millis(500))
}

/// An instance whose L1 keeps entries for `l1_ttl`.
fn instance_keeping(rows: &Arc<Rows>, urls: &[String], l1_ttl: Duration) -> TieredCache<u64, u64> {
    let rows = Arc::clone(rows);
    TieredCache::builder("failover")
        .l2(RedisStore::cluster(urls).expect("cluster urls"))
        .l1_ttl(l1_ttl)
        .l2_ttl(Duration::from_secs(600))
        .l2_timeout(Duration::from_millis(300))
        .fleet_single_flight(Duration::from_secs(2))
        .loader_fn(move |key: u64| {
            rows.loads.fetch_add(1, Ordering::SeqCst);
            let version = rows.version(key);
            async move { Ok::<_, BoxError>(Some(version)) }
        })
        .build()
        .expect("valid settings")
}

/// Whether `key`'s L2 entry lives in one of the slots `port`'s node serves.
fn served_by(cluster: &RedisCluster, port: u16, l2_key: &str) -> bool {
    let node = &cluster.nodes()[0];
    let slot: u64 = node
        .cli(&["cluster", "keyslot", l2_key])
        .trim()
        .parse()
        .unwrap();
    node.cli(&["cluster", "nodes"]).lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields
            .get(1)
            .is_some_and(|a| a.starts_with(&format!("127.0.0.1:{port}@")))
            && fields.iter().skip(8).any(|range| {
                let mut bounds = range.split('-').map(|b| b.parse::<u64>());
                match (bounds.next(), bounds.next()) {
                    (Some(Ok(lo)), Some(Ok(hi))) => (lo..=hi).contains(&slot),
                    (Some(Ok(only)), None) => only == slot,
                    _ => false,
                }
            })
    })
}

/// `scripts/failover N` runs it N times, with its figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_under_load_loses_no_read_and_no_invalidation() {
    let mut cluster = RedisCluster::start_with(1);
    let urls = cluster.urls();
    let rows = Arc::new(Rows::default());
    let writer = instance(&rows, &urls);
    let reader = instance(&rows, &urls);
    // Keeps what it reads for a minute: only the bus can tell it of the
    // writer's invalidations in time.
    let watcher = instance_keeping(&rows, &urls, Duration::from_secs(60));
    for key in 0..KEYS {
        assert_eq!(reader.get(&key).await.unwrap(), Some(0));
        assert_eq!(watcher.get(&key).await.unwrap(), Some(0));
    }
    // The master to kill, and the keys whose entries it holds.
    let victim = cluster
        .nodes()
        .iter()
        .position(|n| n.cli(&["role"]).starts_with("master"))
        .expect("a master");
    let victim_port = cluster.nodes()[victim].port();
    let on_victim: Vec<u64> = (0..KEYS)
        .filter(|&k| served_by(&cluster, victim_port, &reader.l2_key(&k).unwrap()))
        .collect();
    assert!(!on_victim.is_empty(), "some keys live on the victim");

    // The load: readers on both instances, and a writer that updates a row,
    // then invalidates its key, in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let read_errors = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (who, cache) in [
        ("writer", writer.clone()),
        ("reader", reader.clone()),
        ("watcher", watcher.clone()),
    ] {
        let (stop, read_errors, reads) = (stop.clone(), read_errors.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let mut key = 0;
            while !stop.load(Ordering::Relaxed) {
                key = (key + 7) % KEYS;
                // A hang is a failure too: no read may take longer than this.
                let read = tokio::time::timeout(Duration::from_secs(30), cache.get(&key)).await;
                // A service's request yields between reads; a loop of L1
                // hits (always ready) would not, and would keep its worker
                // from the tasks queued behind it (tokio's LIFO slot cannot
                // be stolen), flights and the writer included.
                tokio::task::yield_now().await;
                match read {
                    Ok(Ok(Some(_))) => reads.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!(
                            "a failed read of {key} on the {who}: {other:?}; {:?}; {:?}",
                            cache.health(),
                            cache.stats()
                        );
                        read_errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let issued = Arc::new(AtomicU64::new(0));
    let writes = {
        let (stop, issued, rows, writer) =
            (stop.clone(), issued.clone(), rows.clone(), writer.clone());
        tokio::spawn(async move {
            let mut key = 0;
            let mut stale_own_reads = 0;
            while !stop.load(Ordering::Relaxed) {
                key = (key + 13) % KEYS;
                let version = rows.bump(key);
                writer.invalidate(&key).await;
                issued.fetch_add(1, Ordering::Relaxed);
                // This instance never serves what it invalidated, whatever L2
                // is doing.
                if writer.get(&key).await.unwrap().is_none_or(|v| v < version) {
                    stale_own_reads += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stale_own_reads
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let l2_hits_before = reader.stats().l2.hits;
    let killed = Instant::now();
    cluster.kill_node(victim);
    // Redis again: a write then a read, through L2, of a key on the victim's
    // slots, from an instance with nothing in L1.
    let probe_key = on_victim[0];
    let back = loop {
        assert!(killed.elapsed() < Duration::from_secs(60), "never back");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fresh = instance(&rows, &urls);
        let before = fresh.stats().l2.hits;
        if writer.insert(probe_key, rows.version(probe_key)).await == Written::Applied
            && fresh.get(&probe_key).await.unwrap().is_some()
            && fresh.stats().l2.hits > before
        {
            break killed.elapsed();
        }
    };
    // When, after the kill, the reader's last L2 call failed.
    let since_kill = killed.elapsed();
    let last_l2_error = (reader.health().l2)
        .and_then(|l2| l2.last_error)
        .map(|error| since_kill.saturating_sub(error.ago));
    // Some more load on the promoted replica, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let stale_own_reads = writes.await.unwrap();

    // Everything owed is applied, and every key read from a fresh instance
    // (so from L2, else the loader) is the row's latest version.
    assert_eq!(
        writer.flush(Duration::from_secs(30)).await,
        Written::Applied
    );
    assert_eq!(
        reader.flush(Duration::from_secs(30)).await,
        Written::Applied
    );
    // Every invalidation reached the watcher's L1 too (over the bus, or by
    // its clearing L1 when its subscription dropped): within a few seconds,
    // far inside its minute-long L1 TTL.
    let settled = Instant::now();
    loop {
        let mut behind = Vec::new();
        for key in 0..KEYS {
            let got = watcher.get(&key).await.unwrap();
            if got != Some(rows.version(key)) {
                behind.push((key, got, rows.version(key)));
            }
        }
        if behind.is_empty() {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(10),
            "the watcher still serves invalidated values: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = instance(&rows, &urls);
    let mut stale = Vec::new();
    for key in 0..KEYS {
        let got = fresh.get(&key).await.unwrap();
        if got != Some(rows.version(key)) {
            stale.push((key, got, rows.version(key)));
        }
    }
    println!(
        "failover: Redis again after {back:?} (a write and an L2 read of a key on the killed \
         master's slots); the reader's last failed L2 call {last_l2_error:?} after the kill; \
         {} invalidations issued, {} reads ({} errors), {} loads; L2 hits on the reader since \
         the kill: {}",
        issued.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
        read_errors.load(Ordering::Relaxed),
        rows.loads.load(Ordering::SeqCst),
        reader.stats().l2.hits - l2_hits_before,
    );
    assert_eq!(
        read_errors.load(Ordering::Relaxed),
        0,
        "no read failed or hung"
    );
    assert_eq!(
        stale_own_reads, 0,
        "the writer never read back what it invalidated"
    );
    assert!(stale.is_empty(), "stale after the failover: {stale:?}");
    assert!(issued.load(Ordering::Relaxed) > 0);
}

/// A cluster with a master gone and no replica to take over (and
/// `cluster-require-full-coverage no`, so the others go on serving): a store
/// says its calls failed, rather than answering for the masters that are
/// left. redis-rs sends a multi-slot `UNLINK` or a `PING` only to the nodes
/// it has a connection to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_master_gone_a_cluster_store_fails_rather_than_answer_for_the_rest() {
    use tiered::RemoteStore;
    let mut cluster = RedisCluster::start_configured(0, &["--cluster-require-full-coverage", "no"]);
    let urls = cluster.urls();
    let keys: Vec<String> = (0..300).map(|i| format!("gone:{i}")).collect();
    {
        let client = redis::cluster::ClusterClient::new(urls.clone()).unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        for key in &keys {
            redis::cmd("SET")
                .arg(key)
                .arg(1)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
    }
    let store = RedisStore::cluster(&urls).unwrap();
    store.ping().await.expect("every master answers");
    cluster.kill_node(0);
    let survivor = &cluster.nodes()[1];
    let flagged = Instant::now();
    while !survivor.cli(&["cluster", "nodes"]).contains("master,fail") {
        assert!(flagged.elapsed() < Duration::from_secs(30), "never flagged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reads of every key: the client meets the dead master, reads the
    // topology again, and keeps no connection to it.
    let reads = async {
        for key in &keys {
            let _ = tokio::time::timeout(Duration::from_secs(5), store.get(key)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), reads).await;
    let deleted = tokio::time::timeout(Duration::from_secs(30), store.delete(&keys)).await;
    assert!(
        matches!(deleted, Ok(Err(_))),
        "a deletion that missed a master is an error: {deleted:?}"
    );
    let pinged = tokio::time::timeout(Duration::from_secs(30), store.ping()).await;
    assert!(matches!(pinged, Ok(Err(_))), "{pinged:?}");
}
