//! Freshness settings and their arithmetic: how long an entry is fresh, how long
//! it is kept stale (stale-while-revalidate, fail-safe), and where its XFetch
//! early-refresh window starts.
//!
//! Early refresh follows Vattani, Chierichetti, Lowenstein, "Optimal Probabilistic
//! Cache Stampede Prevention" (VLDB 2015): a hit at time `t` on an entry fresh until
//! `e`, whose load took `δ`, refreshes it in the background when `t − δ·β·ln(u) ≥ e`
//! for a uniform `u ∈ (0, 1]`. Hits before `e − 37·δ·β` cannot draw a refresh
//! (`−ln u ≤ 37` for a 53-bit `u`), so a hit there costs one comparison. The draw
//! itself is [`Entry::refresh_early`](crate::entry::Entry::refresh_early).

use std::time::Duration;

use crate::clock::saturating_nanos;
use crate::policy::Ttl;

/// The default XFetch β: 1 is the paper's optimum for an exponential arrival
/// process; larger refreshes earlier.
pub const DEFAULT_EARLY_REFRESH_BETA: f64 = 1.0;
/// The default time a stale copy served by fail-safe is served again before the
/// loader is retried.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(10);

/// A suggested life of a fleet-wide lease
/// ([`fleet_single_flight`](crate::TieredCacheBuilder::fleet_single_flight)): it
/// should outlast a load.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// How far before expiry (in load durations × β) an XFetch draw can succeed.
pub(crate) const XFETCH_REACH: f64 = 37.0;

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
                // Any finite beta and any load (an L2 entry's is foreign input):
                // past what a Duration holds, the window starts now.
                let reach = Duration::try_from_secs_f64(load.as_secs_f64() * beta * XFETCH_REACH)
                    .map_or(u64::MAX, saturating_nanos);
                fresh_until.saturating_sub(reach).max(now)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_betas_and_hostile_load_times_open_the_window_now_without_a_panic() {
        let now = 1_000;
        let fresh_until = 10_000_000_000;
        for (beta, load) in [
            (f64::MAX, Duration::from_millis(1)),
            (1e300, Duration::from_secs(1)),
            (1e6, Duration::from_micros(u64::from(u32::MAX))),
            (f64::MIN_POSITIVE, Duration::MAX),
        ] {
            let freshness = Freshness {
                early_beta: Some(beta),
                ..Freshness::default()
            };
            let from = freshness.early_from(now, fresh_until, load);
            assert!(
                (now..=fresh_until).contains(&from),
                "{beta} {load:?}: {from}"
            );
        }
        let huge = Freshness {
            early_beta: Some(f64::MAX),
            ..Freshness::default()
        };
        assert_eq!(
            huge.early_from(now, fresh_until, Duration::from_secs(1)),
            now
        );
    }
}
