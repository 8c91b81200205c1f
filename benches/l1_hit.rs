//! L1 hit: `TieredCache::get` against a bare `moka::future::Cache::get`, same keys,
//! same values, same run.
//!
//! 100k entries with `String` keys `user:{id}` and `Arc<User>` values; each
//! iteration reads the next of 1M pre-built uniformly random keys (all present).
//! Both caches are read through `now_or_never`, so no executor cost is measured.
//! With `--features metrics`, a third cache reports every hit to a Prometheus
//! recorder (metrics-exporter-prometheus) through `MetricsObserver`.
//! `scripts/bench-ratio l1_hit` prints the ratios to bare moka.

#[path = "support/users.rs"]
mod users;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;

const LOOKUPS: usize = 1 << 20;

fn l1_hit(c: &mut Criterion) {
    let keys = users::lookups(LOOKUPS);
    // Each cache is filled in one contiguous phase, so both have the same kind of
    // heap layout; both stay alive for both measurements.
    let bare = users::bare();
    let tiered = users::tiered(|b| b);

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
        let measured = users::tiered(|b| b.observer(observer));
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
