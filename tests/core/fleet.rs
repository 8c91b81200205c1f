//! The doubles under real caches: several instances of one cache in one process,
//! on one `MemoryStore` and one `MemoryBus`, each through handles of its own, with
//! the faults a fleet meets (a partition, a hung call, a lost subscription,
//! foreign bytes in the store).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tiered::{BoxError, MemoryBus, MemoryStore, StoreOp, TieredCache};

const L2_TIMEOUT: Duration = Duration::from_millis(100);

/// The service's database: a version per key (1 until set), and a load count.
#[derive(Debug, Default)]
struct Db {
    rows: Mutex<HashMap<String, u64>>,
    loads: AtomicU64,
}

impl Db {
    fn set(&self, key: &str, version: u64) {
        self.rows.lock().unwrap().insert(key.to_owned(), version);
    }

    fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }
}

/// An instance of cache "fleet" on its own store and bus handles; long TTLs, so
/// that only an invalidation makes it drop a value.
fn instance(db: &Arc<Db>, store: MemoryStore, bus: MemoryBus) -> TieredCache<String, u64> {
    let db = db.clone();
    TieredCache::builder("fleet")
        .l2(store)
        .bus(bus)
        .l1_ttl(Duration::from_secs(3600))
        .l2_ttl(Duration::from_secs(3600))
        .l2_timeout(L2_TIMEOUT)
        .loader_fn(move |key: String| {
            db.loads.fetch_add(1, Ordering::SeqCst);
            let version = *db.rows.lock().unwrap().get(&key).unwrap_or(&1);
            async move { Ok::<_, BoxError>(Some(version)) }
        })
        .build()
        .expect("build")
}

/// Reads `key` until it is `want` (failing after 5 s).
async fn until(cache: &TieredCache<String, u64>, key: &str, want: u64) {
    let start = Instant::now();
    loop {
        let got = cache.get(&key.to_owned()).await.unwrap();
        if got == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{key}: still {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A database, a store and a bus for a fleet (each instance connects its own
/// handles to them).
fn fleet() -> (Arc<Db>, MemoryStore, MemoryBus) {
    (
        Arc::new(Db::default()),
        MemoryStore::new(),
        MemoryBus::new(),
    )
}

fn key(key: &str) -> String {
    key.to_owned()
}

#[tokio::test]
async fn one_instance_fills_the_store_and_invalidations_reach_the_others() {
    let (db, store, bus) = fleet();
    let a = instance(&db, store.connect(), bus.connect());
    let b = instance(&db, store.connect(), bus.connect());
    assert_eq!(a.get(&key("k")).await.unwrap(), Some(1));
    assert_eq!(b.get(&key("k")).await.unwrap(), Some(1));
    assert_eq!(db.loads(), 1, "b read a's fill");
    assert_eq!(b.stats().l2.hits, 1);

    db.set("k", 2);
    a.invalidate(&key("k")).await;
    until(&b, "k", 2).await;
    assert_eq!(b.stats().invalidations_received, 1);
}

#[tokio::test]
async fn a_lost_subscription_clears_l1_when_it_comes_back() {
    let (db, store, bus) = fleet();
    let b_bus = bus.connect();
    let a = instance(&db, store.connect(), bus.connect());
    let b = instance(&db, store.connect(), b_bus.clone());
    assert_eq!(b.get(&key("k")).await.unwrap(), Some(1));

    b_bus.disconnect();
    db.set("k", 2);
    a.invalidate(&key("k")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        b.get(&key("k")).await.unwrap(),
        Some(1),
        "the message was lost: b serves its L1"
    );

    b_bus.reconnect();
    until(&b, "k", 2).await;
    assert_eq!(b.stats().bus_resubscribes, 1);
    assert_eq!(b.stats().invalidations_received, 0);
}

#[tokio::test]
async fn a_partitioned_instance_loads_for_itself() {
    let (db, store, bus) = fleet();
    let a_store = store.connect();
    let a = instance(&db, a_store.clone(), bus.connect());
    let b = instance(&db, store.connect(), bus.connect());

    a_store.disconnect();
    assert_eq!(a.get(&key("k")).await.unwrap(), Some(1));
    assert!(a.stats().l2_errors >= 1, "{:?}", a.stats());
    assert!(store.keys().is_empty(), "a could not fill");
    assert_eq!(b.get(&key("k")).await.unwrap(), Some(1));
    assert_eq!(db.loads(), 2, "b found nothing in the store");
    assert_eq!(b.stats().l2_errors, 0);
    assert_eq!(store.keys().len(), 1, "b's fill");
}

#[tokio::test]
async fn a_hung_store_call_costs_one_timeout() {
    let (db, store, bus) = fleet();
    let a_store = store.connect();
    let a = instance(&db, a_store.clone(), bus.connect());
    // A read that will load reads and reserves in one call.
    a_store.hang_next(StoreOp::Reserve, 1);
    let start = Instant::now();
    assert_eq!(a.get(&key("k")).await.unwrap(), Some(1));
    assert!(start.elapsed() >= L2_TIMEOUT, "{:?}", start.elapsed());
    assert_eq!(a.stats().l2_errors, 1);
    assert_eq!(a_store.calls(StoreOp::Reserve), 1);
    assert_eq!(a_store.calls(StoreOp::Get), 0);
    assert_eq!(db.loads(), 1);
}

#[tokio::test]
async fn foreign_bytes_in_the_store_are_deleted_and_reloaded() {
    let (db, store, bus) = fleet();
    let a = instance(&db, store.connect(), bus.connect());
    assert_eq!(a.get(&key("k")).await.unwrap(), Some(1));
    let keys = store.keys();
    assert_eq!(keys.len(), 1);
    store.insert_raw(&keys[0], b"not an entry", None);

    let b = instance(&db, store.connect(), bus.connect());
    assert_eq!(b.get(&key("k")).await.unwrap(), Some(1));
    assert_eq!(b.stats().l2_corrupt, 1);
    assert_eq!(db.loads(), 2);
    assert_ne!(store.raw(&keys[0]).as_deref(), Some(&b"not an entry"[..]));
}

/// Waits (up to 5 s) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(5), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A writer and a reader instance that both hold "k" at version 1 (in L1, and
/// in L2), each on store and bus handles of its own; the database then moves
/// "k" to 2. The writer's handles are returned for faults.
struct Pair {
    store: MemoryStore,
    writer_store: MemoryStore,
    writer_bus: MemoryBus,
    writer: TieredCache<String, u64>,
    reader: TieredCache<String, u64>,
}

async fn pair() -> Pair {
    let (db, store, bus) = fleet();
    let (writer_store, writer_bus) = (store.connect(), bus.connect());
    let writer = instance(&db, writer_store.clone(), writer_bus.clone());
    let reader = instance(&db, store.connect(), bus.connect());
    assert_eq!(writer.get(&key("k")).await.unwrap(), Some(1));
    assert_eq!(reader.get(&key("k")).await.unwrap(), Some(1));
    db.set("k", 2);
    Pair {
        store,
        writer_store,
        writer_bus,
        writer,
        reader,
    }
}

/// An invalidation whose L2 deletion cannot land at first is published once it
/// lands, not before: the other instances would otherwise drop their copy, read
/// the old entry again from L2 meanwhile, and keep it for their L1 TTL.
#[tokio::test]
async fn an_owed_deletion_is_published_when_it_lands() {
    let p = pair().await;
    p.writer_store.fail_next(StoreOp::Delete, 3);
    p.writer.invalidate(&key("k")).await;
    // The deletion is owed: L2 still holds 1, and so may the reader.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(p.reader.get(&key("k")).await.unwrap(), Some(1));
    // The background replay lands it, then publishes it.
    eventually("the owed deletion lands", || p.store.keys().is_empty()).await;
    until(&p.reader, "k", 2).await;
}

/// An invalidation cancelled while its L2 deletion is in flight owes it, and a
/// background replay lands it (and publishes it) with no further call.
#[tokio::test]
async fn a_cancelled_invalidation_is_replayed_in_the_background() {
    let p = pair().await;
    p.writer_store.hang_next(StoreOp::Delete, 1);
    let cancelled = tokio::time::timeout(L2_TIMEOUT / 4, p.writer.invalidate(&key("k"))).await;
    assert!(
        cancelled.is_err(),
        "the call was given up while the delete hung"
    );
    eventually("the owed deletion lands", || p.store.keys().is_empty()).await;
    until(&p.reader, "k", 2).await;
}

/// A publish that failed is sent again in the background: an instance that
/// makes no further change still reaches the others.
#[tokio::test]
async fn a_failed_publish_is_sent_again_by_a_quiet_instance() {
    let p = pair().await;
    p.writer_bus.fail_next_publishes(1);
    p.writer.invalidate(&key("k")).await;
    assert_eq!(p.writer.stats().bus_publish_errors, 1);
    until(&p.reader, "k", 2).await;
}

/// A key type whose `from_key_str` panics on some input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Fussy(String);

impl tiered::CacheKey for Fussy {
    fn write_key(&self, out: &mut String) {
        out.push_str(&self.0);
    }

    fn from_key_str(s: &str) -> Option<Self> {
        assert!(!s.starts_with("bad"), "cannot parse {s}");
        Some(Fussy(s.to_owned()))
    }
}

/// A panic while applying another instance's message (here in a user's
/// `from_key_str`) clears L1 and is counted; the listener goes on applying the
/// next messages.
#[tokio::test]
async fn a_panic_applying_a_message_clears_l1_and_the_listener_goes_on() {
    let rows: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let instance = |store: MemoryStore, bus: MemoryBus| {
        let rows = Arc::clone(&rows);
        TieredCache::<Fussy, u64>::builder("fussy")
            .l2(store)
            .bus(bus)
            .l1_ttl(Duration::from_secs(3600))
            .loader_fn(move |key: Fussy| {
                let row = *rows.lock().unwrap().get(&key.0).unwrap_or(&1);
                async move { Ok::<_, BoxError>(Some(row)) }
            })
            .build()
            .unwrap()
    };
    let (a, b) = (
        instance(store.connect(), bus.connect()),
        instance(store.connect(), bus.connect()),
    );
    let (bad, good) = (Fussy("bad".into()), Fussy("good".into()));
    assert_eq!(a.get(&bad).await.unwrap(), Some(1));
    assert_eq!(a.get(&good).await.unwrap(), Some(1));
    rows.lock().unwrap().insert("bad".into(), 2);
    b.invalidate(&bad).await;
    eventually("a's listener fails on the message", || {
        a.stats().bus_apply_failures == 1
    })
    .await;
    assert_eq!(a.get(&bad).await.unwrap(), Some(2), "L1 was cleared");
    rows.lock().unwrap().insert("good".into(), 3);
    b.invalidate(&good).await;
    eventually("a's listener still applies messages", || {
        a.stats().invalidations_received == 2
    })
    .await;
    assert_eq!(a.get(&good).await.unwrap(), Some(3));
}

/// A fresh instance's first burst: 100 callers of a cold key whose load fails
/// after 20 ms run it once (they waited for the bus's first subscription, whose
/// L1 clear would otherwise overtake the flight and make them load again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_burst_after_start_up_loads_once() {
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let cache = TieredCache::<String, u64>::builder("burst")
        .l2(store)
        .bus(bus)
        .l2_timeout(L2_TIMEOUT)
        .build()
        .unwrap();
    let loads = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, loads) = (cache.clone(), loads.clone());
            tokio::spawn(async move {
                let load = async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err::<Option<u64>, _>("down")
                };
                cache.get_with(&key("cold"), load).await
            })
        })
        .collect();
    for caller in callers {
        assert!(caller.await.unwrap().is_err());
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

/// A `get_with` whose flight an invalidation supersedes is not reloaded with
/// the cache's configured loader: the caller gets its own load's value.
#[tokio::test]
async fn get_with_is_never_answered_by_the_configured_loader() {
    let cache = TieredCache::<String, u64>::builder("own")
        .loader_fn(|_key: String| async { Ok::<_, BoxError>(Some(100)) })
        .build()
        .unwrap();
    let own = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, BoxError>(Some(1))
    };
    let k = key("k");
    let invalidate = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        cache.invalidate(&k).await;
    };
    let (got, ()) = tokio::join!(cache.get_with(&k, own), invalidate);
    assert_eq!(got.unwrap(), Some(1));
    assert_eq!(cache.stats().superseded, 1);
}

/// A read that cannot load (a `get` with no loader) and one that can
/// (`get_with`) of the same cold key: the second runs its load, rather than
/// taking the first one's "nothing found".
#[tokio::test]
async fn a_caller_with_a_load_never_takes_the_answer_of_one_without() {
    let store = MemoryStore::new();
    let cache = TieredCache::<String, u64>::builder("mixed")
        .l2(store.clone())
        .l2_timeout(L2_TIMEOUT)
        .build()
        .unwrap();
    for round in 0..3 {
        // The plain read's L2 call is still out when the second caller comes.
        store.hang_next(StoreOp::Get, 1);
        let k = key(&format!("cold-{round}"));
        let (plain, with) = tokio::join!(
            cache.get(&k),
            cache.get_with(&k, async { Ok::<_, BoxError>(Some(5)) })
        );
        assert_eq!(with.unwrap(), Some(5), "round {round}");
        assert!(matches!(plain.unwrap(), None | Some(5)));
    }
}

/// A write cancelled after its L2 change landed (here while its publish hangs)
/// still reaches the other instances: its message was kept as the change
/// landed, and the background sender sends it.
#[tokio::test]
async fn a_write_cancelled_after_it_landed_is_still_published() {
    let p = pair().await;
    p.writer_bus.hang_next_publishes(1);
    let cancelled = tokio::time::timeout(L2_TIMEOUT / 4, p.writer.invalidate(&key("k"))).await;
    assert!(
        cancelled.is_err(),
        "the call was given up while its publish hung"
    );
    assert!(p.store.keys().is_empty(), "the deletion had landed");
    until(&p.reader, "k", 2).await;
}

/// A pattern invalidated while a namespace clear is owed: once the replay is
/// done, the store holds nothing either removed.
#[tokio::test]
async fn a_pattern_owed_behind_a_clear_is_not_lost() {
    let (db, store, bus) = fleet();
    let writer_store = store.connect();
    let writer = instance(&db, writer_store.clone(), bus.connect());
    assert_eq!(writer.get(&key("user:1")).await.unwrap(), Some(1));
    writer_store.fail_next(StoreOp::Scan, 2);
    writer.invalidate_all_and_reclaim().await; // owed: a clear from the start
    assert_eq!(writer.get(&key("user:2")).await.unwrap(), Some(1)); // L2 skipped
    writer.invalidate_pattern("user:*").await; // owed too
    eventually("the owed walks land", || store.keys().is_empty()).await;
}

/// Fleet single flight: a waiter that takes the lease after the holder filled
/// and let go (between the waiter's last look and its next ask) takes the
/// holder's value instead of loading again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_waiter_that_takes_the_lease_late_does_not_load_again() {
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let loads = Arc::new(AtomicU64::new(0));
    let instance = |store: MemoryStore| {
        let loads = Arc::clone(&loads);
        TieredCache::<String, u64>::builder("leased")
            .l2(store)
            .bus(bus.connect())
            .l2_timeout(L2_TIMEOUT)
            .fleet_single_flight(Duration::from_secs(5))
            .loader_fn(move |_key: String| {
                let loads = Arc::clone(&loads);
                async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok::<_, BoxError>(Some(7))
                }
            })
            .build()
            .unwrap()
    };
    let (a_store, b_store) = (store.connect(), store.connect());
    let (a, b) = (instance(a_store), instance(b_store.clone()));
    let holder = tokio::spawn({
        let a = a.clone();
        async move { a.get(&key("k")).await }
    });
    eventually("a holds the lease", || a.stats().loads == 1).await;
    // b's first look at L2 while it waits hangs past the holder's fill and
    // release: its next ask for the lease succeeds.
    b_store.hang_next(StoreOp::Get, 1);
    assert_eq!(b.get(&key("k")).await.unwrap(), Some(7));
    assert_eq!(holder.await.unwrap().unwrap(), Some(7));
    assert_eq!(b.stats().lease_waits, 1);
    assert_eq!(loads.load(Ordering::SeqCst), 1, "the query ran once");
}

/// An insert whose write to L2 failed owes the deletion of the old entry; a
/// later insert of the same key that lands makes that deletion moot: the
/// replay does not delete the newer value (for values only `insert` knows, that
/// would lose them).
#[tokio::test]
async fn an_owed_deletion_never_removes_a_newer_insert() {
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let instance = |store: MemoryStore| {
        TieredCache::<String, u64>::builder("inserts")
            .l2(store)
            .bus(bus.connect())
            .l2_timeout(L2_TIMEOUT)
            .build()
            .unwrap()
    };
    let writer_store = store.connect();
    let (writer, reader) = (instance(writer_store.clone()), instance(store.connect()));
    writer_store.fail_next(StoreOp::Set, 1);
    writer.insert(key("k"), 1).await; // L2 failed: deleting k is owed
    writer.insert(key("k"), 2).await; // lands
    tokio::time::sleep(Duration::from_millis(500)).await; // the replay's time
    assert_eq!(reader.get(&key("k")).await.unwrap(), Some(2));
}

/// An L1-only fleet under a stream of invalidations of other keys: loads that
/// were in flight while 600 of them arrived (about 2.3 per fence shard, far from
/// the 16 a shard remembers) still commit, so no load is retried or left
/// uncached. Before the fence told keys apart within a shard, 94 of the 100 were
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_of_other_keys_do_not_refuse_loads() {
    let bus = MemoryBus::new();
    let loads = Arc::new(AtomicU64::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let a = {
        let loads = loads.clone();
        TieredCache::<String, u64>::builder("l1-fleet")
            .bus(bus.connect())
            .l1_ttl(Duration::from_secs(3600))
            .loader_fn(move |key: String| {
                let (loads, mut gate) = (loads.clone(), gate.clone());
                async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    if key.starts_with("load:") {
                        let _ = gate.wait_for(|open| *open).await;
                    }
                    Ok::<_, BoxError>(Some(1))
                }
            })
            .build()
            .unwrap()
    };
    let b = TieredCache::<String, u64>::builder("l1-fleet")
        .bus(bus.connect())
        .build()
        .unwrap();
    a.get(&key("sentinel")).await.unwrap();
    let readers: Vec<_> = (0..100)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.get(&format!("load:{i}")).await })
        })
        .collect();
    eventually("every load has started", || {
        loads.load(Ordering::SeqCst) == 101
    })
    .await;
    for i in 0..600 {
        b.invalidate(&format!("other:{i}")).await;
    }
    b.invalidate(&key("sentinel")).await;
    eventually("a applied all of b's invalidations", || {
        a.stats().invalidations_received == 601
    })
    .await;
    open.send(true).unwrap();
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), Some(1));
    }
    assert_eq!(
        a.stats().superseded,
        0,
        "loads refused by other keys' changes"
    );
    assert_eq!(loads.load(Ordering::SeqCst), 101, "loads retried");
    for i in 0..100 {
        a.get(&format!("load:{i}")).await.unwrap();
    }
    assert_eq!(loads.load(Ordering::SeqCst), 101, "loads left uncached");
}

/// `invalidate_many` of 1,000 keys: one store call, one bus message, and every
/// other instance drops all of them; if the store call fails, the replay that
/// lands them sends one message too; past 1,000 keys, a call and a message per
/// batch of 1,000.
#[tokio::test]
async fn invalidate_many_is_one_call_and_one_message_even_when_replayed() {
    let (db, store, bus) = fleet();
    let (a_store, a_bus) = (store.connect(), bus.connect());
    let a = instance(&db, a_store.clone(), a_bus.clone());
    let b = instance(&db, store.connect(), bus.connect());
    let keys: Vec<String> = (0..1000).map(|i| format!("bulk:{i}")).collect();
    for key in &keys {
        assert_eq!(b.get(key).await.unwrap(), Some(1));
        db.set(key, 2);
    }
    let (deletes, published) = (a_store.calls(StoreOp::Delete), a_bus.published());
    a.invalidate_many(&keys).await;
    assert_eq!(a_store.calls(StoreOp::Delete), deletes + 1);
    assert_eq!(a_bus.published(), published + 1);
    assert!(store.keys().iter().all(|k| !k.contains("bulk:")));
    for key in &keys {
        until(&b, key, 2).await;
        db.set(key, 3);
    }

    // The store call fails: the keys are owed, and land in one replay message.
    a_store.fail_next(StoreOp::Delete, 1);
    let published = a_bus.published();
    a.invalidate_many(&keys).await;
    eventually("the owed keys landed and were announced", || {
        a_bus.published() == published + 1
    })
    .await;
    for key in &keys {
        until(&b, key, 3).await;
    }
    assert_eq!(
        a_bus.published(),
        published + 1,
        "one message for the replay"
    );
}

/// `insert_many` of 1,000 entries: every tier, one bus message, and the other
/// instance reads the new values; if a write fails, the batch's old entries are
/// deleted later, with one message when that lands.
#[tokio::test]
async fn insert_many_writes_every_tier_with_one_message() {
    let (db, store, bus) = fleet();
    let (a_store, a_bus) = (store.connect(), bus.connect());
    let a = instance(&db, a_store.clone(), a_bus.clone());
    let b = instance(&db, store.connect(), bus.connect());
    let keys: Vec<String> = (0..1000).map(|i| format!("bulk:{i}")).collect();
    for key in &keys {
        assert_eq!(b.get(key).await.unwrap(), Some(1));
    }
    let published = a_bus.published();
    a.insert_many(keys.iter().map(|k| (k.clone(), 5))).await;
    assert_eq!(a_bus.published(), published + 1);
    let loads = db.loads();
    for key in &keys {
        until(&b, key, 5).await;
        assert_eq!(a.get(key).await.unwrap(), Some(5));
    }
    assert_eq!(db.loads(), loads, "b read the new values from L2");

    // One write fails: the batch is owed as deletions, announced once landed.
    for key in &keys {
        db.set(key, 9);
    }
    a_store.fail_next(StoreOp::Set, 1);
    let published = a_bus.published();
    a.insert_many(keys.iter().map(|k| (k.clone(), 7))).await;
    eventually("the owed deletions landed and were announced", || {
        a_bus.published() == published + 1
    })
    .await;
    for key in &keys {
        until(&b, key, 9).await;
    }
    assert_eq!(a_bus.published(), published + 1);
}

/// Two instances of a cache of strings whose L2 takes values up to 1 KiB, with
/// a loader that reads `rows`.
fn string_pair(
    rows: &Arc<Mutex<HashMap<String, String>>>,
) -> (
    MemoryStore,
    TieredCache<String, String>,
    TieredCache<String, String>,
) {
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let make = |store: MemoryStore, bus: MemoryBus| {
        let rows = rows.clone();
        TieredCache::builder("strings")
            .l2(store)
            .bus(bus)
            .l1_ttl(Duration::from_secs(3600))
            .l2_timeout(L2_TIMEOUT)
            .l2_max_value_bytes(1024)
            .loader_fn(move |key: String| {
                let row = rows.lock().unwrap().get(&key).cloned();
                async move { Ok::<_, BoxError>(row) }
            })
            .build()
            .unwrap()
    };
    let a_store = store.connect();
    let a = make(a_store.clone(), bus.connect());
    let b = make(store.connect(), bus.connect());
    (a_store, a, b)
}

/// An `insert_many` with a value too large for L2 whose old entry's deletion
/// fails: the whole batch is owed, and once it lands the other instance drops
/// every key of it. (Before, the batch's other keys were marked landed, no
/// message was sent for them, and the other instance kept their old values.)
#[tokio::test]
async fn insert_many_with_a_value_too_large_for_l2_is_announced_whole() {
    let rows = Arc::new(Mutex::new(HashMap::from([
        ("small".to_owned(), "old".to_owned()),
        ("large".to_owned(), "old".to_owned()),
    ])));
    let (a_store, a, b) = string_pair(&rows);
    for key in ["small", "large"] {
        assert_eq!(
            b.get(&key.to_owned()).await.unwrap().as_deref(),
            Some("old")
        );
    }
    let large = "x".repeat(4096);
    rows.lock().unwrap().insert("small".into(), "new".into());
    rows.lock().unwrap().insert("large".into(), large.clone());
    a_store.fail_next(StoreOp::Delete, 1);
    a.insert_many([
        ("small".to_owned(), "new".to_owned()),
        ("large".to_owned(), large),
    ])
    .await;
    let start = Instant::now();
    while b.get("small").await.unwrap().as_deref() != Some("new") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the other instance still serves the old value of a key of the batch"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A key given twice in one `insert_many` takes its last value, here and in L2.
#[tokio::test]
async fn insert_many_gives_a_repeated_key_its_last_value() {
    let rows = Arc::new(Mutex::new(HashMap::new()));
    let (_, a, b) = string_pair(&rows);
    a.insert_many([
        ("k".to_owned(), "first".to_owned()),
        ("k".to_owned(), "last".to_owned()),
    ])
    .await;
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some("last"));
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some("last"));
}
