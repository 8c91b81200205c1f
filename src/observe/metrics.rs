//! An [`Observer`] that reports to the [`metrics`] facade.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use crate::observe::{BreakerState, LoadOutcome, Observer, Tier};
use crate::policy::L1Eviction;

/// Reports a cache's events to the `metrics` facade, under the names of
/// `docs/METRICS.md`, each labelled `cache = <name>`.
///
/// Handles are registered once, when the observer is made, so reporting a hit does
/// not format or hash label strings. Install your recorder (e.g.
/// `metrics-exporter-prometheus`) before building the cache.
#[derive(Debug)]
pub struct MetricsObserver {
    l1_hits: Counter,
    l1_misses: Counter,
    l2_hits: Counter,
    l2_misses: Counter,
    loads: [Counter; 4],
    load_seconds: Histogram,
    coalesced: Counter,
    superseded: Counter,
    invalidations: Counter,
    invalidations_received: Counter,
    inserts: Counter,
    negative_hits: Counter,
    l2_corrupt: Counter,
    l2_oversized: Counter,
    l2_namespace_clears: Counter,
    bus_resubscribes: Counter,
    bus_publish_errors: Counter,
    bus_apply_failures: Counter,
    l2_errors: Counter,
    refreshes: Counter,
    stale_served: Counter,
    fail_safe: Counter,
    soft_timeouts: Counter,
    lease_waits: Counter,
    not_modified: Counter,
    /// Switches of an adaptive L1, to TinyLFU and to LRU.
    l1_policy_switches: [Counter; 2],
    warm_progress: Gauge,
    breaker: Gauge,
}

impl MetricsObserver {
    /// Registers the cache's metrics with the installed recorder.
    pub fn new(cache: &str) -> Self {
        let cache = cache.to_owned();
        let tier = |name: &'static str, tier: &'static str| metrics::counter!(name, "cache" => cache.clone(), "tier" => tier);
        let load = |outcome: &'static str| metrics::counter!("tiered_loads_total", "cache" => cache.clone(), "outcome" => outcome);
        MetricsObserver {
            l1_hits: tier("tiered_hits_total", "l1"),
            l1_misses: tier("tiered_misses_total", "l1"),
            l2_hits: tier("tiered_hits_total", "l2"),
            l2_misses: tier("tiered_misses_total", "l2"),
            loads: [load("value"), load("absent"), load("error"), load("panic")],
            load_seconds: metrics::histogram!("tiered_load_seconds", "cache" => cache.clone()),
            coalesced: metrics::counter!("tiered_coalesced_total", "cache" => cache.clone()),
            superseded: metrics::counter!("tiered_superseded_total", "cache" => cache.clone()),
            invalidations: metrics::counter!("tiered_invalidations_total", "cache" => cache.clone()),
            invalidations_received: metrics::counter!("tiered_invalidations_received_total", "cache" => cache.clone()),
            inserts: metrics::counter!("tiered_inserts_total", "cache" => cache.clone()),
            negative_hits: metrics::counter!("tiered_negative_hits_total", "cache" => cache.clone()),
            l2_corrupt: metrics::counter!("tiered_l2_corrupt_total", "cache" => cache.clone()),
            l2_oversized: metrics::counter!("tiered_l2_oversized_total", "cache" => cache.clone()),
            l2_namespace_clears: metrics::counter!("tiered_l2_namespace_clears_total", "cache" => cache.clone()),
            bus_resubscribes: metrics::counter!("tiered_bus_resubscribes_total", "cache" => cache.clone()),
            bus_publish_errors: metrics::counter!("tiered_bus_publish_errors_total", "cache" => cache.clone()),
            bus_apply_failures: metrics::counter!("tiered_bus_apply_failures_total", "cache" => cache.clone()),
            l2_errors: metrics::counter!("tiered_l2_errors_total", "cache" => cache.clone()),
            refreshes: metrics::counter!("tiered_refreshes_total", "cache" => cache.clone()),
            stale_served: metrics::counter!("tiered_stale_served_total", "cache" => cache.clone()),
            fail_safe: metrics::counter!("tiered_fail_safe_total", "cache" => cache.clone()),
            soft_timeouts: metrics::counter!("tiered_soft_timeouts_total", "cache" => cache.clone()),
            lease_waits: metrics::counter!("tiered_lease_waits_total", "cache" => cache.clone()),
            not_modified: metrics::counter!("tiered_not_modified_total", "cache" => cache.clone()),
            l1_policy_switches: ["tiny_lfu", "lru"].map(|policy| metrics::counter!("tiered_l1_policy_switches_total", "cache" => cache.clone(), "policy" => policy)),
            warm_progress: metrics::gauge!("tiered_warm_progress", "cache" => cache.clone()),
            breaker: metrics::gauge!("tiered_breaker_state", "cache" => cache),
        }
    }
}

impl Observer for MetricsObserver {
    fn hit(&self, tier: Tier) {
        match tier {
            Tier::L1 => self.l1_hits.increment(1),
            Tier::L2 => self.l2_hits.increment(1),
        }
    }

    fn miss(&self, tier: Tier) {
        match tier {
            Tier::L1 => self.l1_misses.increment(1),
            Tier::L2 => self.l2_misses.increment(1),
        }
    }

    fn load(&self, outcome: LoadOutcome, _keys: usize, elapsed: Duration) {
        let index = match outcome {
            LoadOutcome::Value => 0,
            LoadOutcome::Absent => 1,
            LoadOutcome::Error => 2,
            LoadOutcome::Panicked => 3,
        };
        self.loads[index].increment(1);
        self.load_seconds.record(elapsed.as_secs_f64());
    }

    fn coalesced(&self) {
        self.coalesced.increment(1);
    }

    fn superseded(&self) {
        self.superseded.increment(1);
    }

    fn invalidated(&self, _all: bool) {
        self.invalidations.increment(1);
    }

    fn invalidation_received(&self) {
        self.invalidations_received.increment(1);
    }

    fn inserted(&self) {
        self.inserts.increment(1);
    }

    fn negative_hit(&self) {
        self.negative_hits.increment(1);
    }

    fn l2_corrupt(&self, _key: &str, _error: &crate::error::DecodeError) {
        self.l2_corrupt.increment(1);
    }

    fn l2_oversized(&self) {
        self.l2_oversized.increment(1);
    }

    fn l2_namespace_cleared(&self) {
        self.l2_namespace_clears.increment(1);
    }

    fn bus_resubscribed(&self) {
        self.bus_resubscribes.increment(1);
    }

    fn bus_publish_failed(&self) {
        self.bus_publish_errors.increment(1);
    }

    fn bus_apply_failed(&self) {
        self.bus_apply_failures.increment(1);
    }

    fn l2_error(&self) {
        self.l2_errors.increment(1);
    }

    fn refresh_started(&self) {
        self.refreshes.increment(1);
    }

    fn stale_served(&self) {
        self.stale_served.increment(1);
    }

    fn fail_safe(&self) {
        self.fail_safe.increment(1);
    }

    fn soft_timeout(&self) {
        self.soft_timeouts.increment(1);
    }

    fn lease_waited(&self) {
        self.lease_waits.increment(1);
    }

    fn not_modified(&self) {
        self.not_modified.increment(1);
    }

    fn l1_policy_switched(&self, policy: L1Eviction) {
        let index = usize::from(policy == L1Eviction::Lru);
        self.l1_policy_switches[index].increment(1);
    }

    fn warmed(&self, done: usize, total: usize) {
        self.warm_progress.set(done as f64 / total.max(1) as f64);
    }

    fn breaker(&self, state: BreakerState) {
        self.breaker.set(match state {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        });
    }
}
