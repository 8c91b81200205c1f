//! A hot key expiring under load: 64 tasks read one key in a loop for several TTL
//! periods, against a redis-server and a PostgreSQL of the bench's own, where a
//! load is a query that takes about 20 ms (`pg_sleep(0.02)`).
//!
//! For each variant: reads, latency p50 / p99 / p99.9 / max, the reads that took
//! longer than 1 ms (they waited for a load), and loads per TTL period (counted
//! by PostgreSQL). The first variant never expires: it is the baseline of a read
//! that never waits (an L1 hit, with the same loop and scheduling).
//!
//! Run: `cargo bench --bench expiry_storm` (10 s per variant), or
//! `cargo bench --bench expiry_storm -- --secs 30`.

#[path = "support/postgres_server.rs"]
mod postgres;
#[path = "support/redis_server.rs"]
mod redis;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Config, Pool, Runtime};
use tiered::{BoxError, PgLoader, TieredCache};
use tokio_postgres::NoTls;

const TASKS: usize = 64;
const TTL: Duration = Duration::from_secs(1);
const SLOW_READ: Duration = Duration::from_millis(1);

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    ttl: Duration,
    early: bool,
    swr: bool,
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
        },
        Variant {
            name: "no early refresh, no SWR",
            ttl: TTL,
            early: false,
            swr: false,
        },
        Variant {
            name: "early refresh (XFetch, β = 1)",
            ttl: TTL,
            early: true,
            swr: false,
        },
        Variant {
            name: "stale-while-revalidate (1 s)",
            ttl: TTL,
            early: false,
            swr: true,
        },
        Variant {
            name: "early refresh + SWR",
            ttl: TTL,
            early: true,
            swr: true,
        },
    ];
    for (index, variant) in variants.into_iter().enumerate() {
        run(index, variant, &redis.url, &pool, run_for).await?;
    }
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
    let loader = PgLoader::new(
        pool.clone(),
        "SELECT id, payload, pg_sleep(0.02)::text FROM items WHERE id = $1",
        |row| {
            Ok((
                row.try_get::<_, i64>(0)?,
                Arc::new(row.try_get::<_, String>(1)?),
            ))
        },
    );
    let builder = TieredCache::<i64, Arc<String>>::builder(format!("storm{index}"))
        .l2_redis(redis_url)
        .jitter(0.0)
        .l1_ttl(variant.ttl)
        .l2_ttl(variant.ttl)
        .loader(loader);
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
    cache.get(&1).await?; // the cold load, not measured
    let client = pool.get().await?;
    client
        .execute("SELECT pg_stat_statements_reset()", &[])
        .await?;
    let loads_before = cache.stats().loads;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (cache, stop) = (cache.clone(), stop.clone());
            tokio::spawn(async move {
                let mut samples: Vec<u32> = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let value = cache.get(&1).await;
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
