//! `delete_matching` on a Redis Cluster whose topology changes in the middle of a
//! walk: no node is skipped, no `SCAN` cursor is applied to another node.

use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use tiered::{RedisStore, RemoteStore, ScanCursor};

use crate::support::{Redis, RedisCluster};

const KEYS: usize = 6000;

/// The line of `CLUSTER NODES` (as `node` sees it) of the master serving slot 0.
fn master_of_slot_zero(node: &Redis) -> Option<(String, String)> {
    node.cli(&["cluster", "nodes"]).lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let serves = fields
            .iter()
            .skip(8)
            .any(|f| f.starts_with("0-") || *f == "0");
        (fields.get(2)?.contains("master") && serves)
            .then(|| (fields[0].to_owned(), fields[1].to_owned()))
    })
}

/// Keys matching `walk:*` on the nodes that are masters now.
fn keys_left(cluster: &RedisCluster) -> usize {
    cluster
        .nodes()
        .iter()
        .filter(|n| n.cli(&["role"]).starts_with("master"))
        .map(|n| n.cli(&["--scan", "--pattern", "walk:*"]).lines().count())
        .sum()
}

/// Writes `walk:0` … `walk:{KEYS - 1}` through a cluster client.
async fn fill(urls: &[String]) {
    let client = ClusterClient::new(urls.to_vec()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for i in 0..KEYS {
        redis::cmd("SET")
            .arg(format!("walk:{i}"))
            .arg(i)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}

/// Steps the walk from `cursor` until it says it is complete. A node may answer
/// late while the cluster settles: the engine retries a failed step, and so does
/// this.
async fn finish(store: &RedisStore, mut cursor: ScanCursor) {
    let mut last_error = None;
    for _ in 0..300 {
        let step = tokio::time::timeout(
            Duration::from_secs(5),
            store.delete_matching("walk:*", cursor),
        )
        .await;
        match step.expect("a step answers") {
            Ok(step) => match step.next {
                Some(next) => cursor = next,
                None => return,
            },
            Err(e) => {
                last_error = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await
            }
        }
    }
    panic!("the walk does not end; last error: {last_error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_interrupted_by_a_failover_still_removes_every_key() {
    let cluster = RedisCluster::start_with(1);
    let urls = cluster.urls();
    fill(&urls).await;
    let store = RedisStore::cluster(&urls).unwrap();
    let first = store
        .delete_matching("walk:*", ScanCursor::default())
        .await
        .unwrap();
    assert!(first.deleted > 0);
    let cursor = first.next.expect("one step does not remove 6000 keys");

    // The master of slot 0 (where the walk starts) hands over to its replica.
    let (old_id, _) = master_of_slot_zero(&cluster.nodes()[0]).unwrap();
    let replica = cluster
        .nodes()
        .iter()
        .find(|n| {
            n.cli(&["cluster", "nodes"])
                .lines()
                .any(|l| l.contains("myself") && l.contains(&format!("slave {old_id}")))
        })
        .expect("slot 0's master has a replica");
    assert!(replica.cli(&["cluster", "failover"]).contains("OK"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster
        .nodes()
        .iter()
        .all(|n| master_of_slot_zero(n).is_some_and(|(id, _)| id != old_id))
    {
        assert!(Instant::now() < deadline, "the failover did not complete");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The walk goes on from its cursor until it says it is complete.
    finish(&store, cursor).await;
    assert_eq!(keys_left(&cluster), 0, "keys the walk skipped");
}

/// The id of the node on `port`.
fn id_of(node: &Redis) -> String {
    node.cli(&["cluster", "myid"]).trim().to_owned()
}

/// Moves every key of `slot` from `from` to `to` (the slot marked migrating and
/// importing meanwhile), without handing the slot over yet.
fn move_keys(from: &Redis, to: &Redis, slot: u16) {
    let slot = slot.to_string();
    to.cli(&["cluster", "setslot", &slot, "importing", &id_of(from)]);
    from.cli(&["cluster", "setslot", &slot, "migrating", &id_of(to)]);
    loop {
        let keys = from.cli(&["cluster", "getkeysinslot", &slot, "100"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let port = to.port().to_string();
        let mut args = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "keys"];
        args.extend(keys);
        assert!(from.cli(&args).contains("OK"));
    }
}

/// Hands `slot` over to `to` on every node.
fn hand_over(cluster: &RedisCluster, to: &Redis, slot: u16) {
    let (slot, id) = (slot.to_string(), id_of(to));
    for node in cluster.nodes() {
        node.cli(&["cluster", "setslot", &slot, "node", &id]);
    }
}

/// A slot migrates, from the last master in slot order to the first, while the
/// walk is on the last one: the keys that moved to a master the walk had already
/// covered are still found, and the walk does not end while the slot is moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_across_a_slot_migration_still_removes_every_key() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    fill(&urls).await;
    let serves = |node: &Redis, slot: u16| {
        node.cli(&["cluster", "nodes"]).lines().any(|line| {
            line.contains("myself")
                && line.split_whitespace().skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
                })
        })
    };
    let first = cluster.nodes().iter().find(|n| serves(n, 0)).unwrap();
    let last = cluster.nodes().iter().find(|n| serves(n, 16383)).unwrap();
    // A slot of the last master that holds keys.
    let slot = (0..KEYS)
        .map(|i| {
            let slot = last.cli(&["cluster", "keyslot", &format!("walk:{i}")]);
            slot.trim().parse::<u16>().unwrap()
        })
        .find(|&slot| serves(last, slot))
        .unwrap();

    let store = RedisStore::cluster(&urls).unwrap();
    let mut cursor = ScanCursor::default();
    // Walk until the last master's scan has begun.
    while cursor.slot == 0 || !serves(last, cursor.slot) || cursor.position == 0 {
        let step = store.delete_matching("walk:*", cursor).await.unwrap();
        cursor = step.next.expect("the walk is not over yet");
    }
    move_keys(last, first, slot);
    // While the slot is moving, the walk goes on but never ends.
    for _ in 0..20 {
        if let Ok(step) = store.delete_matching("walk:*", cursor).await {
            cursor = step
                .next
                .expect("a walk does not end while a slot migrates");
        }
    }
    hand_over(&cluster, first, slot);
    finish(&store, cursor).await;
    assert_eq!(keys_left(&cluster), 0, "keys the walk skipped");
}
