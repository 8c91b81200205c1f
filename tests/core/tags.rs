//! Tags on the in-memory doubles: `invalidate_tag` drops every entry carrying
//! the tag in every tier and instance, in one store call and one message, and
//! holds against loads in flight, lost messages and an unreachable store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::Db;
use tiered::{
    loader_with_context_fn, BoxError, LoadContext, Loaded, MemoryBus, MemoryStore, StoreOp,
    TieredCache,
};

/// A key `user:N:…` is tagged `user:N`.
fn user_of(key: &str) -> String {
    key.split(':').take(2).collect::<Vec<_>>().join(":")
}

fn instance(
    db: &Arc<Db>,
    store: impl tiered::RemoteStore,
    bus: MemoryBus,
) -> TieredCache<String, u64> {
    let db = db.clone();
    TieredCache::builder("tags")
        .l2(store)
        .bus(bus)
        .l1_ttl(Duration::from_secs(3600))
        .l2_ttl(Duration::from_secs(3600))
        .l2_timeout(Duration::from_millis(100))
        .loader(loader_with_context_fn(
            move |key: String, _: LoadContext<u64>| {
                db.loads.fetch_add(1, Ordering::SeqCst);
                // The query reads the row first, then takes a while.
                let version = *db.rows.lock().unwrap().get(&key).unwrap_or(&1);
                let gate = db.gate.clone();
                async move {
                    if let Some(gate) = gate {
                        gate.acquire().await?.forget();
                    }
                    Ok::<_, BoxError>(Loaded::value(version).with_tags([user_of(&key)]))
                }
            },
        ))
        .build()
        .expect("build")
}

/// Reads `key` until it is `want` (failing after 5 s).
async fn until(cache: &TieredCache<String, u64>, key: &str, want: u64) {
    let start = Instant::now();
    loop {
        if cache.get(&key.to_owned()).await.unwrap() == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{key} never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn get(cache: &TieredCache<String, u64>, key: &str) -> Option<u64> {
    cache.get(&key.to_owned()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_drops_every_entry_carrying_it_everywhere_in_one_call() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let (a_store, a_bus) = (store.connect(), bus.connect());
    let a = instance(&db, a_store.clone(), a_bus.clone());
    let b = instance(&db, store.connect(), bus.connect());
    let keys = ["user:7:profile", "user:7:orders", "user:8:profile"];
    for key in keys {
        assert_eq!(get(&a, key).await, Some(1));
        assert_eq!(get(&b, key).await, Some(1));
    }
    let loads = db.loads.load(Ordering::SeqCst);
    let published = a_bus.published();
    db.set("user:7:profile", 2);
    db.set("user:7:orders", 2);
    a.invalidate_tag("user:7").await;
    assert_eq!(a_store.calls(StoreOp::StampTags), 1, "one store call");
    assert_eq!(a_bus.published() - published, 1, "one message");
    assert_eq!(get(&a, "user:7:profile").await, Some(2), "at once, here");
    until(&b, "user:7:orders", 2).await;
    assert_eq!(get(&b, "user:8:profile").await, Some(1));
    // A new instance reads the stamp from the store: the old tagged entries
    // in L2 are misses to it too.
    let c = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&c, "user:7:orders").await, Some(2));
    assert_eq!(get(&c, "user:8:profile").await, Some(1));
    assert_eq!(c.stats().l2.hits, 2, "user:8 and the reloaded user:7 entry");
    assert!(
        db.loads.load(Ordering::SeqCst) - loads <= 2 + 2,
        "user:7's keys only"
    );
}

/// A load on instance B that read the row before A's update and invalidation,
/// and ends after them, caches its value nowhere: its flight starts over and
/// loads the new row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_in_flight_across_invalidate_tag_is_not_cached_anywhere() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let db = Arc::new(Db {
        gate: Some(gate.clone()),
        ..Db::default()
    });
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a = instance(&db, store.connect(), bus.connect());
    let b = instance(&db, store.connect(), bus.connect());
    let reading = tokio::spawn({
        let b = b.clone();
        async move { get(&b, "user:7:profile").await }
    });
    while db.loads.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    db.set("user:7:profile", 2);
    a.invalidate_tag("user:7").await;
    gate.add_permits(1000);
    assert_eq!(reading.await.unwrap(), Some(2), "loaded again");
    assert_eq!(db.loads.load(Ordering::SeqCst), 2);
    assert!(b.stats().superseded >= 1);
    for cache in [&a, &b, &instance(&db, store.connect(), bus.connect())] {
        assert_eq!(get(cache, "user:7:profile").await, Some(2));
    }
}

/// A message lost while B's subscription was down: B forgets every stamp when
/// it resubscribes, reads them again from the store, and never serves the old
/// tagged entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_hold_across_a_bus_outage() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a = instance(&db, store.connect(), bus.connect());
    let b_bus = bus.connect();
    let b = instance(&db, store.connect(), b_bus.clone());
    assert_eq!(get(&b, "user:7:profile").await, Some(1));
    assert_eq!(get(&a, "user:7:profile").await, Some(1));
    b_bus.disconnect();
    db.set("user:7:profile", 2);
    a.invalidate_tag("user:7").await;
    b_bus.reconnect();
    until(&b, "user:7:profile", 2).await;
    assert!(b.stats().bus_resubscribes >= 1);
}

/// With the store unreachable, the stamp is owed: entries carrying the tag are
/// unreadable here at once (every read loads), and once the store is back the
/// stamp lands and reaches the other instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_stamp_keeps_the_tag_unreadable_until_it_lands() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a_store = store.connect();
    let a = instance(&db, a_store.clone(), bus.connect());
    let b = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&a, "user:7:profile").await, Some(1));
    assert_eq!(get(&b, "user:7:profile").await, Some(1));
    a_store.disconnect();
    db.set("user:7:profile", 2);
    a.invalidate_tag("user:7").await;
    assert_eq!(get(&a, "user:7:profile").await, Some(2), "not the old copy");
    assert_eq!(get(&b, "user:7:profile").await, Some(1), "not told yet");
    a_store.reconnect();
    until(&b, "user:7:profile", 2).await;
    assert_eq!(get(&a, "user:7:profile").await, Some(2));
}

/// Without an L2, tags are this instance's own: an in-flight load that began
/// before the invalidation is not cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_hold_against_loads_in_flight_without_an_l2() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (wait, loads) = (gate.clone(), Arc::new(AtomicU64::new(0)));
    let counter = loads.clone();
    let cache = TieredCache::<u64, u64>::builder("tags-l1")
        .loader(loader_with_context_fn(
            move |key: u64, _: LoadContext<u64>| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let wait = wait.clone();
                async move {
                    if n == 1 {
                        wait.acquire().await?.forget();
                    }
                    Ok::<_, BoxError>(Loaded::value(n).with_tags([format!("t{}", key % 2)]))
                }
            },
        ))
        .build()
        .unwrap();
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get(&1).await.unwrap() }
    });
    while loads.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cache.invalidate_tag("t1").await;
    gate.add_permits(1);
    assert_eq!(
        first.await.unwrap(),
        Some(2),
        "the first load was not cached"
    );
    assert_eq!(cache.get(&1).await.unwrap(), Some(2), "the second was");
    cache.invalidate_tags(&["t0", "t9"]).await;
    assert_eq!(cache.get(&1).await.unwrap(), Some(2), "another tag");
    cache.invalidate_tags(&["t1"]).await;
    assert_eq!(cache.get(&1).await.unwrap(), Some(3));
    assert_eq!(cache.stats().superseded, 1);
}

/// `get_many` loads through `load_many_with`: a context loader's tags reach
/// batch-loaded entries too. (Before, the batch went through `load_many`,
/// which dropped them: `invalidate_tag` never reached those entries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_loaded_in_a_batch_carry_their_tags() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a = instance(&db, store.connect(), bus.connect());
    let keys = ["user:7:profile".to_owned(), "user:7:orders".to_owned()];
    let found = a.get_many(&keys).await.unwrap();
    assert_eq!(found.len(), 2);
    db.set("user:7:profile", 2);
    db.set("user:7:orders", 2);
    a.invalidate_tag("user:7").await;
    for key in &keys {
        assert_eq!(get(&a, key).await, Some(2), "{key}");
    }
    let b = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&b, "user:7:orders").await, Some(2), "and in L2");
}

/// With an L2 but no bus, an instance reads the stamps of every tagged entry
/// it takes from L2: nothing else tells it of other instances' stamps.
/// (Before, a stamp it had learned once was trusted for good, and it served
/// the old entry from L2 until the entry's TTL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bus_stamps_are_read_with_every_tagged_l2_entry() {
    let db = Arc::new(Db::default());
    let store = MemoryStore::new();
    let unbussed = |store: MemoryStore| {
        let db = db.clone();
        TieredCache::<String, u64>::builder("tags-no-bus")
            .l2(store)
            .l1_max_entries(0)
            .loader(loader_with_context_fn(
                move |key: String, _: LoadContext<u64>| {
                    let version = *db.rows.lock().unwrap().get(&key).unwrap_or(&1);
                    async move { Ok::<_, BoxError>(Loaded::value(version).with_tags(["user:7"])) }
                },
            ))
            .build()
            .unwrap()
    };
    let (a, b) = (unbussed(store.connect()), unbussed(store.connect()));
    assert_eq!(get(&b, "user:7:profile").await, Some(1)); // B learns the tag's stamp
    assert_eq!(get(&b, "user:7:profile").await, Some(1)); // from L2
    db.set("user:7:profile", 2);
    a.invalidate_tag("user:7").await;
    assert_eq!(get(&b, "user:7:profile").await, Some(2));
}

/// A lost tag message that reaches the others as "everything" (unreadable
/// bytes of this crate, or publishes merged after a long outage): a receiver
/// forgets the stamps it knew with its L1, and reads them again. (Before, it
/// cleared L1 only, and served the old tagged entry from L2.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_from_the_bus_makes_the_stamps_be_read_again() {
    use tiered::Backplane;
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a_bus = bus.connect();
    let a = instance(&db, store.connect(), a_bus.clone());
    let b = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&b, "user:7:profile").await, Some(1));
    db.set("user:7:profile", 2);
    a_bus.lose_next_published(1);
    a.invalidate_tag("user:7").await;
    let key = a.l2_key("user:7:profile").unwrap();
    let channel = format!("tiered-bus:{}", &key[..key.len() - "user:7:profile".len()]);
    // A message of this crate from a newer version: read as "everything".
    let mut newer = b"TB\x09".to_vec();
    newer.extend_from_slice(&[0; 17]);
    bus.connect().publish(&channel, &newer).await.unwrap();
    until(&b, "user:7:profile", 2).await;
}

/// A store that cannot stamp tags (one that does not implement `stamp_tags`):
/// `invalidate_tag` clears the namespace instead, and nothing is left owed.
/// (Before, the stamp stayed owed for good, and the instance never read L2
/// again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_stamp_tags_clears_the_namespace_instead() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a = instance(&db, NoTags(store.connect()), bus.connect());
    let b = instance(&db, NoTags(store.connect()), bus.connect());
    assert_eq!(get(&a, "user:8:profile").await, Some(1));
    assert_eq!(get(&b, "user:7:profile").await, Some(1));
    db.set("user:7:profile", 2);
    a.invalidate_tag("user:7").await;
    assert_eq!(get(&a, "user:7:profile").await, Some(2));
    until(&b, "user:7:profile", 2).await;
    let reads = a.stats().l2.hits + a.stats().l2.misses;
    get(&a, "user:8:profile").await;
    get(&a, "user:9:profile").await;
    let stats = a.stats();
    assert_eq!(
        stats.l2.hits + stats.l2.misses,
        reads + 2,
        "L2 is read again"
    );
}

/// A stamp that keeps failing does not hold back the deletions owed with it:
/// they land first, and the other instance stops reading the deleted key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owed_deletions_land_while_a_stamp_keeps_failing() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a_store = store.connect();
    let a = instance(&db, a_store.clone(), bus.connect());
    let b = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&b, "user:1:x").await, Some(1));
    a_store.disconnect();
    a.invalidate_tag("user:7").await;
    db.set("user:1:x", 2);
    a.invalidate("user:1:x").await;
    a_store.fail_next(StoreOp::StampTags, 1_000_000);
    a_store.reconnect();
    until(&b, "user:1:x", 2).await;
    let fresh = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&fresh, "user:1:x").await, Some(2));
}

/// A store without `stamp_tags`.
#[derive(Debug)]
pub(crate) struct NoTags(pub(crate) MemoryStore);

impl tiered::RemoteStore for NoTags {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        self.0.get(key)
    }
    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, BoxError>> {
        self.0.get_many(keys)
    }
    fn get_or_reserve<'a>(
        &'a self,
        key: &'a str,
        reservation: &'a [u8],
        ttl: Duration,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        self.0.get_or_reserve(key, reservation, ttl)
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> futures_util::future::BoxFuture<'a, Result<(), BoxError>> {
        self.0.set(key, value, ttl)
    }
    fn replace<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: &'a [u8],
        ttl: Duration,
    ) -> futures_util::future::BoxFuture<'a, Result<bool, BoxError>> {
        self.0.replace(key, expected, value, ttl)
    }
    fn delete<'a>(
        &'a self,
        keys: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, Result<(), BoxError>> {
        self.0.delete(keys)
    }
    fn delete_matching<'a>(
        &'a self,
        pattern: &'a str,
        cursor: tiered::ScanCursor,
    ) -> futures_util::future::BoxFuture<'a, Result<tiered::ScanStep, BoxError>> {
        self.0.delete_matching(pattern, cursor)
    }
}

/// With L2 down past the time a stamp is trusted, a tagged entry cannot be
/// checked: each read loads once and answers uncached (before, each load was
/// refused at commit and retried, three loads per read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_that_cannot_be_checked_cost_one_load_per_read() {
    let clock = tiered::ManualClock::new();
    let db = Arc::new(Db::default());
    let store = MemoryStore::with_clock(clock.clone());
    let loads = db.clone();
    let cache = TieredCache::<String, u64>::builder("tags-unreadable")
        .l2(store.clone())
        .clock(clock.clone())
        .l1_ttl(Duration::from_secs(60))
        .l2_timeout(Duration::from_millis(100))
        .loader(loader_with_context_fn(
            move |key: String, _: LoadContext<u64>| {
                loads.loads.fetch_add(1, Ordering::SeqCst);
                let tag = user_of(&key);
                async move { Ok::<_, BoxError>(Loaded::value(1).with_tags([tag])) }
            },
        ))
        .build()
        .unwrap();
    assert_eq!(get(&cache, "user:7:profile").await, Some(1));
    store.disconnect();
    clock.advance(Duration::from_secs(61));
    for _ in 0..3 {
        let before = db.loads.load(Ordering::SeqCst);
        assert_eq!(get(&cache, "user:7:profile").await, Some(1));
        assert_eq!(
            db.loads.load(Ordering::SeqCst) - before,
            1,
            "one load per read"
        );
    }
}
