//! A hot key expiring under load: 64 tasks read one key in a loop for several TTL
//! periods, against a redis-server and a PostgreSQL of the bench's own, where a
//! load is a query that takes about 20 ms (`pg_sleep(0.02)`).
//!
//! For each variant: reads, latency p50 / p99 / p99.9 / max, the reads that took
//! longer than 1 ms (they waited for a load), and loads per TTL period (counted
//! by PostgreSQL). The first variant never expires: it is the baseline of a read
//! that never waits (an L1 hit, with the same loop and scheduling). The last
//! two read through cache-aside calls on a cache with no loader of its own: the
//! borrowing `get_with` and the `'static` `get_or_load`.
//!
//! Then, for both cache-aside calls: 100 callers that each give up after 50 ms
//! on a 300 ms load, then one caller that waits: how many loads they caused,
//! and when that caller had its value.
//!
//! Run: `cargo bench --features postgres --bench expiry_storm` (10 s per variant), or
//! `cargo bench --features postgres --bench expiry_storm -- --secs 30`.

#[path = "support/postgres_server.rs"]
mod postgres;
#[path = "support/redis_server.rs"]
mod redis;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Config, Pool, Runtime};
use tiered::{BoxError, PgLoader, TieredCache};
use tokio_postgres::NoTls;

const TASKS: usize = 64;
const TTL: Duration = Duration::from_secs(1);
const SLOW_READ: Duration = Duration::from_millis(1);

/// How a variant reads.
#[derive(Clone, Copy, PartialEq)]
enum Read {
    /// `get`, with the query as the configured loader.
    Get,
    /// `get_with(key, query)`, no configured loader.
    GetWith,
    /// `get_or_load(key, |id| query)`, no configured loader.
    GetOrLoad,
}

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    ttl: Duration,
    early: bool,
    swr: bool,
    read: Read,
}

const QUERY: &str = "SELECT id, payload, pg_sleep(0.02)::text FROM items WHERE id = $1";

/// The query of a cache-aside call.
async fn query(pool: Pool, id: i64) -> Result<Option<Arc<String>>, BoxError> {
    let client = pool.get().await?;
    let row = client.query_opt(QUERY, &[&id]).await?;
    Ok(match row {
        Some(row) => Some(Arc::new(row.try_get::<_, String>(1)?)),
        None => None,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let secs: u64 = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(10), |s| s.parse())?;
    let run_for = Duration::from_secs(secs);
    let redis = redis::RedisServer::start();
    let pg = postgres::PostgresServer::start();
    let pool = pool(&pg.url, 8)?;
    pool.get()
        .await?
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
             CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL);
             INSERT INTO items SELECT i, repeat('x', 200) FROM generate_series(1, 10) i;",
        )
        .await?;
    println!(
        "{TASKS} tasks reading one key for {secs} s; TTL {TTL:?} in L1 and L2, no jitter; \
         a load takes ~20 ms (PostgreSQL pg_sleep)\n"
    );
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>9} {:>10} {:>11} {:>8} {:>12}",
        "variant",
        "reads",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max ms",
        "reads >1ms",
        "loads",
        "loads/period"
    );
    let variants = [
        Variant {
            name: "baseline: never expires",
            ttl: Duration::from_secs(3600),
            early: false,
            swr: false,
            read: Read::Get,
        },
        Variant {
            name: "no early refresh, no SWR",
            ttl: TTL,
            early: false,
            swr: false,
            read: Read::Get,
        },
        Variant {
            name: "early refresh (XFetch, β = 1)",
            ttl: TTL,
            early: true,
            swr: false,
            read: Read::Get,
        },
        Variant {
            name: "stale-while-revalidate (1 s)",
            ttl: TTL,
            early: false,
            swr: true,
            read: Read::Get,
        },
        Variant {
            name: "early refresh + SWR",
            ttl: TTL,
            early: true,
            swr: true,
            read: Read::Get,
        },
        Variant {
            name: "get_with, early refresh",
            ttl: TTL,
            early: true,
            swr: false,
            read: Read::GetWith,
        },
        Variant {
            name: "get_or_load, early refresh",
            ttl: TTL,
            early: true,
            swr: false,
            read: Read::GetOrLoad,
        },
    ];
    for (index, variant) in variants.into_iter().enumerate() {
        run(index, variant, &redis.url, &pool, run_for).await?;
    }
    println!(
        "\n{CALLERS} callers that give up after {GIVE_UP:?} on a {SLOW_LOAD:?} load, \
         then one caller that waits for the value\n"
    );
    println!("{:<34} {:>8} {:>14}", "call", "loads", "its value at ms");
    for read in [Read::GetWith, Read::GetOrLoad] {
        give_up(read).await?;
    }
    Ok(())
}

const CALLERS: usize = 100;
const GIVE_UP: Duration = Duration::from_millis(50);
const SLOW_LOAD: Duration = Duration::from_millis(300);

/// 100 callers that give up after 50 ms on a 300 ms load, then one caller that
/// waits for the value: how many loads, and when that caller had the value.
async fn give_up(read: Read) -> Result<(), BoxError> {
    let cache = TieredCache::<i64, Arc<String>>::builder("give-up").build()?;
    let loads = Arc::new(AtomicU64::new(0));
    let call = |cache: TieredCache<i64, Arc<String>>, loads: Arc<AtomicU64>| async move {
        let load = move |id: i64| {
            loads.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(SLOW_LOAD).await;
                Ok::<_, BoxError>(Some(Arc::new(id.to_string())))
            }
        };
        match read {
            Read::GetOrLoad => cache.get_or_load(&1, load).await,
            _ => cache.get_with(&1, load(1)).await,
        }
    };
    let start = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let call = call(cache.clone(), loads.clone());
            tokio::spawn(async move { tokio::time::timeout(GIVE_UP, call).await.is_err() })
        })
        .collect();
    for caller in callers {
        assert!(caller.await?, "every caller gave up");
    }
    let value = call(cache.clone(), loads.clone()).await?;
    assert!(value.is_some());
    let name = match read {
        Read::GetOrLoad => "get_or_load",
        _ => "get_with",
    };
    println!(
        "{:<34} {:>8} {:>14.0}",
        name,
        loads.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn pool(url: &str, size: usize) -> Result<Pool, BoxError> {
    let mut config = Config::new();
    config.url = Some(url.to_owned());
    config.pool = Some(deadpool_postgres::PoolConfig::new(size));
    Ok(config.create_pool(Some(Runtime::Tokio1), NoTls)?)
}

async fn run(
    index: usize,
    variant: Variant,
    redis_url: &str,
    pool: &Pool,
    run_for: Duration,
) -> Result<(), BoxError> {
    let loader = PgLoader::new(pool.clone(), QUERY, |row| {
        Ok((
            row.try_get::<_, i64>(0)?,
            Arc::new(row.try_get::<_, String>(1)?),
        ))
    });
    let builder = TieredCache::<i64, Arc<String>>::builder(format!("storm{index}"))
        .l2_redis(redis_url)
        .jitter(0.0)
        .l1_ttl(variant.ttl)
        .l2_ttl(variant.ttl);
    let builder = if variant.read == Read::Get {
        builder.loader(loader)
    } else {
        builder
    };
    let builder = if variant.early {
        builder.early_refresh(1.0)
    } else {
        builder.no_early_refresh()
    };
    let builder = if variant.swr {
        builder.stale_while_revalidate(TTL)
    } else {
        builder
    };
    let cache = builder.build()?;
    let read = move |cache: TieredCache<i64, Arc<String>>, pool: Pool| async move {
        match variant.read {
            Read::Get => cache.get(&1).await,
            Read::GetWith => cache.get_with(&1, query(pool, 1)).await,
            Read::GetOrLoad => {
                cache
                    .get_or_load(&1, move |id| query(pool.clone(), id))
                    .await
            }
        }
    };
    read(cache.clone(), pool.clone()).await?; // the cold load, not measured
    let client = pool.get().await?;
    client
        .execute("SELECT pg_stat_statements_reset()", &[])
        .await?;
    let loads_before = cache.stats().loads;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (cache, stop, pool) = (cache.clone(), stop.clone(), pool.clone());
            tokio::spawn(async move {
                let mut samples: Vec<u32> = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let value = read(cache.clone(), pool.clone()).await;
                    let took = start.elapsed();
                    assert!(matches!(value, Ok(Some(_))), "{value:?}");
                    samples.push(u32::try_from(took.as_nanos()).unwrap_or(u32::MAX));
                    // A service does other work between reads.
                    tokio::task::yield_now().await;
                }
                samples
            })
        })
        .collect();
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await?);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let slow = samples
        .iter()
        .filter(|&&ns| u128::from(ns) > SLOW_READ.as_nanos())
        .count();
    let queries: i64 = client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
             WHERE query LIKE '%pg_sleep%' AND query NOT LIKE '%pg_stat_statements%'",
            &[],
        )
        .await?
        .get(0);
    let loads = cache.stats().loads - loads_before;
    assert_eq!(i64::try_from(loads)?, queries, "every load is one query");
    let periods = run_for.as_secs_f64() / variant.ttl.as_secs_f64();
    let periods_note = if variant.ttl > run_for {
        "-".to_owned()
    } else {
        format!("{:.2}", loads as f64 / periods)
    };
    println!(
        "{:<34} {:>10} {:>9.1} {:>9.1} {:>9.1} {:>10.2} {:>11} {:>8} {:>12}",
        variant.name,
        samples.len(),
        f64::from(at(0.50)) / 1e3,
        f64::from(at(0.99)) / 1e3,
        f64::from(at(0.999)) / 1e3,
        f64::from(*samples.last().unwrap_or(&0)) / 1e6,
        slow,
        queries,
        periods_note,
    );
    Ok(())
}
