//! The circuit breaker in front of the shared tier.
//!
//! Closed → (N consecutive failures) → Open for the cool-down → Half-open: one probe
//! is let through; its success closes the breaker, its failure opens it again.
//! While open (and while the probe is out), calls are not made at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::{saturating_nanos, Clock};

/// The state of a cache's circuit breaker, in [`Stats`](crate::Stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through.
    #[default]
    Closed,
    /// Calls are skipped until the cool-down ends.
    Open,
    /// One probe call is allowed; its outcome decides.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: u64 },
    HalfOpen { probe_out: bool },
}

/// A circuit breaker with an injectable clock.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: u64,
    clock: Clock,
    opened: AtomicU64,
}

/// Leave to make one call. Report its outcome with [`Permit::success`] or
/// [`Permit::failure`]; a permit dropped without either (a cancelled call) frees
/// the probe slot without deciding anything.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    decided: bool,
}

/// A state change, for observers.
pub(crate) type Transition = Option<BreakerState>;

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration, clock: Clock) -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown: saturating_nanos(cooldown),
            clock,
            opened: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few plain fields: a panic elsewhere cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A permit, or `None` while the breaker is open (or its probe is out). The
    /// second value is the transition this caused (open → half-open).
    pub(crate) fn permit(&self) -> (Option<Permit<'_>>, Transition) {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => (Some(self.permit_of(false)), None),
            State::Open { until } if self.clock.now() >= until => {
                *state = State::HalfOpen { probe_out: true };
                (Some(self.permit_of(true)), Some(BreakerState::HalfOpen))
            }
            State::HalfOpen { probe_out: false } => {
                *state = State::HalfOpen { probe_out: true };
                (Some(self.permit_of(true)), None)
            }
            State::Open { .. } | State::HalfOpen { probe_out: true } => (None, None),
        }
    }

    fn permit_of(&self, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            probe,
            decided: false,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many times the breaker has opened.
    pub(crate) fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn open(&self, state: &mut State) -> Transition {
        *state = State::Open {
            until: self.clock.now().saturating_add(self.cooldown),
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        Some(BreakerState::Open)
    }
}

impl Permit<'_> {
    /// The call succeeded. Returns the transition it caused, if any.
    pub(crate) fn success(mut self) -> Transition {
        self.decided = true;
        let mut state = self.breaker.lock();
        match *state {
            State::HalfOpen { .. } if self.probe => {
                *state = State::Closed { failures: 0 };
                Some(BreakerState::Closed)
            }
            State::Closed { .. } => {
                *state = State::Closed { failures: 0 };
                None
            }
            _ => None,
        }
    }

    /// The call failed or timed out. Returns the transition it caused, if any.
    pub(crate) fn failure(mut self) -> Transition {
        self.decided = true;
        let breaker = self.breaker;
        let mut state = breaker.lock();
        match *state {
            State::HalfOpen { .. } if self.probe => breaker.open(&mut state),
            State::Closed { failures } if failures + 1 >= breaker.threshold => {
                breaker.open(&mut state)
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                None
            }
            _ => None,
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.decided {
            let mut state = self.breaker.lock();
            if let State::HalfOpen { .. } = *state {
                *state = State::HalfOpen { probe_out: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn breaker() -> (Breaker, ManualClock) {
        let clock = ManualClock::new();
        (
            Breaker::new(3, Duration::from_secs(30), clock.clone().into()),
            clock,
        )
    }

    fn fail(b: &Breaker) -> Transition {
        b.permit().0.expect("permitted").failure()
    }

    #[test]
    fn opens_after_n_consecutive_failures_only() {
        let (b, _) = breaker();
        fail(&b);
        fail(&b);
        assert_eq!(
            b.permit().0.unwrap().success(),
            None,
            "a success resets the count"
        );
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(fail(&b), Some(BreakerState::Open));
        assert!(b.permit().0.is_none(), "open: no calls");
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn half_open_lets_one_probe_through_then_closes_or_reopens() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(29));
        assert!(b.permit().0.is_none());
        clock.advance(Duration::from_secs(1));
        let (probe, transition) = b.permit();
        assert_eq!(transition, Some(BreakerState::HalfOpen));
        assert!(b.permit().0.is_none(), "one probe at a time");
        assert_eq!(probe.unwrap().failure(), Some(BreakerState::Open));
        assert!(b.permit().0.is_none(), "re-opened for a new cool-down");

        clock.advance(Duration::from_secs(30));
        let probe = b.permit().0.unwrap();
        assert_eq!(probe.success(), Some(BreakerState::Closed));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.permit().0.is_some());
    }

    #[test]
    fn a_cancelled_probe_frees_the_slot() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(30));
        drop(b.permit().0.unwrap());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.permit().0.is_some(), "the next caller probes");
    }
}
