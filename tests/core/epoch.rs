//! `invalidate_all` as the namespace epoch, on the in-memory doubles: one
//! stamp and one message however many entries the cache holds; the entries
//! stay in L2 but are never served again, to this instance, to the others, to
//! an instance started later; against a load in flight, a lost message, an
//! owed stamp, and entries written without a birth.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tiered::{BoxError, ManualClock, MemoryBus, MemoryStore, StoreOp, TieredCache};

use crate::support::{eventually, Db};
use crate::tags::NoTags;

/// An instance of cache "epoch" (untagged entries), with its own clock.
fn instance_at(
    db: &Arc<Db>,
    store: impl tiered::RemoteStore,
    bus: MemoryBus,
    clock: &ManualClock,
) -> TieredCache<String, u64> {
    let db = db.clone();
    TieredCache::builder("epoch")
        .l2(store)
        .bus(bus)
        .clock(clock.clone())
        .l1_ttl(Duration::from_secs(60))
        .l2_ttl(Duration::from_secs(3600))
        .l2_timeout(Duration::from_millis(100))
        .loader_fn(move |key: String| {
            db.loads.fetch_add(1, Ordering::SeqCst);
            // The query reads the row first, then takes a while.
            let version = *db.rows.lock().unwrap().get(&key).unwrap_or(&1);
            let gate = db.gate.clone();
            async move {
                if let Some(gate) = gate {
                    gate.acquire().await?.forget();
                }
                Ok::<_, BoxError>(Some(version))
            }
        })
        .build()
        .expect("build")
}

fn instance(
    db: &Arc<Db>,
    store: impl tiered::RemoteStore,
    bus: MemoryBus,
) -> TieredCache<String, u64> {
    instance_at(db, store, bus, &ManualClock::new())
}

/// An instance of cache "epoch" with no loader: it answers only what the
/// tiers hold.
fn reader(store: &MemoryStore, bus: &MemoryBus, clock: &ManualClock) -> TieredCache<String, u64> {
    TieredCache::builder("epoch")
        .l2(store.connect())
        .bus(bus.connect())
        .clock(clock.clone())
        .build()
        .unwrap()
}

async fn get(cache: &TieredCache<String, u64>, key: &str) -> Option<u64> {
    cache.get(&key.to_owned()).await.unwrap()
}

/// Reads `key` until it is `want` (failing after 10 s).
async fn until(cache: &TieredCache<String, u64>, key: &str, want: u64) {
    eventually(&format!("{key} becomes {want}"), || async {
        get(cache, key).await == Some(want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_all_is_one_stamp_and_one_message_whatever_the_cache_holds() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let (a_store, a_bus) = (store.connect(), bus.connect());
    let a = instance(&db, a_store.clone(), a_bus.clone());
    let b = instance(&db, store.connect(), bus.connect());
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    for key in &keys {
        assert_eq!(get(&a, key).await, Some(1));
        assert_eq!(get(&b, key).await, Some(1), "from L2");
    }
    assert_eq!(db.loads(), 300);
    let in_l2 = store.keys().len();
    let published = a_bus.published();
    for key in &keys {
        db.set(key, 2);
    }
    a.invalidate_all().await;
    assert_eq!(a_store.calls(StoreOp::StampTags), 1, "one store call");
    assert_eq!(a_store.calls(StoreOp::Scan), 0, "no walk");
    assert_eq!(a_bus.published() - published, 1, "one message");
    assert!(
        store.keys().len() >= in_l2,
        "the entries stay in L2 until their TTL"
    );
    for key in &keys {
        assert_eq!(get(&a, key).await, Some(2), "at once, here");
    }
    for key in &keys {
        until(&b, key, 2).await;
    }
    // An instance started after the call reads the epoch before it trusts
    // an entry in L2.
    let c = instance(&db, store.connect(), bus.connect());
    for key in &keys {
        assert_eq!(get(&c, key).await, Some(2));
    }
    assert_eq!(db.loads(), 600, "each key loaded once more, by a");
}

/// A load that read the row before another instance's update and
/// `invalidate_all`, and ends after them: what it writes to L2 is born before
/// the epoch, so no instance ever serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_in_flight_across_invalidate_all_is_served_nowhere_after_it() {
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
        async move { get(&b, "k").await }
    });
    while db.loads() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    db.set("k", 2);
    a.invalidate_all().await;
    gate.add_permits(1000);
    assert!(reading.await.unwrap().is_some());
    let c = instance(&db, store.connect(), bus.connect());
    for cache in [&a, &b, &c] {
        assert_eq!(get(cache, "k").await, Some(2));
    }
}

/// B's copy of the message is lost (its subscription stays up): B trusts the
/// epoch it read for its L1 TTL, then reads it again, and no longer serves
/// what L2 holds from before the call, nor what its L1 held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_message_is_made_up_for_by_reading_the_epoch_again() {
    let clock = ManualClock::new();
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::with_clock(clock.clone()), MemoryBus::new());
    let a = instance_at(&db, store.connect(), bus.connect(), &clock);
    let b_bus = bus.connect();
    let b = instance_at(&db, store.connect(), b_bus.clone(), &clock);
    assert_eq!(get(&a, "in-l1").await, Some(1));
    assert_eq!(get(&a, "in-l2").await, Some(1));
    assert_eq!(
        get(&b, "in-l1").await,
        Some(1),
        "from L2: b reads the epoch"
    );
    db.set("in-l1", 2);
    db.set("in-l2", 2);
    b_bus.lose_next_received(1);
    a.invalidate_all().await;
    clock.advance(Duration::from_secs(61));
    assert_eq!(get(&b, "in-l2").await, Some(2), "the epoch is read again");
    assert_eq!(get(&b, "in-l1").await, Some(2));
}

/// With the stamp owed (the store refuses it), the epoch is pending here:
/// nothing this instance reads from L2 is served, every read loads; the
/// other instances hear of it when the replay lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_epoch_keeps_l2_unreadable_here_until_it_lands() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a_store = store.connect();
    let a = instance(&db, a_store.clone(), bus.connect());
    let b = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&b, "k").await, Some(1));
    db.set("k", 2);
    a_store.fail_next(StoreOp::StampTags, 1_000_000);
    a.invalidate_all().await;
    assert_eq!(get(&a, "k").await, Some(2), "not the old entry in L2");
    assert_eq!(get(&b, "k").await, Some(1), "not told yet");
    a_store.clear_faults();
    until(&b, "k", 2).await;
}

/// An entry without a birth (written by a store that cannot stamp, as a
/// version without the epoch writes them) is read as born at 0: readable
/// until the first epoch, unreadable after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_without_a_birth_are_older_than_any_epoch() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let old = instance(&db, NoTags(store.connect()), bus.connect());
    assert_eq!(get(&old, "k").await, Some(1));
    db.set("k", 2);
    let a = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&a, "k").await, Some(1), "no epoch yet: served");
    assert_eq!(db.loads(), 1);
    let b = instance(&db, store.connect(), bus.connect());
    b.invalidate_all().await;
    let c = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&c, "k").await, Some(2));
}

/// The walk, on request: every key of the namespace is deleted from L2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_all_and_reclaim_deletes_the_entries_from_l2() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a = instance(&db, store.connect(), bus.connect());
    for i in 0..50 {
        assert_eq!(get(&a, &format!("k{i}")).await, Some(1));
    }
    let entry = a.l2_key("k0").unwrap();
    assert!(store.keys().contains(&entry));
    a.invalidate_all().await;
    assert!(store.keys().contains(&entry), "the epoch leaves it");
    a.invalidate_all_and_reclaim().await;
    let prefix = &entry[..entry.len() - 2];
    assert!(
        !store.keys().iter().any(|k| k.starts_with(prefix)),
        "{:?}",
        store.keys()
    );
    db.set("k0", 2);
    assert_eq!(get(&a, "k0").await, Some(2));
}

/// An instance started after an `invalidate_all` that only writes (an
/// importer: it never reads an entry from L2, where it would learn the
/// epoch) reads the tag clock before its first write: what it writes is
/// born after the epoch, and readable everywhere. (Before, its entries were
/// born at 0, and unreadable to every instance for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_writes_entries_born_after_the_epoch() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a = instance(&db, store.connect(), bus.connect());
    a.insert("old".to_owned(), 1).await;
    a.invalidate_all().await;
    let importer = instance(&db, store.connect(), bus.connect());
    importer.insert("new".to_owned(), 7).await;
    importer.insert_many([("many".to_owned(), 8)]).await;
    let reader = reader(&store, &bus, &ManualClock::new());
    assert_eq!(get(&reader, "new").await, Some(7));
    assert_eq!(get(&reader, "many").await, Some(8));
    assert_eq!(get(&reader, "old").await, None, "the epoch holds");
}

/// B lost the message, its database is down, and B has a stale copy kept for
/// fail-safe: once B reads the epoch again (its trust ran out), the copy is
/// not served, not even as a fail-safe fallback. (Before, the L2 entry was
/// dropped but the copy from before the call was served, and put back in L1
/// for the throttle, again and again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_does_not_serve_a_copy_from_before_the_epoch() {
    let clock = ManualClock::new();
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::with_clock(clock.clone()), MemoryBus::new());
    let a = instance_at(&db, store.connect(), bus.connect(), &clock);
    let b_bus = bus.connect();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let b = {
        let failing = failing.clone();
        TieredCache::<String, u64>::builder("epoch")
            .l2(store.connect())
            .bus(b_bus.clone())
            .clock(clock.clone())
            .l1_ttl(Duration::from_secs(60))
            .l2_ttl(Duration::from_secs(3600))
            .fail_safe(Duration::from_secs(3600))
            .loader_fn(move |_key: String| {
                let failing = failing.load(Ordering::SeqCst);
                async move {
                    if failing {
                        return Err::<Option<u64>, BoxError>("down".into());
                    }
                    Ok(Some(1))
                }
            })
            .build()
            .unwrap()
    };
    assert_eq!(get(&b, "k").await, Some(1));
    b_bus.lose_next_received(1);
    a.invalidate_all().await;
    failing.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(61));
    let read = b.get("k").await;
    assert!(read.is_err(), "the old copy was served: {read:?}");
    assert_eq!(b.stats().fail_safe, 0);
}

/// A caller that gives up while the stamp is on its way leaves it owed: the
/// replay lands it, publishes it, and this instance reads L2 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_invalidate_all_still_lands_and_is_published() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a_store = store.connect();
    let a = instance(&db, a_store.clone(), bus.connect());
    let b = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&b, "k").await, Some(1));
    db.set("k", 2);
    a_store.hang_next(StoreOp::StampTags, 1);
    let cancelled = tokio::time::timeout(Duration::from_millis(20), a.invalidate_all()).await;
    assert!(cancelled.is_err(), "given up while the stamp hung");
    until(&b, "k", 2).await;
    assert_eq!(get(&a, "k").await, Some(2));
    let c = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&c, "k").await, Some(2));
    let hits = a.stats().l2.hits;
    assert_eq!(get(&a, "other").await, Some(1));
    assert_eq!(get(&c, "other").await, Some(1));
    assert_eq!(
        c.stats().l2.hits,
        2,
        "c reads what a wrote: the epoch is not pending"
    );
    assert_eq!(a.stats().l2.hits, hits);
}

/// An instance of cache "epoch" on its own bus handle, with `settings` over
/// a loader that reads `db` after `delay`.
fn tuned(
    db: &Arc<Db>,
    store: &MemoryStore,
    bus: &MemoryBus,
    clock: &ManualClock,
    delay: Duration,
    settings: impl FnOnce(
        tiered::TieredCacheBuilder<String, u64>,
    ) -> tiered::TieredCacheBuilder<String, u64>,
) -> TieredCache<String, u64> {
    let db = db.clone();
    let builder = TieredCache::builder("epoch")
        .l2(store.connect())
        .bus(bus.clone())
        .clock(clock.clone())
        .l1_ttl(Duration::from_secs(60))
        .l2_ttl(Duration::from_secs(3600))
        .loader_fn(move |key: String| {
            let version = *db.rows.lock().unwrap().get(&key).unwrap_or(&1);
            async move {
                tokio::time::sleep(delay).await;
                Ok::<_, BoxError>(Some(version))
            }
        });
    settings(builder).build().unwrap()
}

/// B lost the message and holds a stale copy; its load is slow. At the soft
/// timeout, the copy is served only if it still holds: here the flight has
/// read the epoch meanwhile, so B waits for the load. (Before, the copy taken
/// when the read began was served.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_timeout_does_not_serve_a_copy_from_before_the_epoch() {
    let clock = ManualClock::new();
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::with_clock(clock.clone()), MemoryBus::new());
    let a = instance_at(&db, store.connect(), bus.connect(), &clock);
    let b_bus = bus.connect();
    let b = tuned(
        &db,
        &store,
        &b_bus,
        &clock,
        Duration::from_millis(200),
        |b| {
            b.fail_safe(Duration::from_secs(3600))
                .soft_timeout(Duration::from_millis(50))
        },
    );
    assert_eq!(get(&b, "k").await, Some(1));
    b_bus.lose_next_received(1);
    db.set("k", 2);
    a.invalidate_all().await;
    clock.advance(Duration::from_secs(61));
    assert_eq!(get(&b, "k").await, Some(2));
}

/// B lost the message, then learned the epoch by reading L2 for another key:
/// its stale copy of `k` is not served by stale-while-revalidate. (Before, it
/// was, and again on every read while refreshes failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_does_not_serve_a_copy_from_before_a_known_epoch() {
    let clock = ManualClock::new();
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::with_clock(clock.clone()), MemoryBus::new());
    let a = instance_at(&db, store.connect(), bus.connect(), &clock);
    let b_bus = bus.connect();
    let b = tuned(&db, &store, &b_bus, &clock, Duration::ZERO, |b| {
        b.stale_while_revalidate(Duration::from_secs(3600))
    });
    assert_eq!(get(&b, "k").await, Some(1));
    b_bus.lose_next_received(1);
    db.set("k", 2);
    a.invalidate_all().await;
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        get(&b, "other").await,
        Some(1),
        "a flight: b reads the epoch"
    );
    assert_eq!(get(&b, "k").await, Some(2));
}

/// A caller that gives up while the stamp hangs: this instance's L1 was
/// emptied already (the stamp is pending: L2 is not served here meanwhile),
/// so it reads the new value. (Before, L1 kept the old one until the owed
/// stamp landed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_invalidate_all_empties_l1_at_once() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a_store = store.connect();
    let a = instance(&db, a_store.clone(), bus.connect());
    assert_eq!(get(&a, "k").await, Some(1));
    db.set("k", 2);
    a_store.hang_next(StoreOp::StampTags, 1_000_000);
    let cancelled = tokio::time::timeout(Duration::from_millis(20), a.invalidate_all()).await;
    assert!(cancelled.is_err());
    assert_eq!(get(&a, "k").await, Some(2));
}

/// A fresh instance's insert given up while it reads the tag clock (before
/// any store write): the key's old entry is deleted later all the same, as for
/// any cancelled insert. (Before, nothing was owed: the old entry stayed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_given_up_while_the_clock_is_read_still_deletes_the_old_entry() {
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::new(), MemoryBus::new());
    let a = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&a, "k").await, Some(1));
    let w_store = store.connect();
    let w = instance(&db, w_store.clone(), bus.connect());
    db.set("k", 2);
    w_store.hang_next(StoreOp::GetMany, 1);
    let insert = tokio::time::timeout(Duration::from_millis(20), w.insert("k".to_owned(), 2));
    assert!(insert.await.is_err(), "given up while the clock read hung");
    until(&a, "k", 2).await;
    let c = instance(&db, store.connect(), bus.connect());
    assert_eq!(get(&c, "k").await, Some(2));
}

/// A fresh importer whose first read of the tag clock fails tries again a
/// second later, not a whole L1 TTL later: its later writes are born after
/// the epoch. (Before, they were born at 0 for the whole L1 TTL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_of_the_clock_is_tried_again_soon() {
    let clock = ManualClock::new();
    let db = Arc::new(Db::default());
    let (store, bus) = (MemoryStore::with_clock(clock.clone()), MemoryBus::new());
    let a = instance_at(&db, store.connect(), bus.connect(), &clock);
    a.invalidate_all().await;
    let (w_store, w_bus) = (store.connect(), bus.connect());
    let w = instance_at(&db, w_store.clone(), w_bus.clone(), &clock);
    // Subscribed first (its first subscription makes the book forget, which
    // would hide what this test is about).
    w.invalidate("unrelated").await;
    eventually("w subscribed", || async { w_bus.subscriptions() == 1 }).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    w_store.fail_next(StoreOp::GetMany, 1);
    w.insert("first".to_owned(), 7).await;
    clock.advance(Duration::from_secs(2));
    w.insert("second".to_owned(), 8).await;
    let reader = reader(&store, &bus, &clock);
    assert_eq!(get(&reader, "second").await, Some(8));
}
