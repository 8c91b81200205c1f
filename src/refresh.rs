//! Keeping hot entries fresh without making readers wait: probabilistic early
//! refresh (XFetch), stale-while-revalidate, fail-safe and loader timeouts.
//!
//! - **Early refresh** (Vattani, Chierichetti, Lowenstein, "Optimal Probabilistic
//!   Cache Stampede Prevention", VLDB 2015): a hit at time `t` on an entry fresh
//!   until `e`, whose load took `δ`, refreshes it in the background when
//!   `t − δ·β·ln(u) ≥ e` for a uniform `u ∈ (0, 1]`. The probability rises as `e`
//!   nears, sooner for slow loads. Hits before `e − 37·δ·β` cannot draw a refresh
//!   (`−ln u ≤ 37` for a 53-bit `u`), so a hit there costs one comparison.
//! - **Stale-while-revalidate**: for a window after `e`, a hit returns the stale
//!   value at once and refreshes it in the background.
//! - **Fail-safe**: entries are kept past `e` (up to the fail-safe window after
//!   their write); a load that fails or passes the hard timeout returns the stale
//!   copy instead of the error, which is then served fresh for a short throttle so
//!   that a failing database is not called on every read.
//! - **Loader timeouts**: past the soft timeout, a caller holding a stale copy gets
//!   it while the load goes on in the background; past the hard timeout the load
//!   is given up (fail-safe, or an error).
//!
//! A background refresh is a flight of the configured loader in a task of its own
//! (see `flight.rs`): at most one per key, shared with any caller that misses the
//! key meanwhile, and it outlives the hit that started it.

use std::time::Duration;

use crate::cache::{CacheValue, TieredCache};
use crate::clock::saturating_nanos;
use crate::entry::{Entry, Ttl};
use crate::fence::Ticket;
use crate::flight::Job;
use crate::key::CacheKey;
use crate::observe::Counter;

/// The default XFetch β: 1 is the paper's optimum for an exponential arrival
/// process; larger refreshes earlier.
pub const DEFAULT_EARLY_REFRESH_BETA: f64 = 1.0;
/// The default time a stale copy served by fail-safe is served again before the
/// loader is retried.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(10);

/// How far before expiry (in load durations × β) an XFetch draw can succeed.
const XFETCH_REACH: f64 = 37.0;

/// The freshness settings of a cache, from the builder.
#[derive(Debug, Clone)]
pub(crate) struct Freshness {
    /// XFetch's β; `None`: no early refresh.
    pub(crate) early_beta: Option<f64>,
    /// How long after its fresh time an entry is served stale while it refreshes.
    pub(crate) stale_while_revalidate: Duration,
    /// How long after its write an entry may be served by fail-safe.
    pub(crate) fail_safe: Option<Duration>,
    /// How long a stale copy served by fail-safe counts as fresh again.
    pub(crate) throttle: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            early_beta: None,
            stale_while_revalidate: Duration::ZERO,
            fail_safe: None,
            throttle: DEFAULT_FAIL_SAFE_THROTTLE,
            soft_timeout: None,
            hard_timeout: None,
        }
    }
}

/// How long an entry written now lives in a tier: fresh, then kept (stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub(crate) fresh: Duration,
    /// At least `fresh`: the store keeps the entry this long.
    pub(crate) keep: Duration,
    pub(crate) load: Duration,
}

impl Freshness {
    /// How long an entry fresh for `fresh` is kept, stale, for these settings.
    pub(crate) fn lifetime(&self, fresh: Duration, load: Duration) -> Lifetime {
        let fresh = fresh.min(Ttl::MAX);
        let mut keep = fresh.saturating_add(self.stale_while_revalidate);
        if let Some(window) = self.fail_safe {
            keep = keep.max(window);
        }
        Lifetime {
            fresh,
            keep: keep.min(Ttl::MAX),
            load,
        }
    }

    /// Where an entry's XFetch window starts.
    pub(crate) fn early_from(&self, now: u64, fresh_until: u64, load: Duration) -> u64 {
        match self.early_beta {
            None => fresh_until,
            Some(beta) => {
                let reach = saturating_nanos(load.mul_f64(beta * XFETCH_REACH));
                fresh_until.saturating_sub(reach).max(now)
            }
        }
    }

    /// The XFetch draw for a hit at `now`: whether to refresh `entry` early.
    pub(crate) fn refresh_early<V>(&self, entry: &Entry<V>, now: u64) -> bool {
        let Some(beta) = self.early_beta else {
            return false;
        };
        let gap = entry.fresh_until.saturating_sub(now) as f64;
        let u = 1.0 - fastrand::f64();
        entry.load_nanos as f64 * beta * -u.ln() >= gap
    }

    /// Whether a stale entry is within its stale-while-revalidate window.
    pub(crate) fn revalidates<V>(&self, entry: &Entry<V>, now: u64) -> bool {
        now < entry
            .fresh_until
            .saturating_add(saturating_nanos(self.stale_while_revalidate))
    }
}

/// A stale copy a flight may fall back on, with a ticket taken while it was
/// still in L1 (so that it is never put back after an invalidation).
#[derive(Clone)]
pub(crate) struct Fallback<V> {
    pub(crate) entry: Entry<V>,
    pub(crate) ticket: Ticket,
}

impl<V> Fallback<V> {
    /// The newer of two stale copies.
    pub(crate) fn newer(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) if b.entry.fresh_until > a.entry.fresh_until => Some(b),
            (Some(a), _) => Some(a),
            (None, b) => b,
        }
    }
}

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// Whether a refresh can run in the background: it needs the configured
    /// loader and a tokio runtime.
    pub(crate) fn can_refresh(&self) -> bool {
        self.inner.loader.is_some() && tokio::runtime::Handle::try_current().is_ok()
    }

    /// `seen` (an L1 entry past its fresh time, or in its XFetch window) as a
    /// fallback: a settled ticket (no invalidation half done), then the same
    /// entry found in L1 again. `None` if it
    /// left L1 meanwhile (an invalidation, a newer value).
    pub(crate) async fn fallback(&self, key: &K, seen: &Entry<V>) -> Option<Fallback<V>> {
        let ticket = self.inner.fence.settled_ticket(key).await;
        let again = self.inner.l1.get(key).await?;
        let same = again.fresh_until == seen.fresh_until && again.expires == seen.expires;
        same.then_some(Fallback {
            entry: again,
            ticket,
        })
    }

    /// Starts a background refresh of `key` (whose L1 entry is `seen`), unless a
    /// flight of the key is already on. Returns at once.
    pub(crate) async fn refresh(&self, key: &K, seen: &Entry<V>) {
        if !self.can_refresh() || self.flying(key) {
            return;
        }
        let fallback = self.fallback(key, seen).await;
        let job = Job {
            fallback,
            refresh_after: Some(seen.fresh_until),
            ..Job::default()
        };
        if self.launch(key, job) {
            self.inner.report.event(Counter::Refreshes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fresh_until: u64, load: Duration) -> Entry<u8> {
        let freshness = Freshness {
            early_beta: Some(1.0),
            ..Freshness::default()
        };
        let written = 0;
        let mut entry = Entry::new(
            Some(1),
            written,
            Duration::from_nanos(fresh_until),
            &freshness,
            load,
        );
        entry.fresh_until = fresh_until;
        entry
    }

    #[test]
    fn xfetch_draws_follow_the_exponential_law() {
        let freshness = Freshness {
            early_beta: Some(1.0),
            ..Freshness::default()
        };
        let load = Duration::from_millis(10);
        let e = entry(1_000_000_000, load);
        let rate = |gap: Duration| {
            let now = e.fresh_until - saturating_nanos(gap);
            let hits = (0..100_000)
                .filter(|_| freshness.refresh_early(&e, now))
                .count();
            hits as f64 / 100_000.0
        };
        // P(refresh) = exp(-gap / (load × β)).
        assert!((rate(Duration::ZERO) - 1.0).abs() < 1e-9);
        assert!(
            (rate(load) - (-1.0f64).exp()).abs() < 0.01,
            "{}",
            rate(load)
        );
        assert!((rate(load * 3) - (-3.0f64).exp()).abs() < 0.01);
        assert_eq!(rate(load * 40), 0.0);
        // Hits before the window need no draw: the window covers every success.
        assert_eq!(
            e.early_from,
            e.fresh_until - saturating_nanos(load.mul_f64(XFETCH_REACH))
        );
        let off = Freshness::default();
        assert!(!off.refresh_early(&e, e.fresh_until - 1));
        assert_eq!(off.early_from(0, 500, load), 500);
    }

    #[test]
    fn entries_are_kept_for_swr_and_fail_safe() {
        let fresh = Duration::from_secs(10);
        let swr = Freshness {
            stale_while_revalidate: Duration::from_secs(5),
            ..Freshness::default()
        };
        assert_eq!(
            swr.lifetime(fresh, Duration::ZERO).keep,
            Duration::from_secs(15)
        );
        let fail_safe = Freshness {
            fail_safe: Some(Duration::from_secs(3600)),
            ..swr.clone()
        };
        assert_eq!(
            fail_safe.lifetime(fresh, Duration::ZERO).keep,
            Duration::from_secs(3600)
        );
        assert_eq!(
            Freshness::default().lifetime(fresh, Duration::ZERO).keep,
            fresh
        );
        let e = Entry::new(Some(1), 0, fresh, &fail_safe, Duration::ZERO);
        assert!(e.is_fresh(9_999_999_999) && !e.is_fresh(10_000_000_000));
        assert!(!e.is_expired(3_599_000_000_000) && e.is_expired(3_600_000_000_000));
        assert!(fail_safe.revalidates(&e, 14_999_999_999));
        assert!(!fail_safe.revalidates(&e, 15_000_000_000));
        let throttled = e.throttled(20_000_000_000, Duration::from_secs(1));
        assert!(throttled.is_fresh(20_999_999_999) && !throttled.is_fresh(21_000_000_000));
        assert_eq!(throttled.expires, e.expires);
    }
}
