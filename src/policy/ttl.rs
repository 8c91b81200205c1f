//! TTL presets and the TTL policy (defaults per tier, jitter).

use std::time::Duration;

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
}
