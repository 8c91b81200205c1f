//! The circuit breaker in front of the shared tier.
//!
//! Closed → (N consecutive failures) → Open. While open, no call is made at all,
//! and a background task probes the store (`PING`, off the read path): first after
//! the probe delay, then with exponential backoff and jitter up to the cool-down.
//! The first successful probe closes the breaker, so a blip of Redis costs about
//! the probe delay, not the whole cool-down. Outside a tokio runtime (no task can
//! be spawned) the breaker falls back to a read-path probe: after the cool-down
//! one call is let through (half-open); its success closes the breaker, its
//! failure opens it again.
//!
//! The breaker knows no store: it is given a probe (a closure that pings
//! whatever it guards). One breaker serves every cache on one store (see
//! `remote/gate.rs`): they share its state, its probe and its transitions (each
//! cache's observer hears them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::backoff::Backoff;
use crate::clock::{saturating_nanos, Clock};
use crate::error::BoxError;
use crate::observe::{BreakerState, Report};

/// How long one background probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A failed probe is tried once more after this.
const RETRY_PROBE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    /// `probing`: a background task decides when to close; reads never probe.
    Open {
        until: u64,
        probing: bool,
    },
    HalfOpen {
        probe_out: bool,
    },
}

/// The breaker's settings, from the builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    pub(crate) failures: u32,
    /// The backoff cap of background probes, and the wait before a read-path probe.
    pub(crate) cooldown: Duration,
    /// The first background probe's delay.
    pub(crate) probe_delay: Duration,
}

/// A circuit breaker with an injectable clock.
pub(crate) struct Breaker {
    state: Mutex<State>,
    settings: BreakerSettings,
    clock: Clock,
    opened: AtomicU64,
    /// Pings what the breaker guards, while open.
    probe: Probe,
    /// The reports of the caches that use this breaker.
    listeners: Mutex<Vec<Weak<Report>>>,
    this: Weak<Breaker>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A check that the guarded store answers (its `PING`).
pub(crate) type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// Leave to make one call. Report its outcome with [`Permit::success`] or
/// [`Permit::failure`]; a permit dropped without either (a cancelled call) frees
/// the probe slot without deciding anything.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    decided: bool,
}

/// A state change.
pub(crate) type Transition = Option<BreakerState>;

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings, clock: Clock, probe: Probe) -> Arc<Self> {
        Arc::new_cyclic(|this| Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            settings: BreakerSettings {
                failures: settings.failures.max(1),
                ..settings
            },
            clock,
            opened: AtomicU64::new(0),
            probe,
            listeners: Mutex::new(Vec::new()),
            this: this.clone(),
        })
    }

    /// Reports this breaker's transitions to `report` (as long as it lives).
    pub(crate) fn listen(&self, report: &Arc<Report>) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.retain(|l| l.strong_count() > 0);
        listeners.push(Arc::downgrade(report));
    }

    fn notify(&self, transition: Transition) -> Transition {
        if transition.is_some() {
            let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            for report in listeners.iter().filter_map(Weak::upgrade) {
                report.breaker(transition);
            }
        }
        transition
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few plain fields: a panic elsewhere cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A permit, or `None` while the breaker is open (or its probe is out). The
    /// second value is the transition this caused (open → half-open), already
    /// reported to the listeners.
    pub(crate) fn permit(&self) -> (Option<Permit<'_>>, Transition) {
        let (permit, transition) = {
            let mut state = self.lock();
            match *state {
                State::Closed { .. } => (Some(self.permit_of(false)), None),
                State::Open {
                    until,
                    probing: false,
                } if self.clock.now() >= until => {
                    *state = State::HalfOpen { probe_out: true };
                    (Some(self.permit_of(true)), Some(BreakerState::HalfOpen))
                }
                State::HalfOpen { probe_out: false } => {
                    *state = State::HalfOpen { probe_out: true };
                    (Some(self.permit_of(true)), None)
                }
                State::Open { .. } | State::HalfOpen { probe_out: true } => (None, None),
            }
        };
        (permit, self.notify(transition))
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

    /// Opens the breaker and starts the background probe (when a tokio runtime
    /// can run it).
    /// (The caller starts the probe once it released the state's lock:
    /// [`start_probe`](Self::start_probe).)
    fn open(&self, state: &mut State) -> Transition {
        let probing = tokio::runtime::Handle::try_current().is_ok();
        *state = State::Open {
            until: self
                .clock
                .now()
                .saturating_add(saturating_nanos(self.settings.cooldown)),
            probing,
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        Some(BreakerState::Open)
    }

    /// Starts the background probe of a breaker that just opened, if it waits
    /// for one (its state's lock must not be held: a task dropped at once by a
    /// runtime shutting down hands the decision back under that lock).
    fn start_probe(&self) {
        if !self.is_probing() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let lost = LostProbe(Some(self.this.clone()));
            runtime.spawn(probe(self.this.clone(), self.settings, lost));
        }
    }

    /// A background probe succeeded: close (unless something else decided first).
    fn probed(&self) -> Transition {
        let transition = {
            let mut state = self.lock();
            match *state {
                State::Open { probing: true, .. } => {
                    *state = State::Closed { failures: 0 };
                    Some(BreakerState::Closed)
                }
                _ => None,
            }
        };
        self.notify(transition)
    }

    fn is_probing(&self) -> bool {
        matches!(*self.lock(), State::Open { probing: true, .. })
    }
}

/// Probes `breaker`'s store until a `PING` succeeds (then closes the breaker) or
/// the breaker is gone or no longer waiting for this probe. Delays: the probe
/// delay, doubling up to the cool-down, each plus up to 25% jitter.
/// `lost` (dropped with this future, polled or not: its runtime shut down)
/// hands the decision back to the read path (half-open after the cool-down).
async fn probe(breaker: Weak<Breaker>, settings: BreakerSettings, mut lost: LostProbe) {
    let mut backoff = Backoff::new(settings.probe_delay, settings.cooldown, 0.25);
    loop {
        backoff.wait().await;
        let Some(b) = breaker.upgrade() else {
            return;
        };
        if !b.is_probing() {
            lost.disarm(); // decided otherwise: not this probe's to hand back
            return;
        }
        let probe = Arc::clone(&b.probe);
        drop(b);
        let ping = || async {
            matches!(
                tokio::time::timeout(PROBE_TIMEOUT, probe()).await,
                Ok(Ok(()))
            )
        };
        // A reconnecting client's first command after a restart fails (it finds
        // its old connection broken and reconnects): try once more, shortly.
        let ok = ping().await || {
            tokio::time::sleep(RETRY_PROBE).await;
            ping().await
        };
        let Some(b) = breaker.upgrade() else {
            return;
        };
        if ok {
            tracing::info!("L2 probe succeeded: closing the circuit breaker");
            lost.disarm();
            b.probed();
            return;
        }
        tracing::debug!("L2 probe failed");
    }
}

/// Hands an open breaker's decision back to the read path when its background
/// probe ends without closing it (its task dropped).
struct LostProbe(Option<Weak<Breaker>>);

impl LostProbe {
    /// The probe ended as it should: nothing to hand back.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for LostProbe {
    fn drop(&mut self) {
        let Some(breaker) = self.0.take().and_then(|b| b.upgrade()) else {
            return;
        };
        if let Ok(mut state) = breaker.state.lock() {
            if let State::Open {
                until,
                probing: true,
            } = *state
            {
                *state = State::Open {
                    until,
                    probing: false,
                };
            }
        };
    }
}

impl Permit<'_> {
    /// The call succeeded. Returns the transition it caused, if any.
    pub(crate) fn success(mut self) -> Transition {
        self.decided = true;
        let transition = self.decide_success();
        self.breaker.notify(transition)
    }

    fn decide_success(&self) -> Transition {
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
        let transition = self.decide_failure();
        if transition == Some(BreakerState::Open) {
            self.breaker.start_probe();
        }
        self.breaker.notify(transition)
    }

    fn decide_failure(&self) -> Transition {
        let breaker = self.breaker;
        let mut state = breaker.lock();
        match *state {
            State::HalfOpen { .. } if self.probe => breaker.open(&mut state),
            State::Closed { failures } if failures + 1 >= breaker.settings.failures => {
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
    use std::sync::atomic::AtomicBool;

    /// A store that only answers `PING`, as told.
    #[derive(Debug, Default)]
    struct Pingable {
        up: AtomicBool,
        pings: AtomicU64,
    }

    fn probe_of(store: &Arc<Pingable>) -> Probe {
        let store = Arc::clone(store);
        Arc::new(move || {
            store.pings.fetch_add(1, Ordering::SeqCst);
            let up = store.up.load(Ordering::SeqCst);
            Box::pin(async move {
                if up {
                    Ok(())
                } else {
                    Err("down".into())
                }
            })
        })
    }

    fn settings(probe_delay: Duration) -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            cooldown: Duration::from_secs(30),
            probe_delay,
        }
    }

    fn breaker() -> (Arc<Breaker>, ManualClock) {
        let clock = ManualClock::new();
        let store = Arc::new(Pingable::default());
        (
            Breaker::new(
                settings(Duration::from_millis(500)),
                clock.clone().into(),
                probe_of(&store),
            ),
            clock,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn while_open_a_background_probe_closes_it_and_reads_never_probe() {
        let store = Arc::new(Pingable::default());
        let b = Breaker::new(
            settings(Duration::from_millis(500)),
            Clock::system(),
            probe_of(&store),
        );
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(b.state(), BreakerState::Open);
        // Probes back off (0.5 s, 1 s, 2 s, ...; each a ping and one retry);
        // reads get no permit meanwhile.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(b.permit().0.is_none(), "reads never probe");
        let pings = store.pings.load(Ordering::SeqCst);
        assert!((4..=6).contains(&pings), "{pings} pings in 4 s");
        store.up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.permit().0.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn probe_backoff_is_capped_by_the_cooldown() {
        let store = Arc::new(Pingable::default());
        let b = Breaker::new(
            BreakerSettings {
                failures: 1,
                cooldown: Duration::from_secs(2),
                probe_delay: Duration::from_millis(500),
            },
            Clock::system(),
            probe_of(&store),
        );
        fail(&b);
        tokio::time::sleep(Duration::from_secs(60)).await;
        // 0.5 + 1 + 2 + 2 + ... (each up to 25% longer, plus 0.1 s for the retry):
        // at least 60 / 2.6 probes of two pings.
        let pings = store.pings.load(Ordering::SeqCst);
        assert!(pings >= 46, "{pings} pings in 60 s");
        drop(b);
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
    fn a_probe_whose_runtime_shut_down_hands_the_decision_to_reads() {
        let (b, clock) = breaker();
        {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime.block_on(async {
                for _ in 0..3 {
                    fail(&b);
                }
            });
            assert!(b.is_probing(), "a background probe was started");
        } // the runtime, and its probe task, are gone
        assert!(!b.is_probing());
        clock.advance(Duration::from_secs(30));
        assert!(b.permit().0.is_some(), "a read probes after the cool-down");
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
