//! Fresh under load: early refresh, stale-while-revalidate, fail-safe, loader
//! timeouts, the fleet-wide lease and warming, against real Redis and Postgres.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::support::users::{user_loader, user_row, User};
use crate::support::{at_once, eventually, Postgres, Redis};
use tiered::{BoxError, Error, ManualClock, PgLoader, TieredCache};

/// A loader whose loads return `v1`, `v2`, …; each load waits for a permit of
/// `gate` (the test lets loads finish by adding permits).
fn gated_loader(
    gate: &Arc<Semaphore>,
    loads: &Arc<AtomicU64>,
) -> impl Fn(u64) -> futures_util::future::BoxFuture<'static, Result<Option<String>, BoxError>>
       + Send
       + Sync
       + 'static {
    let (gate, loads) = (gate.clone(), loads.clone());
    move |_key: u64| {
        let (gate, loads) = (gate.clone(), loads.clone());
        Box::pin(async move {
            gate.acquire().await?.forget();
            let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Some(format!("v{n}")))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() {
    // L1 only: L2 keeps wall-clock times, and this test moves a manual clock.
    let (gate, loads) = (Arc::new(Semaphore::new(1)), Arc::new(AtomicU64::new(0)));
    let clock = ManualClock::new();
    let cache = TieredCache::<u64, String>::builder("swr")
        .clock(clock.clone())
        .jitter(0.0)
        .l1_ttl(Duration::from_secs(10))
        .no_early_refresh()
        .stale_while_revalidate(Duration::from_secs(60))
        .loader_fn(gated_loader(&gate, &loads))
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).await.unwrap().as_deref(), Some("v1"));
    clock.advance(Duration::from_secs(11));
    // Stale: every read returns v1 at once, though the refresh is held at the gate.
    for _ in 0..100 {
        assert_eq!(cache.get(&1).await.unwrap().as_deref(), Some("v1"));
    }
    let stats = cache.stats();
    assert_eq!(stats.refreshes, 1, "one refresh however many stale reads");
    assert_eq!(stats.stale_served, 100);
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the refresh waits at the gate"
    );
    gate.add_permits(1);
    eventually("the refreshed value", || async {
        cache.get(&1).await.unwrap().as_deref() == Some("v2")
    })
    .await;
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    // Past the window, a read waits for the reload.
    clock.advance(Duration::from_secs(80));
    gate.add_permits(1);
    assert_eq!(cache.get(&1).await.unwrap().as_deref(), Some("v3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_refreshed_early_and_its_readers_never_wait() {
    let (gate, loads) = (Arc::new(Semaphore::new(1)), Arc::new(AtomicU64::new(0)));
    let clock = ManualClock::new();
    let build = |beta: Option<f64>| {
        let slow = {
            let inner = gated_loader(&gate, &loads);
            move |key: u64| {
                let load = inner(key);
                async move {
                    // A load of about 20 ms: what XFetch weighs its draws by.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    load.await
                }
            }
        };
        let builder = TieredCache::<u64, String>::builder("early")
            .clock(clock.clone())
            .jitter(0.0)
            .l1_ttl(Duration::from_secs(1))
            .loader_fn(slow);
        match beta {
            Some(beta) => builder.early_refresh(beta),
            None => builder.no_early_refresh(),
        }
        .build()
        .unwrap()
    };
    let cache = build(Some(1.0));
    assert_eq!(cache.get(&1).await.unwrap().as_deref(), Some("v1"));
    // Far from expiry (500 ms left, 25 load durations): a draw succeeds with
    // probability e^-25 per hit.
    clock.advance(Duration::from_millis(500));
    for _ in 0..1000 {
        cache.get(&1).await.unwrap();
    }
    assert_eq!(cache.stats().refreshes, 0);
    // 1 ms before expiry (1/20 of a load duration): nearly every hit draws a
    // refresh; one starts, the hits still return v1 at once.
    clock.advance(Duration::from_millis(499));
    for _ in 0..100 {
        assert_eq!(cache.get(&1).await.unwrap().as_deref(), Some("v1"));
    }
    assert_eq!(cache.stats().refreshes, 1);
    gate.add_permits(1);
    eventually("the early refresh", || async {
        cache.get(&1).await.unwrap().as_deref() == Some("v2")
    })
    .await;
    let stats = cache.stats();
    assert_eq!(stats.l1.misses, 1, "no read missed: only the very first");
    assert_eq!(stats.loads, 2);

    // Without early refresh, the same hits start nothing.
    let plain = build(None);
    gate.add_permits(1);
    plain.get(&1).await.unwrap();
    clock.advance(Duration::from_millis(999));
    for _ in 0..100 {
        plain.get(&1).await.unwrap();
    }
    assert_eq!(plain.stats().refreshes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_soft_timeout_callers_get_their_stale_copy_and_the_load_fills_later() {
    let (gate, loads) = (Arc::new(Semaphore::new(1)), Arc::new(AtomicU64::new(0)));
    let redis = Redis::start();
    let cache = TieredCache::<u64, String>::builder("soft")
        .l2_redis(redis.url())
        .l2_prefix("soft-test")
        .jitter(0.0)
        .l1_ttl(Duration::from_millis(100))
        .l2_ttl(Duration::from_millis(100))
        .no_early_refresh()
        .fail_safe(Duration::from_secs(3600))
        .soft_timeout(Duration::from_millis(50))
        .hard_timeout(Duration::from_secs(30))
        .loader_fn(gated_loader(&gate, &loads))
        .build()
        .unwrap();
    cache.invalidate_all().await;
    assert_eq!(cache.get(&1).await.unwrap().as_deref(), Some("v1"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The reload is held at the gate: 16 callers each give up waiting at the soft
    // timeout and return the stale copy.
    let answers = at_once(16, || {
        let cache = cache.clone();
        async move { cache.get(&1).await }
    })
    .await;
    for answer in answers {
        assert_eq!(answer.unwrap().as_deref(), Some("v1"));
    }
    let stats = cache.stats();
    assert_eq!(stats.soft_timeouts, 16);
    assert_eq!(stats.stale_served, 16);
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the reload is still running"
    );
    gate.add_permits(1);
    eventually("the reload's value", || async {
        cache.get(&1).await.unwrap().as_deref() == Some("v2")
    })
    .await;
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "one reload for all of them"
    );
    assert_eq!(cache.stats().loads, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_hard_timeout_a_load_is_given_up() {
    let (gate, loads) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicU64::new(0)));
    let cache = TieredCache::<u64, String>::builder("hard")
        .hard_timeout(Duration::from_millis(50))
        .loader_fn(gated_loader(&gate, &loads))
        .build()
        .unwrap();
    let err = cache.get(&1).await.unwrap_err();
    assert!(matches!(err, Error::LoadTimedOut { .. }), "{err:?}");
    assert_eq!(cache.stats().load_errors, 1);
    // get_with's own load has the same limit.
    let err = cache
        .get_with(
            &2,
            std::future::pending::<Result<Option<String>, BoxError>>(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LoadTimedOut { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_fail_safe_serves_stale_copies_then_values_refresh() {
    let mut pg = Postgres::start_own();
    let redis = Redis::start();
    let pool = pg.pool(4);
    let table = pg.users_table(&pool, 20).await;
    let cache = TieredCache::builder("users-fs")
        .l2_redis(redis.url())
        .l2_prefix("fail-safe-test")
        .jitter(0.0)
        .l1_ttl(Duration::from_millis(200))
        .l2_ttl(Duration::from_millis(200))
        .fail_safe(Duration::from_secs(3600))
        .fail_safe_throttle(Duration::from_millis(200))
        .hard_timeout(Duration::from_secs(2))
        .loader(user_loader(pool.clone(), &table))
        .build()
        .unwrap();
    cache.invalidate_all().await;
    let keys: Vec<i64> = (1..=10).collect();
    for key in &keys {
        assert_eq!(cache.get(key).await.unwrap().unwrap().id, *key);
    }
    // The table must survive an immediate stop of a server without fsync.
    let client = pool.get().await.unwrap();
    client.batch_execute("CHECKPOINT").await.unwrap();
    drop(client);
    pg.stop();
    // Two seconds of reads with the database down: every entry goes stale
    // several times over, and every read still answers.
    let start = Instant::now();
    let mut reads = 0;
    while start.elapsed() < Duration::from_secs(2) {
        for key in &keys {
            let user = cache.get(key).await.expect("fail-safe: no error");
            assert_eq!(user.unwrap().name, format!("user {key}"));
            reads += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = cache.stats();
    assert!(stats.fail_safe >= 10, "{stats:?}");
    assert!(stats.stale_served >= 10, "{stats:?}");
    assert!(
        stats.load_errors < reads / 2,
        "the throttle spares the database: {} failed loads for {reads} reads",
        stats.load_errors
    );
    // A key never loaded has no stale copy: its error reaches the caller.
    assert!(matches!(cache.get(&11).await, Err(Error::Load { .. })));

    pg.start_again();
    let client = loop {
        if let Ok(client) = pool.get().await {
            if client.simple_query("SELECT 1").await.is_ok() {
                break client;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    client
        .execute(&format!("UPDATE {table} SET name = 'renamed ' || id"), &[])
        .await
        .unwrap();
    for key in &keys {
        eventually("a refreshed value", || async {
            cache.get(key).await.unwrap().unwrap().name == format!("renamed {key}")
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_instances_and_a_thousand_callers_of_a_cold_key_cause_one_query() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let pool = pg.pool(16);
    let table = pg.users_table(&pool, 10).await;
    // A load of about 200 ms, so that every instance misses L2 while it runs.
    let slow = || {
        PgLoader::new(
            pool.clone(),
            format!("SELECT id, name, pg_sleep(0.2)::text FROM {table} WHERE id = $1"),
            user_row,
        )
    };
    let instances: Vec<TieredCache<i64, User>> = (0..4)
        .map(|_| {
            TieredCache::builder("users-lease")
                .l2_redis(redis.url())
                .l2_prefix("lease-test")
                .fleet_single_flight(Duration::from_secs(5))
                .loader(slow())
                .build()
                .unwrap()
        })
        .collect();
    instances[0].invalidate_all().await;
    let next = AtomicU64::new(0);
    let users = at_once(1000, || {
        let n = next.fetch_add(1, Ordering::Relaxed) as usize;
        let cache = instances[n % 4].clone();
        async move { cache.get(&7).await }
    })
    .await;
    for user in users {
        assert_eq!(user.unwrap().unwrap().name, "user 7");
    }
    let stats: Vec<_> = instances.iter().map(|c| c.stats()).collect();
    assert_eq!(
        pg.calls(&pool, "pg_sleep").await,
        1,
        "one load in the fleet: {stats:#?}"
    );
    let waits: u64 = instances.iter().map(|c| c.stats().lease_waits).sum();
    let loads: u64 = instances.iter().map(|c| c.stats().loads).sum();
    assert_eq!(loads, 1);
    assert!(waits >= 3, "the other instances waited: {waits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lease_holder_is_replaced_once_its_lease_expires() {
    let redis = Redis::start();
    let build = |hang: bool| {
        TieredCache::<u64, String>::builder("lease-dead")
            .l2_redis(redis.url())
            .l2_prefix("lease-dead-test")
            .fleet_single_flight(Duration::from_millis(300))
            .loader_fn(move |key: u64| async move {
                if hang {
                    // The holder dies mid-load: it never fills nor releases.
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(Some(format!("loaded {key}")))
            })
            .build()
            .unwrap()
    };
    let (holder, other) = (build(true), build(false));
    holder.invalidate_all().await;
    let stuck = tokio::spawn({
        let holder = holder.clone();
        async move { holder.get(&1).await }
    });
    eventually("the holder's lease", || async {
        !redis.cli(&["keys", "*#lease:*"]).trim().is_empty()
    })
    .await;
    assert_eq!(other.get(&1).await.unwrap().as_deref(), Some("loaded 1"));
    assert_eq!(other.stats().loads, 1);
    assert!(
        other.stats().lease_waits >= 1,
        "the other instance waited for the lease first"
    );
    assert!(!stuck.is_finished());
    stuck.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_loads_every_key_in_batches_and_reports_progress() {
    #[derive(Clone, Default)]
    struct Progress(Arc<std::sync::Mutex<Vec<(usize, usize)>>>);
    impl tiered::Observer for Progress {
        fn warmed(&self, done: usize, total: usize) {
            self.0.lock().unwrap().push((done, total));
        }
    }
    let pg = Postgres::start();
    let redis = Redis::start();
    let pool = pg.pool(4);
    let table = pg.users_table(&pool, 1000).await;
    let progress = Progress::default();
    let cache = TieredCache::builder("users-warm")
        .l2_redis(redis.url())
        .l2_prefix("warm-test")
        .observer(progress.clone())
        .loader(user_loader(pool.clone(), &table))
        .build()
        .unwrap();
    cache.invalidate_all().await;
    let mut keys: Vec<i64> = (1..=1200).collect();
    keys.push(5);
    let warmed = cache.warm(&keys, 2).await;
    assert_eq!(warmed.requested, 1200, "duplicates are looked up once");
    assert_eq!(warmed.found, 1000, "ids past 1000 do not exist");
    assert_eq!(warmed.failed, 0);
    assert_eq!(
        pg.calls(&pool, "ANY($1)").await,
        5,
        "1200 keys in batches of 256"
    );
    let seen = progress.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.last(), Some(&(1200, 1200)));
    // Warm: every read is an L1 hit.
    let before = cache.stats().l1.misses;
    for key in 1..=1000 {
        assert!(cache.get(&key).await.unwrap().is_some());
    }
    assert_eq!(cache.stats().l1.misses, before);
}

/// A refresh whose L2 entry expires in Redis while it loads still fills it: Redis
/// keeps entries past their usable time by a grace. (Before, the fill found the
/// key gone, counted the load as superseded and loaded again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_outlives_its_entry_in_redis_still_fills_it() {
    let redis = Redis::start();
    let loads = Arc::new(AtomicU64::new(0));
    let counted = loads.clone();
    let cache = TieredCache::<u64, u64>::builder("grace")
        .l2_redis(redis.url())
        .l2_prefix("grace-test")
        .jitter(0.0)
        .l1_ttl(Duration::from_secs(1))
        .l2_ttl(Duration::from_secs(1))
        // A large β: a hit 200 ms before expiry surely refreshes (P = 0.995).
        .early_refresh(100.0)
        .loader_fn(move |_key: u64| {
            let loads = counted.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok::<_, BoxError>(Some(loads.fetch_add(1, Ordering::SeqCst) + 1))
            }
        })
        .build()
        .unwrap();
    cache.invalidate_all().await;
    assert_eq!(cache.get(&1).await.unwrap(), Some(1));
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The refresh reads the entry (about 200 ms left), loads for 400 ms, and fills.
    assert_eq!(cache.get(&1).await.unwrap(), Some(1));
    assert_eq!(cache.stats().refreshes, 1);
    eventually("the refreshed value", || async {
        cache.get(&1).await.unwrap() == Some(2)
    })
    .await;
    let stats = cache.stats();
    assert_eq!(stats.superseded, 0, "{stats:?}");
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

/// A background refresh that read the database before an invalidation does not
/// write what it read: the refresh starts over and caches the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_racing_an_invalidation_does_not_write_the_old_value() {
    let db = Arc::new(AtomicU64::new(1));
    let reads = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(1));
    let clock = ManualClock::new();
    let cache = {
        let (db, reads, gate) = (db.clone(), reads.clone(), gate.clone());
        TieredCache::<u64, u64>::builder("refresh-race")
            .clock(clock.clone())
            .jitter(0.0)
            .l1_ttl(Duration::from_secs(10))
            .no_early_refresh()
            .stale_while_revalidate(Duration::from_secs(60))
            .loader_fn(move |_key: u64| {
                let (db, reads, gate) = (db.clone(), reads.clone(), gate.clone());
                async move {
                    let read = db.load(Ordering::SeqCst); // read before the gate
                    reads.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await?.forget();
                    Ok::<_, BoxError>(Some(read))
                }
            })
            .build()
            .unwrap()
    };
    assert_eq!(cache.get(&1).await.unwrap(), Some(1));
    clock.advance(Duration::from_secs(11));
    // Stale: served at once; the refresh reads 1 and waits at the gate.
    assert_eq!(cache.get(&1).await.unwrap(), Some(1));
    eventually("the refresh to read the database", || async {
        reads.load(Ordering::SeqCst) == 2
    })
    .await;
    db.store(2, Ordering::SeqCst);
    cache.invalidate(&1).await;
    gate.add_permits(2);
    assert_eq!(cache.get(&1).await.unwrap(), Some(2), "never the old value");
    assert!(
        cache.stats().superseded >= 1,
        "the refresh's first load was refused"
    );
    assert_eq!(cache.get(&1).await.unwrap(), Some(2));
}

/// Fail-safe never serves an invalidated value: the invalidation removes the
/// stale copy with the fresh one, and the failing load's error reaches the caller.
#[tokio::test]
async fn fail_safe_does_not_bring_back_an_invalidated_value() {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let clock = ManualClock::new();
    let cache = {
        let up = up.clone();
        TieredCache::<u64, u64>::builder("fail-safe-invalidated")
            .clock(clock.clone())
            .l1_ttl(Duration::from_secs(10))
            .fail_safe(Duration::from_secs(3600))
            .loader_fn(move |key: u64| {
                let up = up.load(Ordering::SeqCst);
                async move {
                    if up {
                        Ok::<_, BoxError>(Some(key * 10))
                    } else {
                        Err("database down".into())
                    }
                }
            })
            .build()
            .unwrap()
    };
    assert_eq!(cache.get(&1).await.unwrap(), Some(10));
    assert_eq!(cache.get(&2).await.unwrap(), Some(20));
    up.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_secs(11));
    cache.invalidate(&1).await;
    assert!(matches!(cache.get(&1).await, Err(Error::Load { .. })));
    // The key that was not invalidated is served stale.
    assert_eq!(cache.get(&2).await.unwrap(), Some(20));
    assert_eq!(cache.stats().fail_safe, 1);
}
