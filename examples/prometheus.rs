//! A small service loop that exposes the cache's metrics to Prometheus.
//!
//! Run: `cargo run --example prometheus --features metrics -- [--seconds N] [--port P]`,
//! then `curl http://127.0.0.1:9000/metrics` (or point Prometheus at it and import
//! `docs/grafana-dashboard.json` into Grafana). No servers needed: L1 and a loader
//! that stands in for a database; add `.l2_redis(url)` for the Redis panels.

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use tiered::{BoxError, TieredCache};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (seconds, port) = (arg("--seconds", 10), arg("--port", 9000));
    // The recorder must be installed before the cache registers its metrics.
    PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port as u16))
        .set_buckets(&[0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0])?
        .install()?;
    let products = TieredCache::<u64, String>::builder("products")
        .l1_max_entries(1_000)
        .metrics()
        .loader_fn(|id: u64| async move {
            tokio::time::sleep(Duration::from_millis(2)).await; // a query
            Ok::<_, BoxError>((!id.is_multiple_of(10)).then(|| format!("product {id}")))
        })
        .build()?;
    println!("metrics on http://127.0.0.1:{port}/metrics for {seconds} s");
    let start = Instant::now();
    let mut requests = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        // Skewed traffic: low ids are hot.
        let id = (fastrand::f64().powi(3) * 5_000.0) as u64;
        products.get(&id).await?;
        requests += 1;
        if requests.is_multiple_of(500) {
            products.invalidate(&fastrand::u64(0..100)).await; // an update
        }
        if requests.is_multiple_of(100) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let stats = products.stats();
    println!(
        "{requests} requests, L1 hit ratio {:.3}, {} loads",
        stats.l1.hit_ratio(),
        stats.loads
    );
    Ok(())
}
