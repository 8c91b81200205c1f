//! The envelope every tier stores: a value or a remembered absence, with its timing.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::saturating_nanos;
use crate::policy::Freshness;

/// A cached value or a remembered absence, with its timing. Times are nanoseconds of
/// the cache's [`Clock`](crate::Clock).
///
/// ```text
///  written        early_from        fresh_until                 expires
///     |  fresh hit   |  hit + XFetch draw |  stale: SWR or fail-safe  |  gone
/// ```
#[derive(Debug, Clone)]
pub(crate) struct Entry<V> {
    /// `None` remembers that the loader found nothing (negative caching).
    pub(crate) value: Option<V>,
    /// A hit before this instant is plain; from here to `fresh_until`, a hit
    /// draws whether to refresh early (the XFetch window; equal to `fresh_until`
    /// when early refresh is off).
    pub(crate) early_from: u64,
    /// Served as fresh before this instant.
    pub(crate) fresh_until: u64,
    /// Never served at or after this instant. Between `fresh_until` and here the
    /// entry is stale: served only by stale-while-revalidate or fail-safe.
    pub(crate) expires: u64,
    /// How long the load that produced this value took, in nanoseconds (what
    /// XFetch weighs the early-refresh probability by).
    pub(crate) load_nanos: u64,
    /// The tags it carries, if any.
    pub(crate) tags: Option<Arc<Tags>>,
    /// Where its load began on the tag clock (a lower bound; 0: unknown, older
    /// than every invalidation): what the namespace epoch and, for a tagged
    /// entry, its tags' stamps are compared with.
    pub(crate) born: u64,
}

/// The tags an entry carries, and where its load began on the tag clock: an
/// invalidation of one of them stamped later than `born` makes it unreadable.
#[derive(Debug)]
pub(crate) struct Tags {
    pub(crate) names: Box<[Box<str>]>,
    /// The tag clock when the load began (a lower bound of it: older is safe).
    pub(crate) born: u64,
    /// The tag book's sequence at the last check this entry passed in L1 (a
    /// hit's fast path: nothing was invalidated since).
    pub(crate) checked: AtomicU64,
}

/// Two tag sets are equal when they carry the same names from the same birth.
impl PartialEq for Tags {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names && self.born == other.born
    }
}

impl Tags {
    pub(crate) fn new(names: Box<[Box<str>]>, born: u64) -> Arc<Self> {
        Arc::new(Tags {
            names,
            born,
            checked: AtomicU64::new(u64::MAX),
        })
    }
}

impl<V> Entry<V> {
    /// An entry written at `now`, fresh for `ttl` (clamped to [`Ttl::MAX`]), kept
    /// stale for as long as `freshness` may serve it, produced by a load that took
    /// `load`.
    pub(crate) fn new(
        value: Option<V>,
        now: u64,
        ttl: Duration,
        freshness: &Freshness,
        load: Duration,
    ) -> Self {
        let lifetime = freshness.lifetime(ttl, load);
        let fresh_until = now.saturating_add(saturating_nanos(lifetime.fresh));
        Entry {
            value,
            early_from: freshness.early_from(now, fresh_until, load),
            fresh_until,
            expires: now.saturating_add(saturating_nanos(lifetime.keep)),
            load_nanos: saturating_nanos(load),
            tags: None,
            born: 0,
        }
    }

    /// This entry, born at `born` on the tag clock, carrying `tags` (born
    /// then too).
    pub(crate) fn tagged(mut self, born: u64, tags: Option<Arc<Tags>>) -> Self {
        debug_assert!(tags.as_ref().is_none_or(|t| t.born == born));
        (self.born, self.tags) = (born, tags);
        self
    }

    /// An entry handed to the callers of one flight and cached nowhere.
    pub(crate) fn uncached(value: Option<V>) -> Self {
        Entry {
            value,
            early_from: 0,
            fresh_until: 0,
            expires: 0,
            load_nanos: 0,
            tags: None,
            born: 0,
        }
    }

    /// Never served again.
    #[inline]
    pub(crate) fn is_expired(&self, now: u64) -> bool {
        now >= self.expires
    }

    /// Served as fresh.
    #[inline]
    pub(crate) fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until
    }

    /// The XFetch draw for a hit at `now` (see `policy/freshness.rs`): whether to
    /// refresh this entry early.
    pub(crate) fn refresh_early(&self, freshness: &Freshness, now: u64) -> bool {
        let Some(beta) = freshness.early_beta else {
            return false;
        };
        let gap = self.fresh_until.saturating_sub(now) as f64;
        let u = 1.0 - fastrand::f64();
        self.load_nanos as f64 * beta * -u.ln() >= gap
    }

    /// Whether this stale entry is within its stale-while-revalidate window.
    pub(crate) fn revalidates(&self, freshness: &Freshness, now: u64) -> bool {
        now < self
            .fresh_until
            .saturating_add(saturating_nanos(freshness.stale_while_revalidate))
    }

    /// This entry served stale by fail-safe: fresh again for `throttle` (within
    /// its expiry), so that a failing loader is not called on every read.
    pub(crate) fn throttled(&self, now: u64, throttle: Duration) -> Self
    where
        V: Clone,
    {
        let fresh_until = now
            .saturating_add(saturating_nanos(throttle))
            .min(self.expires);
        Entry {
            value: self.value.clone(),
            early_from: fresh_until,
            fresh_until,
            expires: self.expires,
            load_nanos: self.load_nanos,
            tags: self.tags.clone(),
            born: self.born,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_write_time_plus_ttl() {
        let entry = Entry::new(
            Some(1),
            1_000,
            Duration::from_nanos(500),
            &Freshness::default(),
            Duration::ZERO,
        );
        assert!(!entry.is_expired(1_499));
        assert!(entry.is_expired(1_500));
        assert!(entry.is_fresh(1_499) && !entry.is_fresh(1_500));
    }

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
                .filter(|_| e.refresh_early(&freshness, now))
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
            e.fresh_until - saturating_nanos(load.mul_f64(crate::policy::freshness::XFETCH_REACH))
        );
        let off = Freshness::default();
        assert!(!e.refresh_early(&off, e.fresh_until - 1));
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
        assert!(e.revalidates(&fail_safe, 14_999_999_999));
        assert!(!e.revalidates(&fail_safe, 15_000_000_000));
        let throttled = e.throttled(20_000_000_000, Duration::from_secs(1));
        assert!(throttled.is_fresh(20_999_999_999) && !throttled.is_fresh(21_000_000_000));
        assert_eq!(throttled.expires, e.expires);
    }
}
