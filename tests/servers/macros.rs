//! `#[cached_tier]` at run time: one body run per key at a time, errors passed
//! through uncached, borrowed arguments, methods, and L2 shared between instances.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use crate::support::{at_once, Redis};
use tiered::{cached_tier, TieredCache};

fn cache<V: tiered::CacheValue>(name: &str) -> TieredCache<String, V> {
    TieredCache::builder(name).build().expect("valid settings")
}

#[derive(Debug, Clone, PartialEq)]
struct NotFound(u64);

static SLOW: LazyLock<TieredCache<String, String>> = LazyLock::new(|| cache("slow"));
static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached_tier(cache = SLOW, key = "slow:{id}")]
async fn slow(id: u64) -> Result<String, NotFound> {
    SLOW_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    if id == 0 {
        return Err(NotFound(id));
    }
    Ok(format!("item {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_run_the_body_once_and_share_errors_uncached() {
    let run = |id: u64| at_once(100, move || slow(id));
    for result in run(1).await {
        assert_eq!(result.unwrap(), "item 1");
    }
    assert_eq!(SLOW_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(slow(1).await.unwrap(), "item 1");
    assert_eq!(SLOW_RUNS.load(Ordering::SeqCst), 1, "cached");

    for result in run(0).await {
        assert_eq!(
            result.unwrap_err(),
            NotFound(0),
            "every waiter gets the function's own error"
        );
    }
    assert_eq!(
        SLOW_RUNS.load(Ordering::SeqCst),
        2,
        "one run for the hundred callers"
    );
    assert_eq!(slow(0).await.unwrap_err(), NotFound(0));
    assert_eq!(
        SLOW_RUNS.load(Ordering::SeqCst),
        3,
        "the error was not cached"
    );
}

static BORROWED: LazyLock<TieredCache<String, String>> = LazyLock::new(|| cache("borrowed"));
static BORROWED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct Config {
    region: String,
}

// Arguments named like things the generated code needs (`key`, `cache`) are fine.
#[cached_tier(cache = BORROWED, skip(config))]
async fn greet(key: &str, cache: Option<&str>, config: &Config) -> String {
    BORROWED_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{key}/{}/{}", cache.unwrap_or("-"), config.region)
}

#[tokio::test]
async fn borrowed_arguments_and_the_default_key() {
    let config = Config {
        region: "eu".into(),
    };
    let name = String::from("ann");
    assert_eq!(greet(&name, Some("x"), &config).await, "ann/x/eu");
    assert_eq!(greet(&name, Some("x"), &config).await, "ann/x/eu");
    assert_eq!(BORROWED_RUNS.load(Ordering::SeqCst), 1);
    // `Option<&str>` is part of the key: `None` is another key.
    assert_eq!(greet(&name, None, &config).await, "ann/-/eu");
    assert_eq!(BORROWED_RUNS.load(Ordering::SeqCst), 2);
    // Arguments are escaped in the default key: ("a:b", None) is not ("a", "b").
    greet("a:b", None, &config).await;
    greet("a", Some("b"), &config).await;
    assert_eq!(BORROWED_RUNS.load(Ordering::SeqCst), 4);
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Profile {
    id: u64,
    bio: String,
}

struct Profiles {
    cache: TieredCache<String, Profile>,
    runs: AtomicUsize,
}

impl Profiles {
    #[cached_tier(cache = self.cache, key = "profile:{id}", skip(self), ttl = "10m")]
    async fn profile(&self, id: u64) -> Option<Profile> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        (id != 404).then(|| Profile {
            id,
            bio: format!("bio {id}"),
        })
    }

    #[cached_tier(cache = self.cache, key = "checked:{id}", skip(self), negative = true, unless = |p| p.bio.is_empty())]
    async fn checked(&self, id: u64) -> Option<Profile> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        match id {
            404 => None,
            0 => Some(Profile {
                id,
                bio: String::new(),
            }),
            _ => Some(Profile {
                id,
                bio: "ok".into(),
            }),
        }
    }
}

fn profiles(cache: TieredCache<String, Profile>) -> Profiles {
    Profiles {
        cache,
        runs: AtomicUsize::new(0),
    }
}

#[tokio::test]
async fn methods_with_self_skipped_option_returns_negative_and_unless() {
    let p = profiles(cache("profiles"));
    assert_eq!(p.profile(1).await.unwrap().bio, "bio 1");
    assert_eq!(p.profile(1).await.unwrap().bio, "bio 1");
    assert_eq!(p.runs.load(Ordering::SeqCst), 1);
    // Without `negative`, `None` is not cached.
    assert_eq!(p.profile(404).await, None);
    assert_eq!(p.profile(404).await, None);
    assert_eq!(p.runs.load(Ordering::SeqCst), 3);
    assert!(
        p.cache.get("profile:1").await.unwrap().is_some(),
        "the key is the format string"
    );

    let q = profiles(cache("checked"));
    assert_eq!(q.checked(404).await, None);
    assert_eq!(q.checked(404).await, None);
    assert_eq!(
        q.runs.load(Ordering::SeqCst),
        1,
        "negative = true caches None"
    );
    q.checked(0).await;
    q.checked(0).await;
    assert_eq!(
        q.runs.load(Ordering::SeqCst),
        3,
        "unless: empty bios are not cached"
    );
    q.checked(5).await;
    q.checked(5).await;
    assert_eq!(q.runs.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_second_instance_finds_the_value_in_l2_without_running_the_body() {
    let redis = Redis::start_own(&[]);
    let instance = || {
        profiles(
            TieredCache::builder("macro-l2")
                .l2_redis(redis.url())
                .build()
                .unwrap(),
        )
    };
    let first = instance();
    let second = instance();
    assert_eq!(first.profile(9).await.unwrap().bio, "bio 9");
    assert_eq!(second.profile(9).await.unwrap().bio, "bio 9");
    assert_eq!(first.runs.load(Ordering::SeqCst), 1);
    assert_eq!(second.runs.load(Ordering::SeqCst), 0, "found in L2");
    assert_eq!(second.cache.stats().l2.hits, 1);
}

static RACED: LazyLock<TieredCache<String, u64>> = LazyLock::new(|| cache("raced"));
static RACED_ROW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
static RACED_RUNS: AtomicUsize = AtomicUsize::new(0);
static RACED_HELD: tokio::sync::Notify = tokio::sync::Notify::const_new();
static RACED_RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[cached_tier(cache = RACED, key = "row")]
async fn raced_row() -> u64 {
    let version = RACED_ROW.load(Ordering::SeqCst);
    if RACED_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
        RACED_HELD.notify_one();
        RACED_RELEASE.notified().await;
    }
    version
}

/// A caller that waited on a body run invalidated meanwhile runs its own body
/// instead of taking the superseded value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_superseded_body_run_do_not_get_the_old_value() {
    let runner = tokio::spawn(raced_row());
    RACED_HELD.notified().await;
    let waiter = tokio::spawn(raced_row());
    tokio::time::sleep(Duration::from_millis(50)).await; // the waiter joins the flight
    RACED_ROW.store(2, Ordering::SeqCst);
    RACED.invalidate("row").await;
    RACED_RELEASE.notify_one();
    let ran = runner.await.unwrap();
    assert!(ran == 1 || ran == 2, "{ran}");
    assert_eq!(waiter.await.unwrap(), 2);
    assert_eq!(raced_row().await, 2);
}

static SHARED_BY_MODULES: LazyLock<TieredCache<String, String>> =
    LazyLock::new(|| cache("by_module"));

mod users {
    use super::SHARED_BY_MODULES;
    use tiered::cached_tier;

    #[cached_tier(cache = SHARED_BY_MODULES)]
    pub async fn find(id: u64) -> String {
        format!("user {id}")
    }
}

mod admins {
    use super::SHARED_BY_MODULES;
    use tiered::cached_tier;

    #[cached_tier(cache = SHARED_BY_MODULES)]
    pub async fn find(id: u64) -> String {
        format!("admin {id}")
    }
}

/// Functions of the same name in two modules, on one cache, with default keys:
/// the key holds the function's path, so they never answer for each other.
#[tokio::test]
async fn default_keys_of_same_named_functions_in_two_modules_do_not_collide() {
    assert_eq!(users::find(1).await, "user 1");
    assert_eq!(admins::find(1).await, "admin 1");
    assert_eq!(users::find(1).await, "user 1");
    assert_eq!(SHARED_BY_MODULES.stats().l1.hits, 1);
}

static MISSING: LazyLock<TieredCache<String, String>> = LazyLock::new(|| cache("missing"));
static MISSING_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached_tier(cache = MISSING, key = "row:{id}")]
async fn missing_row(id: u64) -> Option<String> {
    MISSING_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    (id != 0).then(|| format!("row {id}"))
}

/// An `Option` function without `negative` whose row is missing: 50 callers at
/// once share one body run (its `None` is returned to all, cached nowhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_row_runs_the_body_once_for_all_waiting_callers() {
    for result in at_once(50, || missing_row(0)).await {
        assert_eq!(result, None);
    }
    assert_eq!(
        MISSING_RUNS.load(Ordering::SeqCst),
        1,
        "one flight, one body run"
    );
    assert_eq!(missing_row(0).await, None);
    assert_eq!(MISSING_RUNS.load(Ordering::SeqCst), 2, "None is not cached");
}

static TAGGED: LazyLock<TieredCache<String, String>> = LazyLock::new(|| cache("tagged"));
static TAGGED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached_tier(cache = TAGGED, key = "order:{user}:{id}", tags = ["user:{user}", "orders"])]
async fn order(user: u64, id: u64) -> String {
    TAGGED_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("order {id} of user {user}")
}

/// `tags = [...]`: each call's entry carries its tags, formatted from its
/// arguments, and `invalidate_tag` reaches it.
#[tokio::test]
async fn tags_format_from_the_arguments_and_invalidate_tag_reaches_them() {
    assert_eq!(order(7, 1).await, "order 1 of user 7");
    order(7, 2).await;
    order(8, 1).await;
    assert_eq!(TAGGED_RUNS.load(Ordering::SeqCst), 3);
    order(7, 1).await;
    assert_eq!(TAGGED_RUNS.load(Ordering::SeqCst), 3, "cached");
    TAGGED.invalidate_tag("user:7").await;
    order(7, 1).await;
    order(7, 2).await;
    order(8, 1).await;
    assert_eq!(TAGGED_RUNS.load(Ordering::SeqCst), 5, "user 7's two again");
    TAGGED.invalidate_tag("orders").await;
    order(8, 1).await;
    assert_eq!(TAGGED_RUNS.load(Ordering::SeqCst), 6, "every order");
}

static LATE: LazyLock<TieredCache<String, String>> = LazyLock::new(|| cache("late"));
static LATE_ROW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static LATE_RUNS: AtomicUsize = AtomicUsize::new(0);
static LATE_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[cached_tier(cache = LATE, key = "late:{id}", tags = ["late"])]
async fn late(id: u64) -> Option<String> {
    let exists = LATE_ROW.load(Ordering::SeqCst); // the query reads first
    LATE_RUNS.fetch_add(1, Ordering::SeqCst);
    LATE_GATE.acquire().await.unwrap().forget(); // then takes a while
    exists.then(|| format!("row {id}"))
}

/// A caller that joins a flight after an `invalidate_tag` returned does not
/// take what that flight read before it (tags do not move the key's fence):
/// it runs its own. (Before, it took the flight's "no row" read before the
/// row was inserted and the tag invalidated.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_joins_after_invalidate_tag_gets_a_newer_read() {
    let first = tokio::spawn(late(1));
    while LATE_RUNS.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    LATE_ROW.store(true, Ordering::SeqCst);
    LATE.invalidate_tag("late").await;
    let joined = tokio::spawn(late(1));
    tokio::time::sleep(Duration::from_millis(50)).await; // it joins the first flight
    LATE_GATE.add_permits(10);
    assert_eq!(first.await.unwrap(), None, "its call overlapped the insert");
    assert_eq!(joined.await.unwrap().as_deref(), Some("row 1"));
}

/// A service whose lookups skip writing L2 and are tagged by id, through
/// `options = ...` (evaluated per call, so it may use the arguments), with
/// the attribute's `ttl` over it and its `tags` added (before, they replaced
/// the options' tags, and `invalidate_tag("id:7")` reached nothing).
struct Opted {
    cache: TieredCache<String, u64>,
    runs: AtomicUsize,
}

impl Opted {
    #[cached_tier(
        cache = self.cache,
        key = "opted:{id}",
        skip(self),
        ttl = "1m",
        tags = ["opted"],
        options = tiered::EntryOptions::new().skip_l2_writes().tags([format!("id:{id}")])
    )]
    async fn find(&self, id: u64) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        id * 10
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_apply_per_call_with_the_attribute_ttl_over_them() {
    let redis = Redis::start_own(&[]);
    let opted = Opted {
        cache: TieredCache::builder("opted")
            .l2_redis(redis.url())
            .build()
            .unwrap(),
        runs: AtomicUsize::new(0),
    };
    assert_eq!(opted.find(7).await, 70);
    assert_eq!(opted.find(7).await, 70);
    assert_eq!(opted.runs.load(Ordering::SeqCst), 1, "L1 kept it");
    let l2_key = opted.cache.l2_key("opted:7").unwrap();
    assert_eq!(redis.cli(&["exists", &l2_key]).trim(), "0", "not in L2");
    opted.cache.invalidate_tag("id:7").await;
    assert_eq!(opted.find(7).await, 70);
    assert_eq!(opted.runs.load(Ordering::SeqCst), 2, "tagged by its id");
    assert_eq!(opted.find(8).await, 80);
    opted.cache.invalidate_tag("id:7").await;
    assert_eq!(opted.find(8).await, 80);
    assert_eq!(opted.runs.load(Ordering::SeqCst), 3, "8 kept");
}

static ABSENT_CLOCK: LazyLock<tiered::ManualClock> = LazyLock::new(tiered::ManualClock::new);
static ABSENT: LazyLock<TieredCache<String, String>> = LazyLock::new(|| {
    TieredCache::builder("absent")
        .clock(ABSENT_CLOCK.clone())
        .build()
        .expect("valid settings")
});
static ABSENT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached_tier(cache = ABSENT, key = "absent:{id}", negative = true, ttl = "1s")]
async fn absent(id: u64) -> Option<String> {
    ABSENT_RUNS.fetch_add(1, Ordering::SeqCst);
    (id == 0).then(|| "zero".to_owned())
}

/// `ttl` with `negative = true` applies to absences too (before, an absence
/// took the cache's negative TTL, 30 s, instead of the declared 1 s).
#[tokio::test]
async fn the_attribute_ttl_applies_to_remembered_absences() {
    assert_eq!(absent(7).await, None);
    assert_eq!(absent(7).await, None);
    assert_eq!(ABSENT_RUNS.load(Ordering::SeqCst), 1, "remembered");
    ABSENT_CLOCK.advance(Duration::from_secs(2));
    assert_eq!(absent(7).await, None);
    assert_eq!(ABSENT_RUNS.load(Ordering::SeqCst), 2, "for 1 s only");
}

static BY_ID: LazyLock<TieredCache<u64, String>> = LazyLock::new(|| {
    TieredCache::builder("by-id")
        .build()
        .expect("valid settings")
});
static BY_ID_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached_tier(cache = BY_ID, key = id)]
async fn user_name(id: u64) -> Result<String, NotFound> {
    BY_ID_RUNS.fetch_add(1, Ordering::SeqCst);
    match id {
        0 => Err(NotFound(0)),
        id => Ok(format!("user {id}")),
    }
}

static BY_PAIR: LazyLock<TieredCache<(u64, String), u64>> = LazyLock::new(|| {
    TieredCache::builder("by-pair")
        .build()
        .expect("valid settings")
});

#[cached_tier(cache = BY_PAIR, key = (org, region.to_owned()))]
async fn seats(org: u64, region: &str) -> u64 {
    org * 10 + region.len() as u64
}

#[tokio::test]
async fn the_key_may_be_any_expression_of_the_caches_key_type() {
    assert_eq!(user_name(7).await.unwrap(), "user 7");
    assert_eq!(user_name(7).await.unwrap(), "user 7");
    assert_eq!(BY_ID_RUNS.load(Ordering::SeqCst), 1, "cached under 7");
    assert_eq!(BY_ID.get(&7).await.unwrap().as_deref(), Some("user 7"));
    assert_eq!(user_name(0).await, Err(NotFound(0)));
    assert_eq!(
        BY_ID.peek(&0).await,
        tiered::Peeked::Missing,
        "errors uncached"
    );
    assert_eq!(seats(3, "eu").await, 32);
    assert_eq!(
        BY_PAIR.get(&(3, "eu".to_owned())).await.unwrap(),
        Some(32),
        "cached under the tuple"
    );
    BY_PAIR.invalidate(&(3, "eu".to_owned())).await;
    assert_eq!(
        BY_PAIR.peek(&(3, "eu".to_owned())).await,
        tiered::Peeked::Missing
    );
}

static SHARED_BY_ID: LazyLock<TieredCache<u64, String>> = LazyLock::new(|| {
    TieredCache::builder("shared-by-id")
        .negative_ttl(Duration::ZERO)
        .build()
        .expect("valid settings")
});

#[cached_tier(cache = SHARED_BY_ID, key = id)]
async fn must_find(id: u64) -> Result<String, NotFound> {
    Ok(format!("found {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_cannot_return_none_runs_its_body_when_it_joins_an_absence() {
    // Another caller's load of key 1 answers "absent", cached nowhere (a zero
    // negative TTL); the function joins that load.
    let absent = tokio::spawn(async {
        SHARED_BY_ID
            .try_get_with(&1, async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, NotFound>(None)
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(must_find(1).await, Ok("found 1".to_owned()));
    assert_eq!(absent.await.unwrap(), Ok(None));
}
