//! Time as the cache sees it: the system's monotonic clock, or a manual one for tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The clock a cache reads expiry times from.
///
/// [`Clock::system`] (the default) is the monotonic clock. [`ManualClock`] only moves
/// when told to, so tests of expiry need not sleep.
#[derive(Debug, Clone)]
pub struct Clock {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    System(Instant),
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The system's monotonic clock.
    pub fn system() -> Self {
        Clock {
            inner: Inner::System(Instant::now()),
        }
    }

    /// Nanoseconds since this clock's origin.
    pub(crate) fn now(&self) -> u64 {
        match &self.inner {
            Inner::System(origin) => saturating_nanos(origin.elapsed()),
            Inner::Manual(now) => now.load(Ordering::Acquire),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

/// A clock that stands still until [`advance`](ManualClock::advance)d: for tests.
///
/// ```
/// use std::time::Duration;
/// use tiered::{ManualClock, TieredCache};
///
/// let clock = ManualClock::new();
/// let cache = TieredCache::<String, u32>::builder("users")
///     .clock(clock.clone())
///     .build()
///     .unwrap();
/// clock.advance(Duration::from_secs(3600)); // every entry written before now is expired
/// # drop(cache);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(saturating_nanos(by), Ordering::AcqRel);
    }
}

impl From<ManualClock> for Clock {
    fn from(clock: ManualClock) -> Self {
        Clock {
            inner: Inner::Manual(clock.now),
        }
    }
}

pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
