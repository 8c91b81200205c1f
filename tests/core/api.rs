//! The public API's shapes: lookups by a borrowed key (`&str` for a `String`
//! key), `try_get_with` giving the caller's own error type back, `peek`
//! telling an absence from a key no tier holds, and `build()`'s own error
//! type.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tiered::{
    BoxError, ConfigError, ManualClock, MemoryBus, MemoryStore, Peeked, StoreOp, TieredCache,
};

use crate::support::at_once;

fn loaded(loads: &Arc<AtomicUsize>) -> TieredCache<String, String> {
    let loads = Arc::clone(loads);
    TieredCache::builder("api")
        .loader_fn(move |key: String| {
            loads.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>((key != "nobody").then(|| format!("{key}!"))) }
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn string_keys_are_looked_up_and_invalidated_by_str() {
    let loads = Arc::new(AtomicUsize::new(0));
    let cache = loaded(&loads);
    let name: &str = "alice";
    assert_eq!(cache.get(name).await.unwrap().as_deref(), Some("alice!"));
    assert_eq!(cache.get(name).await.unwrap().as_deref(), Some("alice!"));
    // The owned form still works, and finds the same entry.
    let owned = name.to_owned();
    assert_eq!(cache.get(&owned).await.unwrap().as_deref(), Some("alice!"));
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "one entry, whatever the key's form"
    );
    let with = cache
        .get_with("alice", async {
            Ok::<_, BoxError>(Some("other".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(with.as_deref(), Some("alice!"), "a hit, by &str");
    assert_eq!(
        cache.l2_key("alice"),
        None,
        "no L2: no L2 key, whatever the key's form"
    );
    cache.invalidate("alice").await;
    assert_eq!(cache.peek("alice").await, Peeked::Missing);
    assert_eq!(cache.get("alice").await.unwrap().as_deref(), Some("alice!"));
    assert_eq!(loads.load(Ordering::SeqCst), 2, "invalidated by &str");
    let options = cache.with_options(&tiered::EntryOptions::new().skip_l1());
    assert_eq!(options.get("bob").await.unwrap().as_deref(), Some("bob!"));
}

#[tokio::test]
async fn l2_keys_are_the_same_for_every_form_of_a_key() {
    let cache = TieredCache::<String, u64>::builder("forms")
        .l2(MemoryStore::new())
        .build()
        .unwrap();
    let borrowed = cache.l2_key("user:7").unwrap();
    assert_eq!(Some(borrowed.clone()), cache.l2_key(&"user:7".to_owned()));
    assert!(borrowed.ends_with(":user:7"), "{borrowed}");
}

#[derive(Debug, PartialEq)]
enum DbError {
    Unreachable,
    Timeout(u32),
}

#[tokio::test]
async fn try_get_with_gives_back_the_callers_own_error_uncached() {
    let cache = TieredCache::<String, u64>::builder("typed")
        .build()
        .unwrap();
    let failed: Result<_, Arc<DbError>> = cache
        .try_get_with("k", async { Err(DbError::Timeout(3)) })
        .await;
    assert_eq!(failed, Err(Arc::new(DbError::Timeout(3))));
    // Not cached: the next call loads again.
    let ok = cache
        .try_get_with("k", async { Ok::<_, DbError>(Some(7)) })
        .await;
    assert_eq!(ok, Ok(Some(7)));
    let hit = cache
        .try_get_with("k", async { Err::<Option<u64>, _>(DbError::Unreachable) })
        .await;
    assert_eq!(hit, Ok(Some(7)), "a hit never runs the load");
    // An absence is an answer, and is remembered.
    let absent = cache
        .try_get_with("none", async { Ok::<_, DbError>(None) })
        .await;
    assert_eq!(absent, Ok(None));
    assert_eq!(cache.peek("none").await, Peeked::Absent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_try_get_with_calls_share_one_load_and_its_error() {
    let cache = TieredCache::<String, u64>::builder("shared")
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let results = at_once(20, || {
        let (cache, runs) = (cache.clone(), Arc::clone(&runs));
        async move {
            cache
                .try_get_with("k", async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err::<Option<u64>, _>(DbError::Unreachable)
                })
                .await
        }
    })
    .await;
    for result in &results {
        assert_eq!(result, &Err(Arc::new(DbError::Unreachable)));
    }
    let runs = runs.load(Ordering::SeqCst);
    assert!(
        runs < 20,
        "the callers shared loads: {runs} runs for 20 calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_get_with_runs_its_own_load_when_the_flight_it_joined_failed_otherwise() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let cache = {
        let gate = Arc::clone(&gate);
        TieredCache::<String, u64>::builder("foreign")
            .loader_fn(move |_key: String| {
                let gate = Arc::clone(&gate);
                async move {
                    gate.acquire().await?.forget();
                    Err::<Option<u64>, BoxError>("the configured loader failed".into())
                }
            })
            .build()
            .unwrap()
    };
    // The configured loader's flight is in the air when `try_get_with` joins it.
    let plain = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get("k").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let typed = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .try_get_with("k", async { Ok::<_, DbError>(Some(5)) })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.add_permits(1);
    assert!(plain.await.unwrap().is_err(), "the loader's own error");
    assert_eq!(
        typed.await.unwrap(),
        Ok(Some(5)),
        "an error of another type is not this caller's: it loads for itself"
    );
}

#[tokio::test]
async fn peek_never_loads_and_tells_absent_from_missing() {
    let loads = Arc::new(AtomicUsize::new(0));
    let cache = loaded(&loads);
    assert_eq!(cache.peek("alice").await, Peeked::Missing);
    assert_eq!(cache.peek("nobody").await, Peeked::Missing);
    assert_eq!(loads.load(Ordering::SeqCst), 0, "peek never loads");
    assert_eq!(cache.get("alice").await.unwrap().as_deref(), Some("alice!"));
    assert_eq!(cache.get("nobody").await.unwrap(), None);
    assert_eq!(
        cache.peek("alice").await,
        Peeked::Value("alice!".to_owned())
    );
    assert_eq!(cache.peek("nobody").await, Peeked::Absent);
    assert!(Peeked::<u64>::Absent.is_cached());
    assert_eq!(cache.peek("alice").await.value().as_deref(), Some("alice!"));
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn peek_reads_l2_and_keeps_what_it_finds_in_l1() {
    let clock = ManualClock::new();
    let (store, bus) = (MemoryStore::with_clock(clock.clone()), MemoryBus::new());
    let loads = Arc::new(AtomicUsize::new(0));
    let make = |store: MemoryStore, bus: MemoryBus| {
        let loads = Arc::clone(&loads);
        TieredCache::<String, u64>::builder("peek")
            .l2(store)
            .bus(bus)
            .clock(clock.clone())
            .l1_ttl(Duration::from_secs(10))
            .l2_ttl(Duration::from_secs(100))
            .stale_while_revalidate(Duration::from_secs(1000))
            .loader_fn(move |_key: String| {
                loads.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, BoxError>(Some(1)) }
            })
            .build()
            .unwrap()
    };
    let writer = make(store.connect(), bus.connect());
    let reads = store.connect();
    let reader = make(reads.clone(), bus.connect());
    writer.insert("k".into(), 42).await;
    assert_eq!(reader.peek("k").await, Peeked::Value(42), "from L2");
    assert_eq!(reads.calls(StoreOp::Get), 1, "read from L2");
    assert_eq!(reader.peek("k").await, Peeked::Value(42));
    assert_eq!(
        reads.calls(StoreOp::Get),
        1,
        "kept in L1: no second L2 read"
    );
    assert_eq!(loads.load(Ordering::SeqCst), 0, "peek never loads");
}

#[tokio::test]
async fn peek_does_not_serve_a_stale_entry_nor_start_its_refresh() {
    let clock = ManualClock::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let cache = {
        let loads = Arc::clone(&loads);
        TieredCache::<String, u64>::builder("stale")
            .clock(clock.clone())
            .l1_ttl(Duration::from_secs(10))
            .stale_while_revalidate(Duration::from_secs(1000))
            .loader_fn(move |_key: String| {
                loads.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, BoxError>(Some(1)) }
            })
            .build()
            .unwrap()
    };
    assert_eq!(cache.get("k").await.unwrap(), Some(1));
    assert_eq!(cache.peek("k").await, Peeked::Value(1));
    // Stale, within stale-while-revalidate: a `get` would serve it and
    // refresh it; `peek` does neither.
    clock.advance(Duration::from_secs(20));
    assert_eq!(cache.peek("k").await, Peeked::Missing);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1, "no refresh started");
    assert_eq!(
        cache.get("k").await.unwrap(),
        Some(1),
        "served stale by get"
    );
    crate::support::eventually("get refreshes it", || async {
        loads.load(Ordering::SeqCst) == 2
    })
    .await;
}

#[tokio::test]
async fn peek_does_not_answer_with_an_invalidated_entry() {
    let store = MemoryStore::new();
    let bus = MemoryBus::new();
    let a = TieredCache::<String, u64>::builder("peek-tags")
        .l2(store.connect())
        .bus(bus.connect())
        .build()
        .unwrap();
    let b = TieredCache::<String, u64>::builder("peek-tags")
        .l2(store.connect())
        .bus(bus.connect())
        .build()
        .unwrap();
    a.insert_with_tags("k".into(), 1, &["t"]).await;
    assert_eq!(b.peek("k").await, Peeked::Value(1));
    a.invalidate_tag("t").await;
    assert_eq!(a.peek("k").await, Peeked::Missing);
    crate::support::eventually("b drops the tagged entry", || async {
        b.peek("k").await == Peeked::Missing
    })
    .await;
}

#[test]
fn build_fails_with_a_config_error_that_says_what_is_wrong() {
    let built = TieredCache::<u64, u64>::builder("bad name with spaces").build();
    let error: ConfigError = built.unwrap_err();
    assert!(!error.message().is_empty());
    assert!(error
        .to_string()
        .starts_with("invalid cache configuration: "));
    let zero = TieredCache::<u64, u64>::builder("zero")
        .l1_ttl(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(zero.message().contains("l1_ttl"), "{zero}");
}

/// Remembers why each L2 entry was rejected.
#[derive(Clone, Default)]
struct Rejections(Arc<std::sync::Mutex<Vec<(String, String)>>>);

impl tiered::Observer for Rejections {
    fn l2_corrupt(&self, key: &str, error: &tiered::DecodeError) {
        let kind = match error {
            tiered::DecodeError::BadMagic => "bad magic".to_owned(),
            tiered::DecodeError::Fingerprint => "another schema".to_owned(),
            other => other.to_string(),
        };
        self.0.lock().unwrap().push((key.to_owned(), kind));
    }
}

#[tokio::test]
async fn an_observer_learns_why_an_l2_entry_was_rejected() {
    let store = MemoryStore::new();
    let writer = TieredCache::<String, u64>::builder("rejected")
        .l2(store.connect())
        .build()
        .unwrap();
    writer.insert("k".into(), 1).await;
    writer.insert("j".into(), 2).await;
    let l2_key = writer.l2_key("k").unwrap();
    store.insert_raw(&l2_key, b"not an entry", None);
    let rejections = Rejections::default();
    // The same cache name with another value type: `j`'s entry is another
    // schema's.
    let reader = TieredCache::<String, String>::builder("rejected")
        .l2(store.connect())
        .observer(rejections.clone())
        .build()
        .unwrap();
    let typed = TieredCache::<String, u64>::builder("rejected")
        .l2(store.connect())
        .observer(rejections.clone())
        .build()
        .unwrap();
    assert_eq!(typed.get("k").await.unwrap(), None, "foreign bytes: a miss");
    assert_eq!(reader.get("j").await.unwrap(), None, "another type: a miss");
    let seen = rejections.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (l2_key, "bad magic".to_owned()),
            (reader.l2_key("j").unwrap(), "another schema".to_owned())
        ]
    );
    assert_eq!(typed.stats().l2_corrupt + reader.stats().l2_corrupt, 2);
}
