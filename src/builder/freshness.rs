//! The builder's settings for freshness under load: early refresh,
//! stale-while-revalidate, fail-safe, loader timeouts and the fleet-wide lease.

use std::time::Duration;

use super::TieredCacheBuilder;
use crate::error::ConfigError;
use crate::key::{CacheKey, CacheValue};
use crate::policy::{Freshness, Ttl, TtlPolicy};

impl<K: CacheKey, V: CacheValue> TieredCacheBuilder<K, V> {
    /// Probabilistic early refresh (XFetch) with this `beta` (default
    /// [`DEFAULT_EARLY_REFRESH_BETA`](crate::defaults::DEFAULT_EARLY_REFRESH_BETA), on):
    /// a hit shortly before its entry goes stale refreshes it in the background,
    /// with a probability that rises as expiry nears, sooner for entries whose
    /// load was slow; larger `beta` refreshes earlier. The caller gets the
    /// current value at once. Needs the configured loader (not `get_with` or
    /// `#[cached_tier]`). `beta` must be finite and greater than zero.
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.freshness.early_beta = Some(beta);
        self
    }

    /// No early refresh: a hot key is reloaded when it goes stale, by the first
    /// reader after (others wait for that load).
    pub fn no_early_refresh(mut self) -> Self {
        self.freshness.early_beta = None;
        self
    }

    /// Stale-while-revalidate (default off): for `window` after an entry goes
    /// stale, a read returns the stale value at once and refreshes it in the
    /// background (one refresh per key). Past the window, reads wait for the
    /// reload. Needs the configured loader.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.freshness.stale_while_revalidate = window;
        self
    }

    /// Fail-safe (default off): entries are kept until `window` after their
    /// write, and when a load fails (an error, a panic, the hard timeout) a kept
    /// stale copy is returned instead of the error, counted in
    /// [`Stats::fail_safe`](crate::Stats::fail_safe), and served again for the
    /// [throttle](Self::fail_safe_throttle) before the loader is retried. With no
    /// stale copy, the error reaches the caller. `window` must be at least the L1
    /// and L2 TTLs.
    pub fn fail_safe(mut self, window: Duration) -> Self {
        self.freshness.fail_safe = Some(window);
        self
    }

    /// How long a stale copy served by fail-safe is served before the loader is
    /// tried again (default
    /// [`DEFAULT_FAIL_SAFE_THROTTLE`](crate::defaults::DEFAULT_FAIL_SAFE_THROTTLE)).
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.freshness.throttle = throttle;
        self
    }

    /// A soft load timeout (default none): a caller holding a stale copy (kept by
    /// fail-safe) that has waited this long for the reload gets the stale copy,
    /// and the load finishes in the background and fills the cache. Applies to
    /// the configured loader; needs [`fail_safe`](Self::fail_safe).
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.freshness.soft_timeout = Some(timeout);
        self
    }

    /// A hard load timeout (default none): a load (the configured loader's or
    /// `get_with`'s) still running after this is given up. A stale copy is served
    /// if fail-safe has one, else the caller gets
    /// [`Error::LoadTimedOut`](crate::Error::LoadTimedOut).
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.freshness.hard_timeout = Some(timeout);
        self
    }

    /// One load per key across the fleet (default off; needs an L2): before
    /// loading, a flight takes a lease in Redis for `lease` (`SET NX PX` with a
    /// token). Instances that find it taken wait for the holder's value to appear
    /// in L2, and load themselves if it has not after twice `lease` (a holder that
    /// died frees its lease when it expires, and one waiter takes it over). With
    /// the breaker open, each instance loads for itself. `lease` should outlast a
    /// load; [`DEFAULT_LEASE_TTL`](crate::defaults::DEFAULT_LEASE_TTL) is a start.
    pub fn fleet_single_flight(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// Says which freshness setting is nonsense, if one is.
pub(super) fn validate(
    freshness: &Freshness,
    ttl: &TtlPolicy,
    has_l2: bool,
    lease: Option<Duration>,
) -> Result<(), ConfigError> {
    let config = |message: String| Err(ConfigError::new(message));
    if let Some(beta) = freshness.early_beta {
        if !(beta.is_finite() && beta > 0.0) {
            return config(format!(
                "early_refresh: beta must be finite and greater than zero, got {beta}"
            ));
        }
    }
    if freshness.stale_while_revalidate > Ttl::MAX {
        return config("stale_while_revalidate must be at most Ttl::MAX".into());
    }
    if let Some(window) = freshness.fail_safe {
        let longest = if has_l2 { ttl.l1.max(ttl.l2) } else { ttl.l1 };
        if window < longest || window > Ttl::MAX {
            return config(format!(
                "fail_safe: the window ({window:?}) must be at least the TTL of every tier \
                 ({longest:?}) and at most Ttl::MAX: entries are kept that long after their \
                 write"
            ));
        }
    }
    if freshness.throttle.is_zero() {
        return config("fail_safe_throttle must be greater than zero".into());
    }
    for (setting, timeout) in [
        ("soft_timeout", freshness.soft_timeout),
        ("hard_timeout", freshness.hard_timeout),
    ] {
        if timeout.is_some_and(|t| t.is_zero()) {
            return config(format!("{setting} must be greater than zero"));
        }
    }
    if let Some(soft) = freshness.soft_timeout {
        if freshness.hard_timeout.is_some_and(|hard| soft > hard) {
            return config(format!(
                "soft_timeout ({soft:?}) must not be longer than hard_timeout ({:?})",
                freshness.hard_timeout.unwrap_or_default()
            ));
        }
        if freshness.fail_safe.is_none() {
            return config(
                "soft_timeout needs fail_safe: it serves a stale copy, which fail-safe keeps"
                    .into(),
            );
        }
    }
    match lease {
        Some(_) if !has_l2 => config("fleet_single_flight needs an L2 (Redis)".into()),
        Some(lease) if lease < Duration::from_millis(10) || lease > Duration::from_secs(3600) => {
            config(format!(
                "fleet_single_flight: the lease must be between 10 ms and 1 h, got {lease:?}"
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::cache::TieredCache;
    use std::time::Duration;

    fn refused(builder: crate::builder::TieredCacheBuilder<u64, u64>, words: &str) {
        match builder.build() {
            Err(e) => assert!(e.message().contains(words), "{e}"),
            other => panic!("expected a config error about {words}, got {other:?}"),
        }
    }

    #[test]
    fn nonsense_freshness_settings_are_builder_errors() {
        let b = || TieredCache::<u64, u64>::builder("f").l1_ttl(Duration::from_secs(60));
        for beta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            refused(b().early_refresh(beta), "beta");
        }
        refused(b().fail_safe(Duration::from_secs(30)), "at least the TTL");
        refused(
            b().fail_safe(Duration::from_secs(3600))
                .fail_safe_throttle(Duration::ZERO),
            "throttle",
        );
        refused(
            b().fail_safe(Duration::from_secs(3600))
                .soft_timeout(Duration::from_secs(2))
                .hard_timeout(Duration::from_secs(1)),
            "must not be longer than hard_timeout",
        );
        refused(b().soft_timeout(Duration::from_secs(1)), "needs fail_safe");
        refused(b().hard_timeout(Duration::ZERO), "hard_timeout");
        refused(
            b().fleet_single_flight(Duration::from_secs(5)),
            "needs an L2",
        );
        assert!(b()
            .early_refresh(0.5)
            .stale_while_revalidate(Duration::from_secs(10))
            .fail_safe(Duration::from_secs(60))
            .soft_timeout(Duration::from_millis(100))
            .hard_timeout(Duration::from_secs(2))
            .build()
            .is_ok());
    }
}
