//! The conformance suite (`tests/conformance/suite.rs`) against a Redis server and
//! a 3-master Redis Cluster: the same checks that `MemoryStore` and `MemoryBus`
//! pass (`tests/conformance/memory.rs`). The servers are the test's own (or
//! `REDIS_URL`'s); a missing redis-server fails the test.

#[path = "../conformance/suite.rs"]
mod suite;

use tiered::RedisStore;

use crate::support::{Redis, RedisCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_server_conforms() {
    let redis = Redis::start();
    let store = RedisStore::standalone(redis.url()).unwrap();
    store.ping().await.expect("the server answers");
    suite::every_store_check(&store).await;
    suite::pubsub(&store).await;
    let other = RedisStore::standalone(redis.url()).unwrap();
    suite::pubsub_across(&store, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_conforms() {
    let cluster = RedisCluster::start();
    let store = RedisStore::cluster(&cluster.urls()).unwrap();
    store.ping().await.expect("the cluster answers");
    suite::every_store_check(&store).await;
    suite::pubsub(&store).await;
    let other = RedisStore::cluster(&cluster.urls()).unwrap();
    suite::pubsub_across(&store, &other).await;
}
