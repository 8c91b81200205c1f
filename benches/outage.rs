//! Reads during and after Redis outages, on a redis-server of the bench's own.
//!
//! 1. `latency`: read latency while Redis is frozen (SIGSTOP): before the breaker
//!    opens (each read pays the L2 timeout), after it opens (reads skip L2), next
//!    to a bare loader call. L1 is off and every key is cold.
//! 2. `recovery`, with the default breaker settings: Redis frozen for 1 s, 5 s and
//!    20 s, and killed and restarted empty; for each, the time from Redis's return
//!    to the breaker closing and to the first read served from Redis. Then the
//!    database queries during a 5 s outage and the 30 s after it, with the
//!    defaults and with the first probe only after a 30 s cool-down (what the
//!    breaker did, by default, before it probed in the background).
//!
//! Run: `cargo bench --bench outage` (both), or `-- latency` / `-- recovery`.

#[path = "support/redis_server.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiered::{BoxError, BreakerState, TieredCache};

const TIMEOUT: Duration = Duration::from_millis(100);
const FAILURES: u32 = 5;
const READS_OPEN: u64 = 10_000;

async fn load(key: u64) -> Result<Option<u64>, BoxError> {
    Ok(Some(std::hint::black_box(key * 2)))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let only = |part: &str| {
        let named = ["latency", "recovery"];
        !args.iter().any(|a| named.contains(&a.as_str())) || args.iter().any(|a| a == part)
    };
    if only("latency") {
        latency().await?;
    }
    if only("recovery") {
        recovery().await?;
    }
    Ok(())
}

async fn latency() -> Result<(), BoxError> {
    let server = support::RedisServer::start();
    let cache = TieredCache::<u64, u64>::builder("outage")
        .l1_max_entries(0)
        .l2_redis(&server.url)
        .l2_timeout(TIMEOUT)
        .l2_breaker(FAILURES, Duration::from_secs(3600))
        .loader_fn(load)
        .build()?;
    let mut key = 0;
    let mut read = |cache: &TieredCache<u64, u64>| {
        key += 1;
        let cache = cache.clone();
        let k = key;
        async move {
            let start = Instant::now();
            assert_eq!(cache.get(&k).await.expect("reads never fail"), Some(k * 2));
            start.elapsed()
        }
    };
    let mut healthy: Vec<Duration> = Vec::new();
    for _ in 0..1000 {
        healthy.push(read(&cache).await);
    }

    server.signal("-STOP");
    let mut closed = Vec::new();
    while cache.stats().breaker != BreakerState::Open {
        closed.push(read(&cache).await);
    }
    let mut open = Vec::new();
    for _ in 0..READS_OPEN {
        open.push(read(&cache).await);
    }
    server.signal("-CONT");

    let mut bare = Vec::new();
    for k in 0..READS_OPEN {
        let start = Instant::now();
        load(k).await?;
        bare.push(start.elapsed());
    }

    let row = |name: &str, samples: &mut Vec<Duration>| {
        let n = samples.len();
        let (p50, p99) = support::percentiles(samples);
        println!(
            "{name:<36} n {n:>6}   p50 {:>10.1} µs   p99 {:>10.1} µs",
            support::micros(p50),
            support::micros(p99)
        );
    };
    println!("outage: L2 timeout {TIMEOUT:?}, breaker opens after {FAILURES} failures");
    row("redis healthy (L2 miss, then load)", &mut healthy);
    row("redis frozen, breaker closed", &mut closed);
    row("redis frozen, breaker open", &mut open);
    row("bare loader call", &mut bare);
    Ok(())
}

const KEYS: u64 = 1_000;

/// A cache with the default breaker settings (or the first probe at `probe_delay`),
/// L1 off, over `KEYS` keys filled into L2, and readers reading them in turn.
struct Readers {
    cache: TieredCache<u64, u64>,
    loads: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Readers {
    async fn start(url: &str, name: &str, breaker: Option<(Duration, Duration)>) -> Readers {
        let loads = Arc::new(AtomicU64::new(0));
        let counter = loads.clone();
        let builder = TieredCache::<u64, u64>::builder(name)
            .l1_max_entries(0)
            .l2_redis(url)
            .loader_fn(move |k: u64| {
                counter.fetch_add(1, Ordering::Relaxed);
                load(k)
            });
        let builder = match breaker {
            Some((cooldown, delay)) => builder.l2_breaker(5, cooldown).l2_probe_delay(delay),
            None => builder,
        };
        let cache = builder.build().expect("build");
        for k in 0..KEYS {
            cache.get(&k).await.expect("fill");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let tasks = (0..8)
            .map(|task| {
                let (cache, stop, errors) = (cache.clone(), stop.clone(), errors.clone());
                tokio::spawn(async move {
                    let mut k = task;
                    while !stop.load(Ordering::Relaxed) {
                        k = (k + 8) % KEYS;
                        if cache.get(&k).await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            })
            .collect();
        Readers {
            cache,
            loads,
            stop,
            errors,
            tasks,
        }
    }

    /// From now until the breaker is closed and a read was served from Redis:
    /// (time to closed, time to the first L2 hit).
    async fn until_recovered(&self) -> (Duration, Duration) {
        let start = Instant::now();
        let hits = self.cache.stats().l2.hits;
        let mut closed = None;
        loop {
            let stats = self.cache.stats();
            if closed.is_none() && stats.breaker == BreakerState::Closed {
                closed = Some(start.elapsed());
            }
            if stats.l2.hits > hits {
                return (closed.unwrap_or(start.elapsed()), start.elapsed());
            }
            assert!(start.elapsed() < Duration::from_secs(120), "no recovery");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn until_open(&self) {
        while self.cache.stats().breaker != BreakerState::Open {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("reader");
        }
        self.errors.load(Ordering::Relaxed)
    }
}

async fn recovery() -> Result<(), BoxError> {
    let mut server = support::RedisServer::start();
    println!("recovery with the default breaker settings (8 readers, L1 off, {KEYS} keys):");
    let readers = Readers::start(&server.url, "recovery", None).await;
    for outage in [
        "frozen 1 s",
        "frozen 5 s",
        "frozen 20 s",
        "killed, restarted empty",
    ] {
        match outage {
            "killed, restarted empty" => server.kill(),
            _ => server.signal("-STOP"),
        }
        readers.until_open().await;
        match outage {
            "frozen 1 s" => tokio::time::sleep(Duration::from_secs(1)).await,
            "frozen 5 s" => tokio::time::sleep(Duration::from_secs(5)).await,
            "frozen 20 s" => tokio::time::sleep(Duration::from_secs(20)).await,
            _ => tokio::time::sleep(Duration::from_secs(5)).await,
        }
        match outage {
            "killed, restarted empty" => server.restart(),
            _ => server.signal("-CONT"),
        }
        let (closed, hit) = readers.until_recovered().await;
        println!(
            "  {outage:<26} Redis back -> breaker closed {:>7.3} s, first read from Redis {:>7.3} s",
            closed.as_secs_f64(),
            hit.as_secs_f64()
        );
    }
    let errors = readers.stop().await;
    println!("  read errors throughout: {errors}");

    println!("database queries (loads) during a 5 s outage (Redis frozen) and the 30 s after:");
    let old = Duration::from_secs(30);
    for (label, delay) in [
        ("defaults (probes from 0.5 s)", None),
        ("before: first probe after 30 s", Some((old, old))),
    ] {
        let name = if delay.is_some() { "before" } else { "after" };
        let readers = Readers::start(&server.url, name, delay).await;
        let base = readers.loads.load(Ordering::Relaxed);
        server.signal("-STOP");
        tokio::time::sleep(Duration::from_secs(5)).await;
        server.signal("-CONT");
        let during = readers.loads.load(Ordering::Relaxed) - base;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let after = readers.loads.load(Ordering::Relaxed) - base - during;
        let reads = readers.cache.stats().l1.misses;
        let errors = readers.stop().await;
        println!(
            "  {label:<34} during {during:>7}   next 30 s {after:>7}   reads in all {reads:>8}   errors {errors}"
        );
    }
    Ok(())
}
