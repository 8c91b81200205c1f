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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_interrupted_by_a_failover_still_removes_every_key() {
    let cluster = RedisCluster::start_with(1);
    let urls = cluster.urls();
    let client = ClusterClient::new(urls.clone()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for i in 0..KEYS {
        redis::cmd("SET")
            .arg(format!("walk:{i}"))
            .arg(i)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let store = RedisStore::cluster(&urls).unwrap();
    let first = store
        .delete_matching("walk:*", ScanCursor::default())
        .await
        .unwrap();
    assert!(first.deleted > 0);
    let mut cursor = first.next.expect("one step does not remove 6000 keys");

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
    let mut steps = 0;
    let mut last_error = None;
    loop {
        steps += 1;
        assert!(
            steps < 300,
            "the walk does not end; last error: {last_error:?}"
        );
        let step = tokio::time::timeout(
            Duration::from_secs(5),
            store.delete_matching("walk:*", cursor),
        )
        .await;
        match step.expect("a step answers") {
            Ok(step) => match step.next {
                Some(next) => cursor = next,
                None => break,
            },
            // A node may answer late while the cluster settles: the engine
            // retries a failed step, and so does this test.
            Err(e) => {
                last_error = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await
            }
        }
    }
    assert_eq!(keys_left(&cluster), 0, "keys the walk skipped");
}
