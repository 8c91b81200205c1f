//! The miss path against the code a user would write by hand: a seeded trace
//! replayed through `TieredCache::get_with` (L1 + Redis + a loader that does no
//! I/O) and through a hand-written moka `try_get_with` { Redis GET + bincode
//! decode, else load + encode + SET } on one multiplexed connection, same run.
//!
//! 100k keys, L1 (and the baseline's moka) at 1% of them, Zipf 0.99 (and the same
//! with its ranking drawn anew every 100k requests: "drifting"); 100k requests of
//! warm-up, then 300k timed, on one task, each system on an emptied Redis. Prints,
//! per run, the mean, p99 and p99.9 latency and the L1 hit share of each, and the
//! ratios tiered / by hand. Run: `cargo bench --bench trace` (starts its own
//! redis-server); `-- --runs 3` (default 3), `-- --requests 400000`.

#[path = "support/redis_server.rs"]
mod support;
#[path = "support/zipf.rs"]
mod zipf;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tiered::{BoxError, TieredCache};
use zipf::Zipf;

const KEYS: usize = 100_000;
const CAPACITY: u64 = 1_000;
const WARM_UP: usize = 100_000;
const SEED: u64 = 16;
const TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
}

fn user(id: u64) -> Arc<User> {
    Arc::new(User {
        id,
        name: format!("user {id}"),
        email: format!("user{id}@example.com"),
    })
}

/// What one replay measured (timed part only).
struct Replay {
    mean: Duration,
    p99: Duration,
    p999: Duration,
    l1_share: f64,
}

fn summary(mut samples: Vec<Duration>, l1_hits: u64) -> Replay {
    let n = samples.len();
    let mean = samples.iter().sum::<Duration>() / n as u32;
    samples.sort_unstable();
    let at = |q: f64| samples[((n as f64 - 1.0) * q).round() as usize];
    Replay {
        mean,
        p99: at(0.99),
        p999: at(0.999),
        l1_share: l1_hits as f64 / n as f64,
    }
}

fn traces(requests: usize) -> Vec<(&'static str, Vec<u64>)> {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let zipf = Zipf::new(KEYS, 0.99);
    let shuffled = |rng: &mut fastrand::Rng| {
        let mut ranking: Vec<u64> = (0..KEYS as u64).collect();
        rng.shuffle(&mut ranking);
        ranking
    };
    let ranking = shuffled(&mut rng);
    let steady = (0..requests)
        .map(|_| ranking[zipf.sample(&mut rng)])
        .collect();
    let mut ranking = shuffled(&mut rng);
    let drifting = (0..requests)
        .map(|i| {
            if i > 0 && i % 100_000 == 0 {
                ranking = shuffled(&mut rng);
            }
            ranking[zipf.sample(&mut rng)]
        })
        .collect();
    vec![("zipf-0.99", steady), ("drifting-0.99", drifting)]
}

async fn by_hand(url: &str, trace: &[u64]) -> Result<Replay, BoxError> {
    let client = redis::Client::open(url)?;
    let conn = client.get_multiplexed_async_connection().await?;
    let cache: moka::future::Cache<u64, Arc<User>> = moka::future::Cache::new(CAPACITY);
    let misses = AtomicU64::new(0);
    let mut samples = Vec::with_capacity(trace.len() - WARM_UP);
    for (i, &key) in trace.iter().enumerate() {
        if i == WARM_UP {
            misses.store(0, Ordering::Relaxed);
        }
        let started = Instant::now();
        let mut conn = conn.clone();
        let misses = &misses;
        let value = cache
            .try_get_with(key, async move {
                misses.fetch_add(1, Ordering::Relaxed);
                let redis_key = format!("byhand:{key}");
                let bytes: Option<Vec<u8>> = conn.get(&redis_key).await?;
                let config = bincode::config::standard();
                if let Some(bytes) = bytes {
                    if let Ok((user, _)) =
                        bincode::serde::decode_from_slice::<User, _>(&bytes, config)
                    {
                        return Ok::<_, BoxError>(Arc::new(user));
                    }
                }
                let loaded = user(key);
                let bytes = bincode::serde::encode_to_vec(&*loaded, config)?;
                let _: () = conn.set_ex(&redis_key, bytes, TTL.as_secs()).await?;
                Ok(loaded)
            })
            .await
            .map_err(|e| e.to_string())?;
        std::hint::black_box(value);
        if i >= WARM_UP {
            samples.push(started.elapsed());
        }
    }
    let timed = (trace.len() - WARM_UP) as u64;
    Ok(summary(samples, timed - misses.load(Ordering::Relaxed)))
}

async fn tiered(url: &str, trace: &[u64]) -> Result<Replay, BoxError> {
    let cache = TieredCache::<u64, Arc<User>>::builder("trace")
        .l1_max_entries(CAPACITY)
        .l1_ttl(TTL)
        .l2_redis(url)
        .l2_ttl(TTL)
        .l2_timeout(Duration::from_secs(1))
        .build()?;
    let mut samples = Vec::with_capacity(trace.len() - WARM_UP);
    let mut hits_before = 0;
    for (i, &key) in trace.iter().enumerate() {
        if i == WARM_UP {
            hits_before = cache.stats().l1.hits;
        }
        let started = Instant::now();
        let value = cache
            .get_with(&key, async move { Ok::<_, BoxError>(Some(user(key))) })
            .await?;
        std::hint::black_box(value);
        if i >= WARM_UP {
            samples.push(started.elapsed());
        }
    }
    Ok(summary(samples, cache.stats().l1.hits - hits_before))
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo bench -- --list` and `cargo test --benches`
    }
    let runs = arg("--runs", 3);
    let requests = arg("--requests", WARM_UP + 300_000).max(WARM_UP + 1000);
    let server = support::RedisServer::start();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{:<14} {:>3} {:<7} {:>9} {:>9} {:>9} {:>8}",
        "trace", "run", "system", "mean µs", "p99 µs", "p99.9 µs", "L1 share"
    );
    let mut ratios: Vec<(&str, f64, f64, f64)> = Vec::new();
    for (name, trace) in traces(requests) {
        for run in 1..=runs {
            support::cli(&server.url, &["FLUSHALL"]);
            let hand = by_hand(&server.url, &trace).await?;
            support::cli(&server.url, &["FLUSHALL"]);
            let ours = tiered(&server.url, &trace).await?;
            for (system, r) in [("by-hand", &hand), ("tiered", &ours)] {
                println!(
                    "{name:<14} {run:>3} {system:<7} {:>9.1} {:>9.1} {:>9.1} {:>8.3}",
                    us(r.mean),
                    us(r.p99),
                    us(r.p999),
                    r.l1_share
                );
            }
            let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
            let (mean, p99, p999) = (
                ratio(ours.mean, hand.mean),
                ratio(ours.p99, hand.p99),
                ratio(ours.p999, hand.p999),
            );
            println!("{name:<14} {run:>3} ratio   {mean:>9.3} {p99:>9.3} {p999:>9.3}");
            ratios.push((name, mean, p99, p999));
        }
    }
    println!("\nmedian ratios tiered / by hand over {runs} run(s):");
    for name in ["zipf-0.99", "drifting-0.99"] {
        let median = |pick: fn(&(&str, f64, f64, f64)) -> f64| {
            let mut v: Vec<f64> = ratios.iter().filter(|r| r.0 == name).map(pick).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{name:<14} mean {:.3}  p99 {:.3}  p99.9 {:.3}",
            median(|r| r.1),
            median(|r| r.2),
            median(|r| r.3)
        );
    }
    Ok(())
}
