//! What the cache reports: an [`Observer`] hook, and counters behind [`Stats`].

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::error::DecodeError;
use crate::policy::L1Eviction;

mod fanout;
mod health;
#[cfg(feature = "metrics")]
pub(crate) mod metrics;
pub(crate) mod trace;
mod written;

pub use self::health::{BusHealth, Health, L2Error, L2Health};
pub use self::written::Written;

/// The state of a cache's circuit breaker, in [`Stats`](crate::Stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through.
    #[default]
    Closed,
    /// Calls are skipped; the store is probed in the background.
    Open,
    /// One probe call is allowed; its outcome decides.
    HalfOpen,
}

/// A cache tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tier {
    /// The in-process tier.
    L1,
    /// The shared tier.
    L2,
}

/// How a load ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoadOutcome {
    /// The loader returned a value.
    Value,
    /// The loader found nothing (cached as absence when negative caching is on).
    Absent,
    /// The loader returned an error (not cached).
    Error,
    /// The loader panicked (contained, not cached).
    Panicked,
}

impl LoadOutcome {
    /// The outcome in one lower-case word (`value`, `absent`, `error`,
    /// `panicked`): a metric label, or a span attribute.
    pub fn label(self) -> &'static str {
        match self {
            LoadOutcome::Value => "value",
            LoadOutcome::Absent => "absent",
            LoadOutcome::Error => "error",
            LoadOutcome::Panicked => "panicked",
        }
    }
}

/// Hooks called as the cache works. Every method has an empty default, so an
/// implementation overrides only what it reports. Methods are called inline on the
/// read path (`hit` on every hit): keep them cheap and non-blocking.
pub trait Observer: Send + Sync + 'static {
    /// A read found a usable entry in `tier` (a remembered absence counts).
    fn hit(&self, tier: Tier) {
        let _ = tier;
    }
    /// A read found nothing usable in `tier`.
    fn miss(&self, tier: Tier) {
        let _ = tier;
    }
    /// A load finished after `elapsed`. `keys` is 1, or the batch size of `get_many`.
    fn load(&self, outcome: LoadOutcome, keys: usize, elapsed: Duration) {
        let _ = (outcome, keys, elapsed);
    }
    /// A caller got the result of a load another caller started.
    fn coalesced(&self) {}
    /// A load's result was not cached because the key was invalidated meanwhile.
    fn superseded(&self) {}
    /// Keys were invalidated; `all` is true for `invalidate_all`.
    fn invalidated(&self, all: bool) {
        let _ = all;
    }
    /// Another instance's invalidation arrived through the bus and was applied.
    fn invalidation_received(&self) {}
    /// An `insert` (or `insert_with_ttl`, or each entry of an `insert_many`)
    /// wrote a value.
    fn inserted(&self) {}
    /// An L1 hit found a remembered absence (also reported as a `hit`).
    fn negative_hit(&self) {}
    /// The L2 entry at `key` (its Redis key) did not decode, for the reason
    /// `error` gives (foreign bytes, another schema or value type, a wrong
    /// encryption key, past the size limit): it is deleted, and the value
    /// reloaded.
    fn l2_corrupt(&self, key: &str, error: &DecodeError) {
        let _ = (key, error);
    }
    /// A value was not written to L2: past `l2_max_value_bytes` (L1 only).
    fn l2_oversized(&self) {}
    /// The whole L2 namespace was cleared in place of owed deletions.
    fn l2_namespace_cleared(&self) {}
    /// The bus subscription came back after a loss, and L1 was cleared.
    fn bus_resubscribed(&self) {}
    /// A bus message could not be published at first (it is kept and sent again).
    fn bus_publish_failed(&self) {}
    /// A message from another instance could not be applied (a panic in
    /// [`CacheKey::from_key_str`](crate::CacheKey::from_key_str), say): L1 was
    /// cleared instead, and the listener goes on.
    fn bus_apply_failed(&self) {}
    /// A shared-tier call failed or timed out (the read went on without it).
    fn l2_error(&self) {}
    /// A background refresh started (early refresh, or stale-while-revalidate).
    fn refresh_started(&self) {}
    /// A caller got a stale value (stale-while-revalidate, fail-safe, or a soft
    /// timeout).
    fn stale_served(&self) {}
    /// A load failed (an error, a panic or the hard timeout) and a stale copy was
    /// served instead (fail-safe); the copy is served for the throttle time.
    fn fail_safe(&self) {}
    /// A caller holding a stale copy stopped waiting for a load at the soft
    /// timeout (the load went on in the background).
    fn soft_timeout(&self) {}
    /// A flight found another instance's lease on its key and waited for its
    /// value instead of loading.
    fn lease_waited(&self) {}
    /// A load answered "not modified": its stale copy was cached again as fresh.
    fn not_modified(&self) {}
    /// An adaptive L1 ([`L1Eviction::Adaptive`]) switched to `policy`.
    fn l1_policy_switched(&self, policy: L1Eviction) {
        let _ = policy;
    }
    /// [`warm`](crate::TieredCache::warm) finished a batch: `done` of `total`
    /// keys have been looked up.
    fn warmed(&self, done: usize, total: usize) {
        let _ = (done, total);
    }
    /// The shared tier's circuit breaker changed state.
    fn breaker(&self, state: BreakerState) {
        let _ = state;
    }
}

/// A point-in-time copy of a cache's counters, from
/// [`TieredCache::stats`](crate::TieredCache::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Hits and misses of the in-process tier.
    pub l1: TierStats,
    /// Hits and misses of the shared tier (a skipped or failed call is a miss).
    pub l2: TierStats,
    /// Shared-tier calls that failed or timed out.
    pub l2_errors: u64,
    /// Shared-tier entries that did not decode (deleted and reloaded): foreign or
    /// corrupt bytes, another schema, a wrong or unknown encryption key, a
    /// payload past `l2_max_value_bytes`.
    pub l2_corrupt: u64,
    /// Values not written to the shared tier because their payload was past
    /// `l2_max_value_bytes` (they stay in L1 only).
    pub l2_oversized: u64,
    /// Times the whole namespace was cleared because deferred invalidations
    /// overflowed or an `invalidate_all` could not reach the store at first.
    pub l2_namespace_clears: u64,
    /// The shared tier's circuit breaker now (`Closed` without an L2).
    pub breaker: BreakerState,
    /// How many times the breaker has opened.
    pub breaker_opened: u64,
    /// Hits that found a remembered absence (included in `l1.hits`).
    pub negative_hits: u64,
    /// Loader calls (a `get_many` batch counts once).
    pub loads: u64,
    /// Loader calls that failed (errors and panics).
    pub load_errors: u64,
    /// Callers that waited for a load another caller started, instead of loading.
    pub coalesced: u64,
    /// Loaded values not cached because their key was invalidated during the load.
    pub superseded: u64,
    /// Explicit inserts: `insert` calls, and each entry of an `insert_many`.
    pub inserts: u64,
    /// `invalidate`, `invalidate_many`, `invalidate_pattern` and `invalidate_all`
    /// calls (an `invalidate_many` counts once, whatever its number of keys).
    pub invalidations: u64,
    /// Invalidations received from other instances through the bus.
    pub invalidations_received: u64,
    /// Times the bus subscription was re-established after a loss, each of which
    /// cleared L1 (messages may have been missed meanwhile).
    pub bus_resubscribes: u64,
    /// Bus messages that could not be published at first (kept and sent again).
    pub bus_publish_errors: u64,
    /// Messages from other instances that could not be applied (each cleared L1
    /// instead).
    pub bus_apply_failures: u64,
    /// Background refreshes started (early refresh and stale-while-revalidate).
    pub refreshes: u64,
    /// Stale values handed to callers (stale-while-revalidate, fail-safe, soft
    /// timeouts).
    pub stale_served: u64,
    /// Failed loads answered with a stale copy (fail-safe).
    pub fail_safe: u64,
    /// Callers that took their stale copy at the soft timeout.
    pub soft_timeouts: u64,
    /// Flights that waited for another instance's lease instead of loading.
    pub lease_waits: u64,
    /// Loads answered "not modified" ([`Loaded::not_modified`](crate::Loaded::not_modified)):
    /// the stale copy was cached again as fresh.
    pub not_modified: u64,
    /// Times an adaptive L1 ([`L1Eviction::Adaptive`]) switched policy.
    pub l1_policy_switches: u64,
    /// The eviction policy L1 runs now (for an adaptive L1, the one it switched
    /// to last; it starts with TinyLFU).
    pub l1_policy: L1Eviction,
    /// Entries in L1 (approximate: moka counts asynchronously).
    pub l1_entries: u64,
}

/// Hits and misses of one tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierStats {
    /// Reads that found a usable entry.
    pub hits: u64,
    /// Reads that did not.
    pub misses: u64,
}

impl TierStats {
    /// `hits / (hits + misses)`, or 0 before any read.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// The counters behind [`Stats`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    L1Hits,
    L1Misses,
    L2Hits,
    L2Misses,
    L2Errors,
    L2Corrupt,
    L2Oversized,
    L2NamespaceClears,
    NegativeHits,
    Loads,
    LoadErrors,
    Coalesced,
    Superseded,
    Inserts,
    Invalidations,
    InvalidationsReceived,
    BusResubscribes,
    BusPublishErrors,
    BusApplyFailures,
    Refreshes,
    StaleServed,
    FailSafe,
    SoftTimeouts,
    LeaseWaits,
    NotModified,
    L1PolicySwitches,
}

impl Counter {
    /// Every counter, in declaration order (their discriminants index the lanes).
    const ALL: [Counter; 26] = [
        Counter::L1Hits,
        Counter::L1Misses,
        Counter::L2Hits,
        Counter::L2Misses,
        Counter::L2Errors,
        Counter::L2Corrupt,
        Counter::L2Oversized,
        Counter::L2NamespaceClears,
        Counter::NegativeHits,
        Counter::Loads,
        Counter::LoadErrors,
        Counter::Coalesced,
        Counter::Superseded,
        Counter::Inserts,
        Counter::Invalidations,
        Counter::InvalidationsReceived,
        Counter::BusResubscribes,
        Counter::BusPublishErrors,
        Counter::BusApplyFailures,
        Counter::Refreshes,
        Counter::StaleServed,
        Counter::FailSafe,
        Counter::SoftTimeouts,
        Counter::LeaseWaits,
        Counter::NotModified,
        Counter::L1PolicySwitches,
    ];
}

const COUNTERS: usize = Counter::ALL.len();
const LANES: usize = 16;

/// Counters striped over cache-line-padded lanes, one lane per thread (modulo), so
/// that hits on different cores do not contend on one cache line.
struct Counters {
    lanes: Box<[CachePadded<[AtomicU64; COUNTERS]>]>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

fn lane() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    LANE.with(|lane| {
        let mut index = lane.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Ordering::Relaxed) % LANES;
            lane.set(index);
        }
        index
    })
}

impl Counters {
    fn new() -> Self {
        Counters {
            lanes: (0..LANES)
                .map(|_| CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    #[inline]
    fn add(&self, counter: Counter, n: u64) {
        self.lanes[lane()][counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, counter: Counter) -> u64 {
        self.lanes
            .iter()
            .map(|lane| lane[counter as usize].load(Ordering::Relaxed))
            .sum()
    }

    fn snapshot(&self, l1_entries: u64, l1_policy: L1Eviction) -> Stats {
        Stats {
            l1: TierStats {
                hits: self.get(Counter::L1Hits),
                misses: self.get(Counter::L1Misses),
            },
            l2: TierStats {
                hits: self.get(Counter::L2Hits),
                misses: self.get(Counter::L2Misses),
            },
            l2_errors: self.get(Counter::L2Errors),
            l2_corrupt: self.get(Counter::L2Corrupt),
            l2_oversized: self.get(Counter::L2Oversized),
            l2_namespace_clears: self.get(Counter::L2NamespaceClears),
            breaker: BreakerState::Closed,
            breaker_opened: 0,
            negative_hits: self.get(Counter::NegativeHits),
            loads: self.get(Counter::Loads),
            load_errors: self.get(Counter::LoadErrors),
            coalesced: self.get(Counter::Coalesced),
            superseded: self.get(Counter::Superseded),
            inserts: self.get(Counter::Inserts),
            invalidations: self.get(Counter::Invalidations),
            invalidations_received: self.get(Counter::InvalidationsReceived),
            bus_resubscribes: self.get(Counter::BusResubscribes),
            bus_publish_errors: self.get(Counter::BusPublishErrors),
            bus_apply_failures: self.get(Counter::BusApplyFailures),
            refreshes: self.get(Counter::Refreshes),
            stale_served: self.get(Counter::StaleServed),
            fail_safe: self.get(Counter::FailSafe),
            soft_timeouts: self.get(Counter::SoftTimeouts),
            lease_waits: self.get(Counter::LeaseWaits),
            not_modified: self.get(Counter::NotModified),
            l1_policy_switches: self.get(Counter::L1PolicySwitches),
            l1_policy,
            l1_entries,
        }
    }
}

/// Where the cache reports: its counters and its observer, if any.
pub(crate) struct Report {
    counters: Counters,
    observer: Option<std::sync::Arc<dyn Observer>>,
}

impl Report {
    /// Reports to `observers` (none, one, or several in the order given).
    pub(crate) fn new(mut observers: Vec<std::sync::Arc<dyn Observer>>) -> Self {
        let observer = match observers.len() {
            0 | 1 => observers.pop(),
            _ => {
                Some(std::sync::Arc::new(fanout::Fanout(observers)) as std::sync::Arc<dyn Observer>)
            }
        };
        Report {
            counters: Counters::new(),
            observer,
        }
    }

    /// A snapshot of the counters (the breaker's fields are the caller's to fill).
    pub(crate) fn stats(&self, l1_entries: u64, l1_policy: L1Eviction) -> Stats {
        self.counters.snapshot(l1_entries, l1_policy)
    }

    #[inline]
    pub(crate) fn count(&self, counter: Counter) {
        self.counters.add(counter, 1);
    }

    #[inline]
    pub(crate) fn tier(&self, tier: Tier, hit: bool) {
        let counter = match (tier, hit) {
            (Tier::L1, true) => Counter::L1Hits,
            (Tier::L1, false) => Counter::L1Misses,
            (Tier::L2, true) => Counter::L2Hits,
            (Tier::L2, false) => Counter::L2Misses,
        };
        self.count(counter);
        if let Some(observer) = &self.observer {
            if hit {
                observer.hit(tier);
            } else {
                observer.miss(tier);
            }
        }
    }

    /// Counts an undecodable L2 entry and tells the observer why.
    pub(crate) fn l2_corrupt(&self, key: &str, error: &DecodeError) {
        self.count(Counter::L2Corrupt);
        if let Some(observer) = &self.observer {
            observer.l2_corrupt(key, error);
        }
    }

    pub(crate) fn l2_error(&self) {
        self.count(Counter::L2Errors);
        if let Some(observer) = &self.observer {
            observer.l2_error();
        }
    }

    pub(crate) fn breaker(&self, transition: Option<BreakerState>) {
        if let Some(state) = transition {
            tracing::info!(?state, "L2 circuit breaker changed state");
            if let Some(observer) = &self.observer {
                observer.breaker(state);
            }
        }
    }

    /// Counts `counter` and reports it to the observer, for the events that have
    /// no arguments.
    pub(crate) fn event(&self, counter: Counter) {
        self.count(counter);
        if let Some(observer) = &self.observer {
            match counter {
                Counter::Inserts => observer.inserted(),
                Counter::NegativeHits => observer.negative_hit(),
                Counter::L2Oversized => observer.l2_oversized(),
                Counter::L2NamespaceClears => observer.l2_namespace_cleared(),
                Counter::BusResubscribes => observer.bus_resubscribed(),
                Counter::BusPublishErrors => observer.bus_publish_failed(),
                Counter::BusApplyFailures => observer.bus_apply_failed(),
                Counter::Coalesced => observer.coalesced(),
                Counter::Superseded => observer.superseded(),
                Counter::InvalidationsReceived => observer.invalidation_received(),
                Counter::Refreshes => observer.refresh_started(),
                Counter::StaleServed => observer.stale_served(),
                Counter::FailSafe => observer.fail_safe(),
                Counter::SoftTimeouts => observer.soft_timeout(),
                Counter::LeaseWaits => observer.lease_waited(),
                Counter::NotModified => observer.not_modified(),
                // Reported through their own calls (`tier`, `l2_error`,
                // `l2_corrupt`, `load`, `invalidated`, `l1_policy_switched`),
                // with arguments.
                Counter::L1Hits
                | Counter::L1Misses
                | Counter::L2Hits
                | Counter::L2Misses
                | Counter::L2Errors
                | Counter::L2Corrupt
                | Counter::Loads
                | Counter::LoadErrors
                | Counter::Invalidations
                | Counter::L1PolicySwitches => {}
            }
        }
    }

    pub(crate) fn with_observer(&self, f: impl FnOnce(&dyn Observer)) {
        if let Some(observer) = &self.observer {
            f(&**observer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let counters = std::sync::Arc::new(Counters::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counters.add(Counter::L1Hits, 1);
                    }
                    counters.add(Counter::Loads, 2);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let stats = counters.snapshot(7, L1Eviction::Lru);
        assert_eq!(stats.l1.hits, 8000);
        assert_eq!(stats.loads, 16);
        assert_eq!(stats.l1_entries, 7);
        assert_eq!(stats.l1.misses, 0);
    }

    #[test]
    fn every_counter_is_listed_once_in_order() {
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, i, "{counter:?}");
        }
    }

    #[test]
    fn hit_ratio() {
        assert_eq!(TierStats::default().hit_ratio(), 0.0);
        let s = TierStats { hits: 3, misses: 1 };
        assert_eq!(s.hit_ratio(), 0.75);
    }
}
