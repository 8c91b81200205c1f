//! A load test of a three-tier cache against real Redis and PostgreSQL: the classic
//! scenarios, each printing throughput, latency percentiles, hit ratio per tier,
//! database queries per request (the load saved) and errors.
//!
//! ```text
//! cargo run --release --features postgres --example loadtest -- --scenario load --duration 10s
//! cargo run --release --features postgres --example loadtest -- --scenario all --json
//! cargo run --release --features postgres --example loadtest -- --scenario soak --duration 30m
//! cargo run --release --features postgres --example loadtest -- --redis redis://host:6379/ --database postgres://...
//! ```
//!
//! Without `--redis` / `--database` it starts a redis-server and a PostgreSQL of its
//! own (as `scripts/install-deps` installs them). Scenarios:
//!
//! - `smoke`: 4 tasks.
//! - `load`: 32 tasks.
//! - `stress`: 256 tasks.
//! - `spike`: from 4 tasks up to 128 and back down, in steps.
//! - `soak`: 32 tasks, meant for long durations.
//! - `chaos`: 32 tasks while Redis is frozen (SIGSTOP) for a sixth of the run, then
//!   killed and restarted empty; needs the servers of its own.
//!
//! Every task reads keys drawn from a Zipf(0.99) distribution over 100k rows; 1% of
//! its operations update the row in PostgreSQL and then invalidate the key.

#[path = "../benches/support/postgres_server.rs"]
mod postgres;
#[path = "../benches/support/redis_server.rs"]
mod redis;
#[path = "../benches/support/zipf.rs"]
mod zipf;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Config, Pool, Runtime};
use tiered::{BoxError, PgLoader, TieredCache};
use tokio_postgres::NoTls;
use zipf::Zipf;

const ROWS: usize = 100_000;
const WRITE_SHARE: f64 = 0.01;

type Cache = TieredCache<i64, Arc<String>>;

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Smoke,
    Load,
    Stress,
    Spike,
    Soak,
    Chaos,
}

impl Scenario {
    const ALL: [Scenario; 6] = [
        Scenario::Smoke,
        Scenario::Load,
        Scenario::Stress,
        Scenario::Spike,
        Scenario::Soak,
        Scenario::Chaos,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Smoke => "smoke",
            Scenario::Load => "load",
            Scenario::Stress => "stress",
            Scenario::Spike => "spike",
            Scenario::Soak => "soak",
            Scenario::Chaos => "chaos",
        }
    }

    /// The most tasks it runs at once.
    fn tasks(self) -> usize {
        match self {
            Scenario::Smoke => 4,
            Scenario::Stress => 256,
            Scenario::Spike => 128,
            _ => 32,
        }
    }

    /// How many tasks run at `elapsed` of `total`.
    fn active(self, elapsed: Duration, total: Duration) -> usize {
        if self != Scenario::Spike {
            return self.tasks();
        }
        // 4 → 128 → 4 in ten steps: up for the first half, down for the second.
        let step = ((elapsed.as_secs_f64() / total.as_secs_f64()) * 10.0).min(9.0) as usize;
        let level = if step < 5 { step } else { 9 - step };
        [4, 16, 32, 64, 128][level]
    }
}

struct Args {
    scenarios: Vec<Scenario>,
    duration: Duration,
    json: bool,
    redis: Option<String>,
    database: Option<String>,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        scenarios: vec![Scenario::Load],
        duration: Duration::from_secs(5),
        json: false,
        redis: None,
        database: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--scenario" => {
                let name = value()?;
                args.scenarios = if name == "all" {
                    Scenario::ALL.to_vec()
                } else {
                    let scenario = Scenario::ALL.into_iter().find(|s| s.name() == name);
                    vec![scenario.ok_or_else(|| format!("unknown scenario {name}"))?]
                };
            }
            "--duration" => args.duration = parse_duration(&value()?)?,
            "--json" => args.json = true,
            "--redis" => args.redis = Some(value()?),
            "--database" => args.database = Some(value()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// `500ms`, `10s`, `30m`, `2h`.
fn parse_duration(text: &str) -> Result<Duration, BoxError> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse()?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("bad duration {text}").into()),
    })
}

/// Latencies in log-linear buckets (8 per power of two: within 9%), so that a
/// long soak keeps a fixed size.
struct Histogram {
    counts: Vec<u64>,
    max: Duration,
}

impl Histogram {
    const SUB: f64 = 8.0;

    fn new() -> Self {
        Histogram {
            counts: vec![0; 64 * 8],
            max: Duration::ZERO,
        }
    }

    fn record(&mut self, d: Duration) {
        let ns = d.as_nanos().max(1) as f64;
        let last = self.counts.len() - 1;
        let bucket = (ns.log2() * Self::SUB) as usize;
        self.counts[bucket.min(last)] += 1;
        self.max = self.max.max(d);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max = self.max.max(other.max);
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn quantile(&self, q: f64) -> Duration {
        let want = (self.total() as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= want && *count > 0 {
                let upper = 2f64.powf((bucket + 1) as f64 / Self::SUB);
                return Duration::from_nanos(upper as u64).min(self.max);
            }
        }
        self.max
    }
}

struct Servers {
    redis_url: String,
    database_url: String,
    redis: Option<redis::RedisServer>,
    _postgres: Option<postgres::PostgresServer>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let own_redis = args.redis.is_none();
    let mut servers = {
        let redis = own_redis.then(redis::RedisServer::start);
        let pg = args
            .database
            .is_none()
            .then(postgres::PostgresServer::start);
        Servers {
            redis_url: args
                .redis
                .clone()
                .unwrap_or_else(|| redis.as_ref().map(|r| r.url.clone()).unwrap_or_default()),
            database_url: args
                .database
                .clone()
                .unwrap_or_else(|| pg.as_ref().map(|p| p.url.clone()).unwrap_or_default()),
            redis,
            _postgres: pg,
        }
    };
    let pool = pool(&servers.database_url)?;
    pool.get()
        .await?
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS tiered_loadtest (id bigint PRIMARY KEY, payload text NOT NULL);
             INSERT INTO tiered_loadtest SELECT i, repeat('x', 200) FROM generate_series(1, {ROWS}) i
             ON CONFLICT DO NOTHING;"
        ))
        .await?;
    if !args.json {
        println!(
            "{:<7} {:>6} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>10} {:>8} {:>7}",
            "scenario",
            "secs",
            "requests",
            "req/s",
            "p50 µs",
            "p95 µs",
            "p99 µs",
            "max ms",
            "L1 hit",
            "L2 hit",
            "db q/req",
            "saved",
            "errors"
        );
    }
    for scenario in args.scenarios.iter().copied() {
        if scenario == Scenario::Chaos && !own_redis {
            eprintln!("chaos needs a redis-server of its own: skipped (drop --redis)");
            continue;
        }
        let report = run(scenario, args.duration, &mut servers, &pool).await?;
        if args.json {
            println!("{}", report.json());
        } else {
            report.print();
        }
    }
    Ok(())
}

fn pool(url: &str) -> Result<Pool, BoxError> {
    let mut config = Config::new();
    config.url = Some(url.to_owned());
    config.pool = Some(deadpool_postgres::PoolConfig::new(32));
    Ok(config.create_pool(Some(Runtime::Tokio1), NoTls)?)
}

fn cache(scenario: Scenario, redis_url: &str, pool: &Pool) -> Result<Cache, BoxError> {
    let loader = PgLoader::new(
        pool.clone(),
        "SELECT id, payload FROM tiered_loadtest WHERE id = $1",
        |row| Ok((row.try_get(0)?, Arc::new(row.try_get::<_, String>(1)?))),
    )
    .many("SELECT id, payload FROM tiered_loadtest WHERE id = ANY($1)");
    Ok(
        TieredCache::builder(format!("loadtest-{}", scenario.name()))
            .l1_max_entries(10_000)
            .l1_ttl(Duration::from_secs(60))
            .l2_redis(redis_url)
            .l2_ttl(Duration::from_secs(600))
            .loader(loader)
            .build()?,
    )
}

struct Report {
    scenario: Scenario,
    elapsed: Duration,
    latency: Histogram,
    errors: u64,
    stats: tiered::Stats,
}

impl Report {
    fn requests(&self) -> u64 {
        self.latency.total()
    }

    fn queries_per_request(&self) -> f64 {
        self.stats.loads as f64 / self.requests().max(1) as f64
    }

    fn print(&self) {
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{:<7} {:>6.1} {:>10} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>8.2} {:>7.3} {:>7.3} {:>10.4} {:>7.1}% {:>7}",
            self.scenario.name(),
            self.elapsed.as_secs_f64(),
            self.requests(),
            self.requests() as f64 / self.elapsed.as_secs_f64(),
            micros(self.latency.quantile(0.50)),
            micros(self.latency.quantile(0.95)),
            micros(self.latency.quantile(0.99)),
            self.latency.max.as_secs_f64() * 1e3,
            self.stats.l1.hit_ratio(),
            self.stats.l2.hit_ratio(),
            self.queries_per_request(),
            (1.0 - self.queries_per_request()) * 100.0,
            self.errors,
        );
        if self.scenario == Scenario::Chaos {
            println!(
                "        breaker opened {} time(s), L2 errors {}, now {:?}",
                self.stats.breaker_opened, self.stats.l2_errors, self.stats.breaker
            );
        }
    }

    fn json(&self) -> String {
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        serde_json::json!({
            "scenario": self.scenario.name(),
            "seconds": self.elapsed.as_secs_f64(),
            "requests": self.requests(),
            "requests_per_second": self.requests() as f64 / self.elapsed.as_secs_f64(),
            "latency_us": {
                "p50": micros(self.latency.quantile(0.50)),
                "p95": micros(self.latency.quantile(0.95)),
                "p99": micros(self.latency.quantile(0.99)),
                "max": micros(self.latency.max),
            },
            "l1_hit_ratio": self.stats.l1.hit_ratio(),
            "l2_hit_ratio": self.stats.l2.hit_ratio(),
            "database_queries": self.stats.loads,
            "database_queries_per_request": self.queries_per_request(),
            "errors": self.errors,
            "breaker_opened": self.stats.breaker_opened,
            "l2_errors": self.stats.l2_errors,
        })
        .to_string()
    }
}

async fn run(
    scenario: Scenario,
    duration: Duration,
    servers: &mut Servers,
    pool: &Pool,
) -> Result<Report, BoxError> {
    let cache = cache(scenario, &servers.redis_url, pool)?;
    cache.invalidate_all().await;
    let zipf = Arc::new(Zipf::new(ROWS, 0.99));
    let stop = Arc::new(AtomicBool::new(false));
    let active = Arc::new(AtomicUsize::new(scenario.active(Duration::ZERO, duration)));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(Histogram::new()));
    let start = Instant::now();
    let workers: Vec<_> = (0..scenario.tasks())
        .map(|index| {
            let (cache, pool, zipf) = (cache.clone(), pool.clone(), zipf.clone());
            let (stop, active, done) = (stop.clone(), active.clone(), done.clone());
            let (errors, latency) = (errors.clone(), latency.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(index as u64);
                let mut mine = Histogram::new();
                while !stop.load(Ordering::Relaxed) {
                    if index >= active.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    let key = zipf.sample(&mut rng) as i64 + 1;
                    let began = Instant::now();
                    let ok = if rng.f64() < WRITE_SHARE {
                        write(&cache, &pool, key, &mut rng).await
                    } else {
                        matches!(cache.get(&key).await, Ok(Some(_)))
                    };
                    mine.record(began.elapsed());
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                latency.lock().expect("histogram").merge(&mine);
            })
        })
        .collect();
    let mut froze = false;
    let mut killed = false;
    while start.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = start.elapsed();
        active.store(scenario.active(elapsed, duration), Ordering::Relaxed);
        if scenario == Scenario::Chaos {
            if let Some(redis) = servers.redis.as_mut() {
                let at = elapsed.as_secs_f64() / duration.as_secs_f64();
                if !froze && at >= 1.0 / 3.0 {
                    froze = true;
                    redis.signal("-STOP");
                    eprintln!("\n[chaos] Redis frozen");
                    tokio::time::sleep(duration / 6).await;
                    redis.signal("-CONT");
                    eprintln!("[chaos] Redis thawed");
                }
                if !killed && at >= 2.0 / 3.0 {
                    killed = true;
                    redis.restart();
                    eprintln!("[chaos] Redis killed and restarted empty");
                }
            }
        }
        let n = done.load(Ordering::Relaxed);
        eprint!(
            "\r[{}] {:>5.1}s  requests {:>10}  req/s {:>9.0}  tasks {:>3}  errors {}   ",
            scenario.name(),
            elapsed.as_secs_f64(),
            n,
            n as f64 / elapsed.as_secs_f64(),
            active.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        );
        let _ = std::io::stderr().flush();
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    let elapsed = start.elapsed();
    eprintln!();
    let latency = std::mem::replace(&mut *latency.lock().expect("histogram"), Histogram::new());
    Ok(Report {
        scenario,
        elapsed,
        latency,
        errors: errors.load(Ordering::Relaxed),
        stats: cache.stats(),
    })
}

/// An update of `key`'s row, then its invalidation.
async fn write(cache: &Cache, pool: &Pool, key: i64, rng: &mut fastrand::Rng) -> bool {
    let Ok(client) = pool.get().await else {
        return false;
    };
    let payload: String = std::iter::repeat_with(|| rng.alphanumeric())
        .take(200)
        .collect();
    let updated = client
        .execute(
            "UPDATE tiered_loadtest SET payload = $2 WHERE id = $1",
            &[&key, &payload],
        )
        .await;
    cache.invalidate(&key).await;
    updated.is_ok()
}
