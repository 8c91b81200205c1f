//! [`Health`]: what a readiness probe or a status page needs to know of a
//! cache, at one instant.

use std::time::Duration;

use serde::Serialize;

use super::BreakerState;

/// A cache's health at one instant, from
/// [`TieredCache::health`](crate::TieredCache::health). It serializes with serde
/// (durations as seconds and nanoseconds), for any HTTP framework's readiness or
/// status handler.
///
/// A degraded cache still answers every read (from L1 and the loader): Redis
/// never makes a read fail. What degrades is sharing (L2 hits, other
/// instances' invalidations) and what is owed to Redis.
///
/// ```
/// # use tiered::TieredCache;
/// let cache = TieredCache::<u64, u64>::builder("users").build().unwrap();
/// let health = cache.health();
/// assert!(health.l2.is_none() && health.bus.is_none() && !health.degraded());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// The cache's name.
    pub cache: String,
    /// The shared tier, if the cache has one.
    pub l2: Option<L2Health>,
    /// The invalidation bus, if the cache has one.
    pub bus: Option<BusHealth>,
}

/// The shared tier's part of [`Health`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct L2Health {
    /// The circuit breaker's state (shared by every cache on the same store).
    pub breaker: BreakerState,
    /// How many times the breaker opened.
    pub breaker_opened: u64,
    /// Changes this instance owes the store (deletions, walks, tag stamps that
    /// could not reach it), replayed in the background. While a deletion is
    /// owed, this instance does not read L2.
    pub owed: usize,
    /// This cache's last failed or timed-out store call, if any.
    pub last_error: Option<L2Error>,
}

/// A failed or timed-out store call, in [`L2Health`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct L2Error {
    /// What the call was (`get`, `fill`, `delete`, `stamp_tags`, ...).
    pub op: String,
    /// Its error (`timed out` for a timeout).
    pub error: String,
    /// How long ago it failed.
    pub ago: Duration,
}

/// The bus's part of [`Health`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BusHealth {
    /// Whether the listener has started: it starts with the cache's first
    /// miss or change made in a tokio runtime (outside one, no listener runs,
    /// and other instances' messages are not heard).
    pub listening: bool,
    /// Whether the subscription is up now (false until it first is).
    pub subscribed: bool,
    /// How long it has been in that state, since the listener started.
    pub since: Option<Duration>,
    /// Messages kept to be sent: their publish failed (they are sent again
    /// in the background) or is under way.
    pub unsent: usize,
    /// Whether the last publish failed (and none succeeded since).
    pub publish_failing: bool,
}

impl Health {
    /// Whether anything is degraded: the breaker not closed, changes owed to
    /// the store, the subscription down once listening, or publishes failing.
    /// (A fresh, idle instance is not degraded, nor is one whose messages are
    /// on their way.)
    pub fn degraded(&self) -> bool {
        let l2 =
            (self.l2.as_ref()).is_some_and(|l2| l2.breaker != BreakerState::Closed || l2.owed > 0);
        let bus = (self.bus.as_ref())
            .is_some_and(|bus| (bus.listening && !bus.subscribed) || bus.publish_failing);
        l2 || bus
    }
}
