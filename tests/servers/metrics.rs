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

/// Every event of the cache moves its metric (real Redis for the L2 and bus ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_moves_its_metric() {
    let mut redis = crate::support::Redis::start_own(&[]);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let observer = metrics::with_local_recorder(&recorder, || MetricsObserver::new("events"));
    let build = |observer: Option<MetricsObserver>| {
        let builder = TieredCache::<String, String>::builder("events")
            .l2_redis(redis.url())
            .l2_max_value_bytes(1024)
            .l2_breaker(100, std::time::Duration::from_secs(1))
            .loader_fn(|k: String| async move { Ok::<_, BoxError>((k != "none").then_some(k)) });
        match observer {
            Some(o) => builder.observer(o),
            None => builder,
        }
        .build()
        .unwrap()
    };
    let cache = build(Some(observer));
    let other = build(None);

    cache.insert("a".into(), "x".into()).await; // inserts
    cache.get("none").await.unwrap();
    cache.get("none").await.unwrap(); // negative_hits
    cache.insert("big".into(), "y".repeat(2000)).await; // l2_oversized
    other.get("bad").await.unwrap();
    redis.cli(&["set", &other.l2_key("bad").unwrap(), "garbage"]);
    cache.get("bad").await.unwrap(); // l2_corrupt
    other.get("warm").await.unwrap();
    other.invalidate("a").await; // invalidations_received (on `cache`)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cache.stats().invalidations_received == 0 {
        assert!(std::time::Instant::now() < deadline, "no bus message");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    redis.cli(&["ACL", "SETUSER", "default", "-publish"]);
    // bus_publish_errors: the deletion lands, its message does not (kept).
    cache.invalidate("warm").await;
    redis.cli(&["ACL", "SETUSER", "default", "-scan"]);
    cache.invalidate_all_and_reclaim().await; // the walk is owed (published when it lands)
    redis.cli(&["ACL", "SETUSER", "default", "+publish", "+scan"]);
    cache.get("after").await.unwrap(); // the owed walk: l2_namespace_clears
    redis.restart(); // bus_resubscribes
    while cache.stats().bus_resubscribes == 0 {
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let stats = cache.stats();
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str| -> u64 {
        snapshot
            .iter()
            .find(|(key, ..)| key.kind() == MetricKind::Counter && key.key().name() == name)
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .unwrap_or_else(|| panic!("{name} was not registered"))
    };
    for (name, stat) in [
        ("tiered_inserts_total", stats.inserts),
        ("tiered_negative_hits_total", stats.negative_hits),
        ("tiered_l2_oversized_total", stats.l2_oversized),
        ("tiered_l2_corrupt_total", stats.l2_corrupt),
        (
            "tiered_invalidations_received_total",
            stats.invalidations_received,
        ),
        ("tiered_bus_publish_errors_total", stats.bus_publish_errors),
        (
            "tiered_l2_namespace_clears_total",
            stats.l2_namespace_clears,
        ),
        ("tiered_bus_resubscribes_total", stats.bus_resubscribes),
    ] {
        assert!(stat >= 1, "{name}: the event did not happen: {stats:?}");
        assert_eq!(counter(name), stat, "{name} against stats()");
    }
}

/// Every metric `docs/grafana-dashboard.json` queries is one `MetricsObserver`
/// registers (histogram series by their base name).
#[test]
fn every_metric_the_dashboard_queries_exists() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _observer = metrics::with_local_recorder(&recorder, || MetricsObserver::new("dash"));
    let registered: std::collections::BTreeSet<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, ..)| key.key().name().to_owned())
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/grafana-dashboard.json"))
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut queried = std::collections::BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("tiered_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            queried.insert(base.to_owned());
        }
    }
    let missing: Vec<_> = queried.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "queried but never registered: {missing:?}"
    );
    assert!(queried.len() >= 14, "{queried:?}");
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    ("query", serde_json::Value::String(query)) => out.push(query.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The freshness events (stale served, refreshes, fail-safe, soft timeouts,
/// lease waits, warming progress) move their metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_events_move_their_metrics() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    let redis = crate::support::Redis::start();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (observer, leased_observer) = metrics::with_local_recorder(&recorder, || {
        (
            MetricsObserver::new("fresh"),
            MetricsObserver::new("leased"),
        )
    });
    let clock = tiered::ManualClock::new();
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    // After the first round of loads, "fail" fails and "slow" takes 10 s.
    let cache = TieredCache::<String, String>::builder("fresh")
        .observer(observer)
        .clock(clock.clone())
        .jitter(0.0)
        .l1_ttl(Duration::from_secs(10))
        .stale_while_revalidate(Duration::from_secs(5))
        .fail_safe(Duration::from_secs(3600))
        .soft_timeout(Duration::from_millis(20))
        .loader_fn(move |key: String| {
            let later = counted.fetch_add(1, Ordering::SeqCst) >= 3;
            async move {
                match key.as_str() {
                    "fail" if later => Err::<Option<String>, BoxError>("down".into()),
                    "slow" if later => {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Ok(Some(key))
                    }
                    _ => Ok(Some(key)),
                }
            }
        })
        .build()
        .unwrap();
    for key in ["a", "fail", "slow"] {
        cache.get(&key.to_owned()).await.unwrap();
    }
    clock.advance(Duration::from_secs(12));
    cache.get("a").await.unwrap(); // stale served, refresh started
    clock.advance(Duration::from_secs(10));
    cache.get("fail").await.unwrap(); // fail-safe, stale served
    cache.get("slow").await.unwrap(); // soft timeout, stale served
    cache.warm(&["w1".to_owned(), "w2".to_owned()], 1).await; // warm progress

    let holder = TieredCache::<String, String>::builder("leased")
        .l2_redis(redis.url())
        .l2_prefix("metrics-lease")
        .fleet_single_flight(Duration::from_secs(5))
        .loader_fn(|key: String| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, BoxError>(Some(key))
        })
        .build()
        .unwrap();
    let waiter = TieredCache::<String, String>::builder("leased")
        .observer(leased_observer)
        .l2_redis(redis.url())
        .l2_prefix("metrics-lease")
        .fleet_single_flight(Duration::from_secs(5))
        .loader_fn(|key: String| async move { Ok::<_, BoxError>(Some(key)) })
        .build()
        .unwrap();
    holder.invalidate_all().await;
    let held = tokio::spawn({
        let holder = holder.clone();
        async move { holder.get("k").await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while redis.cli(&["keys", "*#lease:*"]).trim().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no lease taken");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    waiter.get("k").await.unwrap(); // lease wait
    held.await.unwrap().unwrap();

    let (stats, leased) = (cache.stats(), waiter.stats());
    let snapshot = snapshotter.snapshot().into_vec();
    for (name, cache, stat) in [
        ("tiered_stale_served_total", "fresh", stats.stale_served),
        ("tiered_refreshes_total", "fresh", stats.refreshes),
        ("tiered_fail_safe_total", "fresh", stats.fail_safe),
        ("tiered_soft_timeouts_total", "fresh", stats.soft_timeouts),
        ("tiered_lease_waits_total", "leased", leased.lease_waits),
    ] {
        assert!(stat >= 1, "{name}: the event did not happen");
        assert_eq!(
            metric(&snapshot, name, cache),
            &DebugValue::Counter(stat),
            "{name}"
        );
    }
    assert_eq!(stats.stale_served, 3);
    assert!(matches!(
        metric(&snapshot, "tiered_warm_progress", "fresh"),
        DebugValue::Gauge(g) if g.into_inner() == 1.0
    ));
}

type Snapshot = [(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)];

/// The value of metric `name` labelled `cache`.
fn metric<'a>(snapshot: &'a Snapshot, name: &str, cache: &str) -> &'a DebugValue {
    snapshot
        .iter()
        .find(|(key, ..)| {
            key.key().name() == name
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "cache" && l.value() == cache)
        })
        .map(|(.., value)| value)
        .unwrap_or_else(|| panic!("{name} was not registered"))
}

/// An adaptive L1's switch moves `tiered_l1_policy_switches_total` for the
/// policy it switched to, and only that one.
#[tokio::test]
async fn a_policy_switch_moves_its_metric() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let observer = metrics::with_local_recorder(&recorder, || MetricsObserver::new("switching"));
    let cache = TieredCache::<u64, u64>::builder("switching")
        .observer(observer)
        .l1_max_entries(1000)
        .l1_eviction(tiered::L1Eviction::Adaptive)
        .build()
        .unwrap();
    // 200 hot keys that move to new keys every 2,000 reads: LRU's traffic.
    let mut rng = fastrand::Rng::with_seed(5);
    for i in 0..60_000u64 {
        let key = (i / 2_000) * 1_000_000 + rng.u64(0..200);
        cache
            .get_with(&key, async { Ok::<_, BoxError>(Some(key)) })
            .await
            .unwrap();
    }
    let stats = cache.stats();
    assert!(stats.l1_policy_switches >= 1, "no switch");
    let snapshot = snapshotter.snapshot().into_vec();
    let switches = |policy: &str| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.key().name() == "tiered_l1_policy_switches_total"
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "policy" && l.value() == policy)
            })
            .map(|(.., value)| value)
            .unwrap_or_else(|| panic!("no switch counter for {policy}"))
    };
    assert_eq!(
        switches("lru"),
        &DebugValue::Counter(stats.l1_policy_switches)
    );
    assert_eq!(switches("tiny_lfu"), &DebugValue::Counter(0));
}
