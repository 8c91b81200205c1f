//! The envelope every tier stores, TTL presets and the expiry policy.

use std::time::Duration;

use crate::clock::saturating_nanos;
use crate::refresh::Freshness;

/// Common TTLs.
///
/// ```
/// use tiered::Ttl;
/// assert_eq!(Ttl::MEDIUM.as_secs(), 300);
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Ttl;

impl Ttl {
    /// The longest TTL a cache keeps an entry for (10 years): the builder rejects
    /// longer TTLs, and [`insert_with_ttl`](crate::TieredCache::insert_with_ttl)
    /// shortens them to this, so that expiry times never overflow and Redis never
    /// refuses an expiry.
    pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
    /// One minute.
    pub const SHORT: Duration = Duration::from_secs(60);
    /// Five minutes.
    pub const MEDIUM: Duration = Duration::from_secs(5 * 60);
    /// One hour.
    pub const LONG: Duration = Duration::from_secs(60 * 60);
    /// One day.
    pub const VERY_LONG: Duration = Duration::from_secs(24 * 60 * 60);
}

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
        }
    }

    /// An entry handed to the callers of one flight and cached nowhere.
    pub(crate) fn uncached(value: Option<V>) -> Self {
        Entry {
            value,
            early_from: 0,
            fresh_until: 0,
            expires: 0,
            load_nanos: 0,
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
        }
    }
}

/// TTLs and jitter, as configured on the builder.
#[derive(Debug, Clone)]
pub(crate) struct TtlPolicy {
    pub(crate) l1: Duration,
    pub(crate) l2: Duration,
    pub(crate) negative: Duration,
    /// A fraction in `[0, 1)`: each TTL is shortened by a random part of up to this
    /// fraction, so that entries written together do not expire together.
    pub(crate) jitter: f64,
}

impl TtlPolicy {
    /// `ttl` shortened by a random fraction of up to `jitter`: never longer than asked.
    pub(crate) fn jittered(&self, ttl: Duration) -> Duration {
        if self.jitter <= 0.0 {
            return ttl;
        }
        ttl.mul_f64(1.0 - self.jitter * fastrand::f64())
    }

    /// The L1 TTL of a value or a remembered absence.
    pub(crate) fn l1_for<V>(&self, value: &Option<V>) -> Duration {
        self.jittered(if value.is_some() {
            self.l1
        } else {
            self.negative
        })
    }

    /// The L2 TTL of a value or a remembered absence.
    pub(crate) fn l2_for<V>(&self, value: &Option<V>) -> Duration {
        self.jittered(if value.is_some() {
            self.l2
        } else {
            self.negative
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_only_shortens_and_stays_within_the_fraction() {
        let policy = TtlPolicy {
            l1: Ttl::SHORT,
            l2: Ttl::LONG,
            negative: Duration::from_secs(5),
            jitter: 0.1,
        };
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..1000 {
            let ttl = policy.jittered(Ttl::SHORT);
            assert!(ttl <= Ttl::SHORT);
            assert!(ttl >= Ttl::SHORT.mul_f64(0.9));
            distinct.insert(ttl);
        }
        assert!(distinct.len() > 100, "jitter should spread expiries");
    }

    #[test]
    fn no_jitter_keeps_the_ttl() {
        let policy = TtlPolicy {
            l1: Ttl::LONG,
            l2: Ttl::LONG,
            negative: Duration::ZERO,
            jitter: 0.0,
        };
        assert_eq!(policy.jittered(Ttl::LONG), Ttl::LONG);
    }

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
}
