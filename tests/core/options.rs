//! `EntryOptions` through `with_options`, on the in-memory doubles: each option
//! changes what one call reads, loads and writes, and nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tiered::{BoxError, EntryOptions, Error, ManualClock, MemoryBus, MemoryStore, TieredCache};

/// The source: a value per key (the key's length until set), a switch that
/// makes loads fail, a load count, and a load time.
#[derive(Debug, Default)]
struct Db {
    rows: Mutex<HashMap<String, Option<u64>>>,
    failing: std::sync::atomic::AtomicBool,
    loads: AtomicU64,
    took: Mutex<Duration>,
}

impl Db {
    fn set(&self, key: &str, value: Option<u64>) {
        self.rows.lock().unwrap().insert(key.to_owned(), value);
    }

    fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }
}

struct Fleet {
    db: Arc<Db>,
    clock: ManualClock,
    store: MemoryStore,
    bus: MemoryBus,
}

impl Fleet {
    fn new() -> Self {
        let clock = ManualClock::new();
        Fleet {
            db: Arc::default(),
            store: MemoryStore::with_clock(clock.clone()),
            bus: MemoryBus::new(),
            clock,
        }
    }

    /// An instance: L1 TTL 60 s, L2 TTL 1 h, no jitter, no early refresh,
    /// no fail-safe.
    fn instance(&self) -> TieredCache<String, u64> {
        let db = self.db.clone();
        TieredCache::builder("options")
            .l2(self.store.connect())
            .bus(self.bus.connect())
            .clock(self.clock.clone())
            .l1_ttl(Duration::from_secs(60))
            .l2_ttl(Duration::from_secs(3600))
            .jitter(0.0)
            .no_early_refresh()
            .l2_timeout(Duration::from_millis(100))
            .loader_fn(move |key: String| {
                let db = db.clone();
                async move {
                    db.loads.fetch_add(1, Ordering::SeqCst);
                    let took = *db.took.lock().unwrap();
                    if !took.is_zero() {
                        tokio::time::sleep(took).await;
                    }
                    if db.failing.load(Ordering::SeqCst) {
                        return Err::<Option<u64>, BoxError>("the database is down".into());
                    }
                    let row = db.rows.lock().unwrap().get(&key).copied();
                    Ok(row.unwrap_or(Some(key.len() as u64)))
                }
            })
            .build()
            .expect("build")
    }
}

fn key(k: &str) -> String {
    k.to_owned()
}

/// The store keeps an entry for its TTL plus a grace of at most as much (for
/// fill reservations): whether `key`'s store TTL is that of an entry with
/// `ttl`.
fn stored_for(fleet: &Fleet, cache: &TieredCache<String, u64>, k: &str, ttl: Duration) -> bool {
    let l2_key = cache.l2_key(&key(k)).unwrap();
    matches!(fleet.store.ttl(&l2_key), Some(Some(t)) if t >= ttl && t <= ttl * 2)
}

#[tokio::test]
async fn a_call_ttl_is_exact_in_both_tiers() {
    let fleet = Fleet::new();
    let cache = fleet.instance();
    let short = cache.with_options(&EntryOptions::new().ttl(Duration::from_secs(5)));
    assert_eq!(short.get(&key("abc")).await.unwrap(), Some(3));
    assert!(stored_for(&fleet, &cache, "abc", Duration::from_secs(5)));
    fleet.clock.advance(Duration::from_secs(4));
    assert_eq!(cache.get(&key("abc")).await.unwrap(), Some(3));
    assert_eq!(cache.stats().l1.hits, 1, "fresh in L1 for 5 s");
    fleet.clock.advance(Duration::from_secs(2));
    assert_eq!(cache.get(&key("abc")).await.unwrap(), Some(3));
    assert_eq!(cache.stats().l1.hits, 1, "not after");
    // Without options: the cache's TTLs.
    assert_eq!(cache.get(&key("abcd")).await.unwrap(), Some(4));
    assert!(stored_for(
        &fleet,
        &cache,
        "abcd",
        Duration::from_secs(3600)
    ));
}

#[tokio::test]
async fn a_call_l1_ttl_and_negative_ttl_apply_to_their_tier_and_their_entries() {
    let fleet = Fleet::new();
    let cache = fleet.instance();
    let options = EntryOptions::new()
        .l1_ttl(Duration::from_secs(1))
        .negative_ttl(Duration::from_secs(7));
    let with = cache.with_options(&options);
    assert_eq!(with.get(&key("abc")).await.unwrap(), Some(3));
    fleet.clock.advance(Duration::from_secs(2));
    assert_eq!(cache.get(&key("abc")).await.unwrap(), Some(3));
    assert_eq!(
        cache.stats().l2.hits,
        1,
        "L1 let it go after 1 s; L2 kept it"
    );
    fleet.db.set("gone", None);
    assert_eq!(with.get(&key("gone")).await.unwrap(), None);
    assert!(stored_for(&fleet, &cache, "gone", Duration::from_secs(7)));
}

#[tokio::test]
async fn skip_l1_neither_reads_nor_fills_l1() {
    let fleet = Fleet::new();
    let cache = fleet.instance();
    let no_l1 = cache.with_options(&EntryOptions::new().skip_l1());
    for _ in 0..3 {
        assert_eq!(no_l1.get(&key("abc")).await.unwrap(), Some(3));
    }
    cache.run_pending_tasks().await;
    let stats = cache.stats();
    assert_eq!(stats.l1_entries, 0);
    assert_eq!((stats.l1.hits, stats.l2.hits, stats.loads), (0, 2, 1));
    // An entry already in L1 is not what such a call reads.
    cache.insert(key("k"), 1).await;
    fleet
        .store
        .insert_raw(&cache.l2_key(&key("k")).unwrap(), b"junk", None);
    assert_eq!(no_l1.get(&key("k")).await.unwrap(), Some(1), "loaded");
    assert_eq!(
        cache.get(&key("k")).await.unwrap(),
        Some(1),
        "L1 kept its own"
    );
}

#[tokio::test]
async fn skip_l2_neither_reads_nor_writes_l2() {
    let fleet = Fleet::new();
    let (a, b) = (fleet.instance(), fleet.instance());
    a.insert(key("k"), 42).await;
    let no_l2 = b.with_options(&EntryOptions::new().skip_l2());
    fleet.db.set("k", Some(7));
    assert_eq!(no_l2.get(&key("k")).await.unwrap(), Some(7), "not L2's 42");
    assert_eq!(no_l2.get(&key("other")).await.unwrap(), Some(5));
    assert!(
        fleet.store.raw(&b.l2_key(&key("other")).unwrap()).is_none(),
        "nothing written to L2"
    );
    assert_eq!(b.stats().l2.hits + b.stats().l2.misses, 0, "L2 not read");
}

#[tokio::test]
async fn skip_l2_reads_loads_and_still_fills_l2() {
    let fleet = Fleet::new();
    let (a, b) = (fleet.instance(), fleet.instance());
    assert_eq!(a.get(&key("k")).await.unwrap(), Some(1));
    fleet.db.set("k", Some(2));
    let reload = b.with_options(&EntryOptions::new().skip_l2_reads());
    assert_eq!(reload.get(&key("k")).await.unwrap(), Some(2));
    let c = fleet.instance();
    assert_eq!(
        c.get(&key("k")).await.unwrap(),
        Some(2),
        "the fill replaced L2's"
    );
    assert_eq!(fleet.db.loads(), 2);
}

#[tokio::test]
async fn an_insert_that_skips_a_tier_drops_the_key_there() {
    let fleet = Fleet::new();
    let (a, b) = (fleet.instance(), fleet.instance());
    a.insert(key("k"), 1).await;
    a.with_options(&EntryOptions::new().skip_l2_writes())
        .insert(key("k"), 2)
        .await;
    assert_eq!(a.get(&key("k")).await.unwrap(), Some(2), "in L1");
    assert!(
        fleet.store.raw(&a.l2_key(&key("k")).unwrap()).is_none(),
        "L2's older entry is gone"
    );
    assert_eq!(b.get(&key("k")).await.unwrap(), Some(1), "b loads (the db)");
    a.with_options(&EntryOptions::new().skip_l1_writes())
        .insert(key("k"), 3)
        .await;
    assert_eq!(
        a.get(&key("k")).await.unwrap(),
        Some(3),
        "from L2: L1 dropped its 2"
    );
    let zero = EntryOptions::new().ttl(Duration::ZERO);
    a.with_options(&zero).insert(key("k"), 4).await;
    fleet.db.set("k", Some(5));
    assert_eq!(
        a.get(&key("k")).await.unwrap(),
        Some(5),
        "a zero TTL invalidates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_and_a_hard_timeout_per_call() {
    let fleet = Fleet::new();
    let cache = fleet.instance();
    // L1 only (L2 freshness is the store's wall time, not this test's clock).
    let ten = EntryOptions::new().skip_l2().ttl(Duration::from_secs(10));
    let safe = cache.with_options(&ten.clone().fail_safe(Duration::from_secs(3600)));
    let unsafe_ = cache.with_options(&ten);
    assert_eq!(safe.get(&key("abc")).await.unwrap(), Some(3));
    assert_eq!(unsafe_.get(&key("abcd")).await.unwrap(), Some(4));
    fleet.clock.advance(Duration::from_secs(11));
    fleet.db.failing.store(true, Ordering::SeqCst);
    assert_eq!(
        safe.get(&key("abc")).await.unwrap(),
        Some(3),
        "stale, served"
    );
    assert_eq!(cache.stats().fail_safe, 1);
    // The same without fail-safe (the cache has none): the error.
    let failed = unsafe_.get(&key("abcd")).await;
    assert!(matches!(failed, Err(Error::Load { .. })), "{failed:?}");
    fleet.db.failing.store(false, Ordering::SeqCst);
    *fleet.db.took.lock().unwrap() = Duration::from_millis(300);
    let hasty = cache.with_options(&EntryOptions::new().hard_timeout(Duration::from_millis(20)));
    match hasty.get(&key("slow")).await {
        Err(Error::LoadTimedOut { after, .. }) => assert_eq!(after, Duration::from_millis(20)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_per_call() {
    let fleet = Fleet::new();
    let cache = fleet.instance();
    *fleet.db.took.lock().unwrap() = Duration::from_millis(5);
    let eager = cache.with_options(&EntryOptions::new().early_refresh(1e12));
    assert_eq!(eager.get(&key("abc")).await.unwrap(), Some(3));
    assert_eq!(eager.get(&key("abc")).await.unwrap(), Some(3));
    let refreshed = cache.stats().refreshes;
    assert_eq!(refreshed, 1, "its window opened at once");
    assert_eq!(cache.get(&key("abcd")).await.unwrap(), Some(4));
    assert_eq!(cache.get(&key("abcd")).await.unwrap(), Some(4));
    assert_eq!(cache.stats().refreshes, refreshed, "the cache's: none");
}

#[tokio::test]
async fn a_call_tags_what_it_loads_and_inserts() {
    let fleet = Fleet::new();
    let (a, b) = (fleet.instance(), fleet.instance());
    let user7 = EntryOptions::new().tags(["user:7"]);
    assert_eq!(
        a.with_options(&user7).get(&key("profile:7")).await.unwrap(),
        Some(9)
    );
    a.with_options(&user7).insert(key("orders:7"), 70).await;
    assert_eq!(b.get(&key("orders:7")).await.unwrap(), Some(70));
    assert_eq!(a.get(&key("other")).await.unwrap(), Some(5));
    fleet.db.set("profile:7", Some(1));
    fleet.db.set("orders:7", Some(2));
    b.invalidate_tag("user:7").await;
    assert_eq!(b.get(&key("profile:7")).await.unwrap(), Some(1));
    assert_eq!(b.get(&key("orders:7")).await.unwrap(), Some(2));
    let c = fleet.instance();
    assert_eq!(c.get(&key("orders:7")).await.unwrap(), Some(2));
    assert_eq!(
        c.get(&key("other")).await.unwrap(),
        Some(5),
        "untagged: kept"
    );
}

#[tokio::test]
async fn batches_take_the_options_too() {
    let fleet = Fleet::new();
    let cache = fleet.instance();
    let short = cache.with_options(&EntryOptions::new().ttl(Duration::from_secs(5)));
    let keys = [key("a"), key("bb")];
    let found = short.get_many(&keys).await.unwrap();
    assert_eq!(found.len(), 2);
    let found = short
        .get_many_with(&[key("ccc")], |missing: Vec<String>| async move {
            Ok::<_, BoxError>(missing.into_iter().map(|k| (k, 30)).collect())
        })
        .await
        .unwrap();
    assert_eq!(found[&key("ccc")], 30);
    short.insert_many([(key("dddd"), 40)]).await;
    for k in ["a", "bb", "ccc", "dddd"] {
        assert!(stored_for(&fleet, &cache, k, Duration::from_secs(5)), "{k}");
    }
}

/// A cache without L2 (so that staleness follows the test's clock), with
/// `settings` over a loader of the fleet's database.
fn local(
    fleet: &Fleet,
    settings: impl FnOnce(
        tiered::TieredCacheBuilder<String, u64>,
    ) -> tiered::TieredCacheBuilder<String, u64>,
) -> TieredCache<String, u64> {
    let db = fleet.db.clone();
    let builder = TieredCache::builder("options-local")
        .clock(fleet.clock.clone())
        .l1_ttl(Duration::from_secs(60))
        .jitter(0.0)
        .loader_fn(move |key: String| {
            let db = db.clone();
            async move {
                db.loads.fetch_add(1, Ordering::SeqCst);
                if db.failing.load(Ordering::SeqCst) {
                    return Err::<Option<u64>, BoxError>("the database is down".into());
                }
                let row = db.rows.lock().unwrap().get(&key).copied();
                Ok(row.unwrap_or(Some(key.len() as u64)))
            }
        });
    settings(builder).build().unwrap()
}

/// `no_fail_safe()` on a cache with fail-safe: a failed load is the error,
/// not the stale copy. (Before, the copy was served.)
#[tokio::test]
async fn no_fail_safe_makes_a_failed_load_the_callers_error() {
    let fleet = Fleet::new();
    let cache = local(&fleet, |b| b.fail_safe(Duration::from_secs(3600)));
    assert_eq!(cache.get(&key("abc")).await.unwrap(), Some(3));
    fleet.clock.advance(Duration::from_secs(61));
    fleet.db.failing.store(true, Ordering::SeqCst);
    let strict = cache.with_options(&EntryOptions::new().no_fail_safe());
    let read = strict.get(&key("abc")).await;
    assert!(matches!(read, Err(Error::Load { .. })), "{read:?}");
    assert_eq!(
        cache.get(&key("abc")).await.unwrap(),
        Some(3),
        "plain: fail-safe"
    );
}

/// A zero TTL caches nothing, not even for stale-while-revalidate. (Before,
/// the entry was kept stale, and the next read served it.)
#[tokio::test]
async fn a_zero_ttl_load_caches_nothing() {
    let fleet = Fleet::new();
    let cache = local(&fleet, |b| {
        b.stale_while_revalidate(Duration::from_secs(3600))
    });
    let once = cache.with_options(&EntryOptions::new().ttl(Duration::ZERO));
    assert_eq!(once.get(&key("abc")).await.unwrap(), Some(3));
    fleet.db.set("abc", Some(4));
    assert_eq!(cache.get(&key("abc")).await.unwrap(), Some(4));
    assert_eq!(fleet.db.loads(), 2);
}

/// A load that skips L1 writes drops the key's older L1 copy (as an insert
/// that skips L1 does). (Before, the old copy kept answering.)
#[tokio::test]
async fn a_load_that_skips_l1_writes_drops_an_older_l1_copy() {
    let fleet = Fleet::new();
    let cache = fleet.instance();
    assert_eq!(cache.get(&key("abc")).await.unwrap(), Some(3));
    fleet.db.set("abc", Some(4));
    let reload = cache.with_options(&EntryOptions::new().skip_l1().skip_l2_reads());
    assert_eq!(reload.get(&key("abc")).await.unwrap(), Some(4));
    assert_eq!(cache.get(&key("abc")).await.unwrap(), Some(4));
}

/// Fleet single flight: a call that skips L2's answer does not wait on
/// another instance's lease (the holder's fill is an answer from L2; before,
/// it took the old entry the holder had not replaced yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_skips_l2_reads_does_not_wait_on_a_lease() {
    let fleet = Fleet::new();
    let leased = |fleet: &Fleet| {
        let db = fleet.db.clone();
        TieredCache::<String, u64>::builder("options-leased")
            .l2(fleet.store.connect())
            .bus(fleet.bus.connect())
            .fleet_single_flight(Duration::from_secs(5))
            .loader_fn(move |key: String| {
                let db = db.clone();
                async move {
                    let row = db.rows.lock().unwrap().get(&key).copied();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, BoxError>(row.unwrap_or(Some(1)))
                }
            })
            .build()
            .unwrap()
    };
    let (a, b, c) = (leased(&fleet), leased(&fleet), leased(&fleet));
    assert_eq!(c.get(&key("k")).await.unwrap(), Some(1));
    fleet.db.set("k", Some(2));
    let reload = EntryOptions::new().skip_l1_reads().skip_l2_reads();
    let holder = tokio::spawn({
        let a = a.with_options(&reload);
        async move { a.get(&key("k")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        b.with_options(&reload).get(&key("k")).await.unwrap(),
        Some(2)
    );
    assert_eq!(holder.await.unwrap().unwrap(), Some(2));
}
