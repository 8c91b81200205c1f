//! Read latency while Redis is frozen (SIGSTOP): before the breaker opens (each
//! read pays the L2 timeout), after it opens (reads skip L2), next to a bare
//! loader call. L1 is off and every key is cold, so every read reaches L2's turn.
//! Run: `cargo bench --bench outage` (starts its own redis-server).

#[path = "support/redis_server.rs"]
mod support;

use std::time::{Duration, Instant};

use tiered::{BoxError, BreakerState, TieredCache};

const TIMEOUT: Duration = Duration::from_millis(100);
const FAILURES: u32 = 5;
const READS_OPEN: u64 = 10_000;

async fn load(key: u64) -> Result<Option<u64>, BoxError> {
    Ok(Some(std::hint::black_box(key * 2)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
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
