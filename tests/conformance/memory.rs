//! The conformance suite (`suite.rs`) against `MemoryStore` and `MemoryBus`: the
//! same checks that a Redis server and a Redis Cluster pass (`tests/servers/conformance.rs`).

#[path = "suite.rs"]
mod suite;

use tiered::{MemoryBus, MemoryStore};

/// One test per store check, each on a store of its own.
macro_rules! store_checks {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $check() {
            suite::$check(&MemoryStore::new()).await;
        }
    )*};
}

store_checks!(
    get_set_and_expiry,
    get_many_in_order,
    get_or_reserve_is_atomic,
    replace_is_compare_and_set,
    leases_are_exclusive,
    delete_removes_keys,
    delete_matching_follows_redis_globs,
    delete_matching_the_empty_key,
    delete_matching_walks_many_keys,
    delete_matching_nothing,
    delete_matching_skips_expired_keys,
    ping_answers,
);

/// Every check on one store, as they share a server: their keys do not meet, and
/// each cleans up after itself.
#[tokio::test]
async fn every_check_on_one_store() {
    let store = MemoryStore::new();
    suite::every_store_check(&store).await;
    assert!(store.keys().is_empty(), "left behind: {:?}", store.keys());
}

/// Checks through handles made by `connect`: they are clients of the same data.
#[tokio::test]
async fn checks_through_other_handles() {
    let store = MemoryStore::new();
    let other = store.connect();
    suite::delete_matching_walks_many_keys(&other).await;
    suite::leases_are_exclusive(&store.connect()).await;
    assert!(store.keys().is_empty());
}

#[tokio::test]
async fn pubsub() {
    suite::pubsub(&MemoryBus::new()).await;
}

#[tokio::test]
async fn pubsub_across() {
    let bus = MemoryBus::new();
    suite::pubsub_across(&bus, &bus.connect()).await;
}
