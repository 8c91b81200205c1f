//! L1 hit: `TieredCache::get` against a bare `moka::future::Cache::get`, same keys,
//! same values, same run.
//!
//! 100k entries with `String` keys `user:{id}` and `Arc<User>` values; each
//! iteration reads the next of 1M pre-built uniformly random keys (all present).
//! Both caches are read through `now_or_never`, so no executor cost is measured.
//! With `--features metrics`, a third cache reports every hit to a Prometheus
//! recorder (metrics-exporter-prometheus) through `MetricsObserver`.
//! `scripts/bench-ratio l1_hit` prints the ratios to bare moka.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use tiered::TieredCache;

const ENTRIES: u64 = 100_000;
const LOOKUPS: usize = 1 << 20;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
}

fn key(id: u64) -> String {
    format!("user:{id}")
}

fn user(id: u64) -> Arc<User> {
    Arc::new(User {
        id,
        name: format!("user {id}"),
        email: format!("user{id}@example.com"),
    })
}

fn l1_hit(c: &mut Criterion) {
    let mut rng = fastrand::Rng::with_seed(7);
    let keys: Vec<String> = (0..LOOKUPS).map(|_| key(rng.u64(0..ENTRIES))).collect();

    // Each cache is filled in one contiguous phase, so both have the same kind of
    // heap layout; both stay alive for both measurements.
    let bare: moka::future::Cache<String, Arc<User>> = moka::future::Cache::builder()
        .max_capacity(2 * ENTRIES)
        .build();
    for id in 0..ENTRIES {
        bare.insert(key(id), user(id)).now_or_never().unwrap();
    }
    bare.run_pending_tasks().now_or_never().unwrap();
    let tiered = TieredCache::<String, Arc<User>>::builder("bench")
        .l1_max_entries(2 * ENTRIES)
        .build()
        .expect("build");
    for id in 0..ENTRIES {
        tiered.insert(key(id), user(id)).now_or_never().unwrap();
    }
    tiered.run_pending_tasks().now_or_never().unwrap();

    let mut group = c.benchmark_group("l1_hit");
    group.bench_function("bare_moka", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % LOOKUPS;
            let hit = bare.get(&keys[i]).now_or_never().unwrap();
            black_box(hit.expect("present"))
        })
    });
    group.bench_function("tiered", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % LOOKUPS;
            let hit = tiered.get(&keys[i]).now_or_never().unwrap();
            black_box(hit.expect("no error").expect("present"))
        })
    });
    #[cfg(feature = "metrics")]
    {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let observer =
            metrics::with_local_recorder(&recorder, || tiered::MetricsObserver::new("bench"));
        let measured = TieredCache::<String, Arc<User>>::builder("bench")
            .l1_max_entries(2 * ENTRIES)
            .observer(observer)
            .build()
            .expect("build");
        for id in 0..ENTRIES {
            measured.insert(key(id), user(id)).now_or_never().unwrap();
        }
        measured.run_pending_tasks().now_or_never().unwrap();
        group.bench_function("tiered_prometheus", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % LOOKUPS;
                let hit = measured.get(&keys[i]).now_or_never().unwrap();
                black_box(hit.expect("no error").expect("present"))
            })
        });
        let rendered = recorder.handle().render();
        assert!(
            rendered.contains("tiered_hits_total"),
            "the recorder saw the hits"
        );
    }
    group.finish();
}

criterion_group!(benches, l1_hit);
criterion_main!(benches);
