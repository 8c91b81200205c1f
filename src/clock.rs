//! Time as the cache sees it: the system's monotonic clock, or a manual one for tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The clock a cache reads expiry times from.
///
/// [`Clock::system`] (the default) is the monotonic clock. [`ManualClock`] only moves
/// when told to, so tests of expiry need not sleep.
///
/// Every L1 hit reads the clock once. The system clock reads the CPU's time-stamp
/// counter where it is invariant (through `quanta`, which calibrates it against
/// the OS's monotonic clock once per process, in 0.5 to 200 ms, and falls back to
/// that clock elsewhere): about 20 instructions, where `Instant::now` took about
/// 100 (`scripts/callgrind-l1-hit`).
#[derive(Debug, Clone)]
pub struct Clock {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    /// A raw reading of `clock` taken as the cache was built.
    System {
        clock: quanta::Clock,
        origin: u64,
    },
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The system's monotonic clock.
    pub fn system() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Clock {
            inner: Inner::System { clock, origin },
        }
    }

    /// Nanoseconds since this clock's origin. Monotonic where the time-stamp
    /// counter is synchronized across cores (as quanta requires it to be
    /// invariant); a reading below the origin counts as the origin.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match &self.inner {
            Inner::System { clock, origin } => clock.delta_as_nanos(*origin, clock.raw()),
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
