//! The `metrics` facade adapter, read back through metrics-util's debugging recorder.

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use tiered::{BoxError, MetricsObserver, TieredCache};

#[tokio::test]
async fn hits_misses_and_loads_reach_the_recorder() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let observer = metrics::with_local_recorder(&recorder, || MetricsObserver::new("users"));
    let cache = TieredCache::<u64, u64>::builder("users")
        .observer(observer)
        .loader_fn(|k: u64| async move { Ok::<_, BoxError>((k > 0).then_some(k)) })
        .build()
        .unwrap();
    cache.get(&1).await.unwrap(); // miss, load (value)
    cache.get(&1).await.unwrap(); // hit
    cache.get(&0).await.unwrap(); // miss, load (absent)
    cache.invalidate(&1).await;

    // One snapshot: taking one resets the debugging recorder's counters.
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str, label: (&str, &str)| -> u64 {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.kind() == MetricKind::Counter
                    && key.key().name() == name
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == label.0 && l.value() == label.1)
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .unwrap_or_else(|| panic!("{name}{label:?} was not registered"))
    };
    assert_eq!(counter("tiered_hits_total", ("tier", "l1")), 1);
    assert_eq!(counter("tiered_misses_total", ("tier", "l1")), 2);
    assert_eq!(counter("tiered_loads_total", ("outcome", "value")), 1);
    assert_eq!(counter("tiered_loads_total", ("outcome", "absent")), 1);
    assert_eq!(counter("tiered_loads_total", ("outcome", "error")), 0);
    assert_eq!(counter("tiered_invalidations_total", ("cache", "users")), 1);
}
