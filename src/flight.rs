//! One flight per key: how a missing key is read from L2, loaded, filled and
//! committed, and what the callers that waited on it get.
//!
//! The first caller of a missing key runs its flight (`coalesce.rs`); callers that
//! come meanwhile wait for the outcome it publishes. A flight writes L1 itself,
//! through the fence. Each attempt takes a fence ticket, reads L2 (leaving a fill reservation on a miss),
//! loads, fills L2 only if the key still holds what the read saw, and commits L1
//! only if no invalidation came since the ticket. An attempt superseded anywhere
//! (locally, or by another instance through L2) starts over, up to
//! [`MAX_LOAD_ATTEMPTS`] times.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tracing::Instrument;

use crate::cache::{CacheValue, TieredCache};
use crate::clock::saturating_nanos;
use crate::codec::Decoded;
use crate::entry::Entry;
use crate::error::{BoxError, Error, SharedError};
use crate::fence::Ticket;
use crate::key::CacheKey;
use crate::l2::{Filled, L2Read};
use crate::lease::Leased;
use crate::observe::{Counter, LoadOutcome};
use crate::refresh::Fallback;

/// How many times a flight superseded by an invalidation starts over before its
/// value is returned (to the caller that ran it only) without being cached.
const MAX_LOAD_ATTEMPTS: u32 = 3;

/// One millisecond in clock nanoseconds: L2 times are kept in milliseconds.
const MILLI: u64 = 1_000_000;

/// How one flight ended, as shared with every caller that waited on it.
#[derive(Clone)]
pub(crate) enum Flight<V> {
    Settled(Entry<V>),
    /// What a load returned that is not to be cached (`#[cached_tier]`'s `unless`,
    /// or an absence without `negative`): the answer for every caller of this
    /// flight, cached nowhere.
    Unkept(Option<V>),
    /// Loaded, but invalidated each time before it could be cached, with nothing
    /// to load again with. Only the caller that ran the flight may take this value
    /// (its call overlapped the invalidation); waiters fly again.
    Superseded(Entry<V>),
    /// The load failed (or passed a timeout) and a stale copy is served instead.
    Stale(Entry<V>),
    Failed(Failure),
}

/// Why a load failed.
#[derive(Clone)]
pub(crate) enum Failure {
    Load(SharedError),
    Panicked(String),
    /// Past the hard timeout.
    TimedOut(Duration),
    /// The error of a `#[cached_tier]` function, returned as it is to its callers.
    Foreign {
        error: Arc<dyn Any + Send + Sync>,
        type_name: &'static str,
    },
}

/// What a flight starts from, beyond its key and its own load.
pub(crate) struct Job<V> {
    /// The L2 read done ahead (by `get_many`).
    pub(crate) prepared: Option<Prepared<V>>,
    /// The load is one of its own, to time and count (false: a share of a batch
    /// that is counted once, by `get_many`).
    pub(crate) own_load: bool,
    /// A stale copy to serve if the load fails.
    pub(crate) fallback: Option<Fallback<V>>,
    /// A background refresh of an entry fresh until this instant: an L2 entry is
    /// taken instead of loading only if it is newer.
    pub(crate) refresh_after: Option<u64>,
    /// Whether the hard timeout applies (not to `#[cached_tier]` bodies, whose
    /// callers get their function's own error type).
    pub(crate) time_limit: bool,
}

impl<V> Default for Job<V> {
    fn default() -> Self {
        Job {
            prepared: None,
            own_load: true,
            fallback: None,
            refresh_after: None,
            time_limit: true,
        }
    }
}

/// What a flight's first load produced.
pub(crate) struct Fetched<V> {
    pub(crate) value: Option<V>,
    /// False: hand the value to the waiting callers, but cache nothing.
    pub(crate) keep: bool,
    /// A TTL for this entry in every tier, instead of the configured ones.
    pub(crate) ttl: Option<Duration>,
}

impl<V> Fetched<V> {
    pub(crate) fn cached(value: Option<V>) -> Self {
        Fetched {
            value,
            keep: true,
            ttl: None,
        }
    }
}

/// A `#[cached_tier]` function's error as seen by a plain `get` that shared its flight.
#[derive(Debug)]
struct ForeignError(&'static str);

impl fmt::Display for ForeignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the cached function failed with an error of type `{}`",
            self.0
        )
    }
}

impl std::error::Error for ForeignError {}

/// A flight's L2 read done ahead (by `get_many`, in one round trip), with the
/// ticket taken before it.
pub(crate) type Prepared<V> = (Ticket, L2Read<V>);

/// The type of "no load of the caller's own" (the configured loader is used).
type NoLoad<V> = std::future::Ready<Result<Fetched<V>, Failure>>;

mod coalesce;

pub(crate) use self::coalesce::Flights;
use self::coalesce::{Joined, Runner};

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// The value of `key` through its flight: `first` is this caller's own load
    /// (else the configured loader is used).
    pub(crate) async fn fly<F>(
        &self,
        key: &K,
        first: Option<F>,
        job: Job<V>,
    ) -> Result<Option<V>, Error>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        let result = self.fly_raw(key, first, job).await;
        self.settled(key, result)
    }

    /// The flight's own outcome: for callers (the `#[cached_tier]` support) that
    /// need a failure's original error back. `Ok` is an entry another flight
    /// cached meanwhile. [`Flight::Superseded`] only reaches the caller that ran
    /// the flight: a waiter given it flies again, with its own `first`.
    ///
    /// A flight with the configured loader runs in a task of its own: a caller
    /// that gives up (a timeout, a dropped request) stops waiting, but the load
    /// goes on and fills the cache, and the next caller joins it instead of
    /// starting another. A caller holding a stale copy waits at most the soft
    /// timeout for it.
    pub(crate) async fn fly_raw<F>(
        &self,
        key: &K,
        mut first: Option<F>,
        mut job: Job<V>,
    ) -> Result<Entry<V>, Arc<Flight<V>>>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        self.start_bus().await;
        let detach = first.is_none() && self.can_refresh();
        // A stale copy this caller takes at the soft timeout (detached loads only).
        let soft = (self.inner.freshness.soft_timeout.filter(|_| detach))
            .zip(job.fallback.as_ref().map(|f| f.entry.clone()));
        let mut round = 1;
        loop {
            let (waiting, ran, overtaken) = match self.join(key) {
                Joined::Waiter(outcome) => (outcome, false, false),
                Joined::Overtaken(outcome) => (outcome, false, true),
                Joined::Runner(runner) => {
                    // A flight that ended just before this one began left its
                    // value in L1: this caller got another caller's load.
                    if let Some(entry) = self.fresh_in_l1(key).await {
                        self.inner.report.event(Counter::Coalesced);
                        runner.finish(Arc::new(Flight::Settled(entry.clone())));
                        return Ok(entry);
                    }
                    let this_job = Job {
                        prepared: job.prepared.take(),
                        fallback: job.fallback.clone(),
                        ..job
                    };
                    if !detach {
                        let flight = Arc::new(self.run(key, first.take(), this_job).await);
                        runner.finish(Arc::clone(&flight));
                        return self.served(key, Err(flight)).await;
                    }
                    let outcome = runner.outcome();
                    self.spawn_flight(key, runner, this_job);
                    (outcome, true, false)
                }
            };
            let flight = match &soft {
                Some((after, stale)) => {
                    match tokio::time::timeout(*after, coalesce::outcome(waiting)).await {
                        Ok(flight) => flight,
                        Err(_) => {
                            self.inner.report.event(Counter::SoftTimeouts);
                            let flight = Arc::new(Flight::Stale(stale.clone()));
                            return self.served(key, Err(flight)).await;
                        }
                    }
                }
                None => coalesce::outcome(waiting).await,
            };
            // No outcome: the runner gave up; this caller may run the next flight.
            // A flight older than an invalidation this caller saw: the next one.
            let Some(flight) = flight.filter(|_| !overtaken) else {
                continue;
            };
            if !ran {
                self.inner.report.event(Counter::Coalesced);
                if matches!(*flight, Flight::Superseded(_)) && round < MAX_LOAD_ATTEMPTS {
                    round += 1;
                    continue;
                }
            }
            return self.served(key, Err(flight)).await;
        }
    }

    /// `key`'s L1 entry if it is fresh. Reads L1 only if the key is there, so
    /// that a miss is not counted twice in moka's frequency sketch.
    async fn fresh_in_l1(&self, key: &K) -> Option<Entry<V>> {
        let inner = &*self.inner;
        if !inner.l1.contains_key(key) {
            return None;
        }
        let entry = inner.l1.get(key).await?;
        entry.is_fresh(inner.clock.now()).then_some(entry)
    }

    /// Counts a stale value handed to a caller, and starts the refresh of a stale
    /// entry a flight took from L2 (stale-while-revalidate).
    async fn served(
        &self,
        key: &K,
        result: Result<Entry<V>, Arc<Flight<V>>>,
    ) -> Result<Entry<V>, Arc<Flight<V>>> {
        let entry = match &result {
            Ok(entry) => entry,
            Err(flight) => match &**flight {
                Flight::Settled(entry) => entry,
                Flight::Stale(_) => {
                    self.inner.report.event(Counter::StaleServed);
                    return result;
                }
                _ => return result,
            },
        };
        // Only stale-while-revalidate commits an entry that is already stale (an
        // entry that went stale since its commit was fresh when it was read).
        let now = self.inner.clock.now();
        let freshness = &self.inner.freshness;
        if !freshness.stale_while_revalidate.is_zero()
            && entry.expires != 0
            && !entry.is_fresh(now)
            && freshness.revalidates(entry, now)
        {
            self.inner.report.event(Counter::StaleServed);
            self.refresh(key, entry).await;
        }
        result
    }

    /// Starts `key`'s flight with the configured loader in a task of its own,
    /// unless one is on; returns whether it started one. Needs a tokio runtime.
    pub(crate) fn launch(&self, key: &K, job: Job<V>) -> bool {
        let Joined::Runner(runner) = self.join(key) else {
            return false;
        };
        self.spawn_flight(key, runner, job);
        true
    }

    /// Runs `key`'s flight with the configured loader in a task of its own. A
    /// panic anywhere in it is the flight's outcome (its waiters would otherwise
    /// start the same flight again, and again).
    fn spawn_flight(&self, key: &K, runner: Runner<K, V>, job: Job<V>) {
        let (cache, owned) = (self.clone(), key.clone());
        tokio::spawn(async move {
            let run = cache.run(&owned, None::<NoLoad<V>>, job);
            let flight = match AssertUnwindSafe(run).catch_unwind().await {
                Ok(flight) => flight,
                Err(panic) => Flight::Failed(Failure::Panicked(panic_message(&*panic))),
            };
            runner.finish(Arc::new(flight));
        });
    }

    /// The value a flight ended with, or its error.
    pub(crate) fn settled(
        &self,
        key: &K,
        result: Result<Entry<V>, Arc<Flight<V>>>,
    ) -> Result<Option<V>, Error> {
        match result {
            Ok(entry) => Ok(entry.value),
            Err(flight) => match &*flight {
                Flight::Settled(entry) | Flight::Superseded(entry) | Flight::Stale(entry) => {
                    Ok(entry.value.clone())
                }
                Flight::Unkept(value) => Ok(value.clone()),
                Flight::Failed(Failure::TimedOut(after)) => Err(Error::LoadTimedOut {
                    key: key.to_key_string(),
                    after: *after,
                }),
                Flight::Failed(Failure::Load(source)) => Err(Error::Load {
                    key: key.to_key_string(),
                    source: Arc::clone(source),
                }),
                Flight::Failed(Failure::Panicked(message)) => Err(Error::LoaderPanicked {
                    key: key.to_key_string(),
                    message: message.clone(),
                }),
                Flight::Failed(Failure::Foreign { type_name, .. }) => Err(Error::Load {
                    key: key.to_key_string(),
                    source: Arc::new(ForeignError(type_name)),
                }),
            },
        }
    }

    /// The flight itself, run by one caller (or in a task of its own).
    async fn run<F>(&self, key: &K, mut first: Option<F>, mut job: Job<V>) -> Flight<V>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        let inner = &*self.inner;
        let loader = inner.loader.as_deref();
        let can_load = first.is_some() || loader.is_some();
        let mut fallback = job.fallback.take();
        let mut last = None;
        for _ in 0..MAX_LOAD_ATTEMPTS {
            let (ticket, read) = match job.prepared.take() {
                Some((ticket, read)) => (ticket, Some(read)),
                None => {
                    let ticket = inner.fence.ticket(key);
                    let read = match &inner.l2 {
                        Some(l2) => Some(l2.get::<V>(&inner.report, &l2.key(key)).await),
                        None => None,
                    };
                    (ticket, read)
                }
            };
            let seen = match read {
                Some(L2Read::Hit(hit, seen)) => {
                    let now = inner.clock.now();
                    let entry = self.entry_from_l2(hit, now);
                    let newer = job
                        .refresh_after
                        .is_none_or(|after| entry.fresh_until > after.saturating_add(MILLI));
                    let revalidate = job.refresh_after.is_none()
                        && inner.freshness.revalidates(&entry, now)
                        && self.can_refresh();
                    if (entry.is_fresh(now) && newer) || revalidate {
                        // Fresh, or stale within stale-while-revalidate (served
                        // now; the caller starts the refresh).
                        if self.commit(key, ticket, &entry).await {
                            return Flight::Settled(entry);
                        }
                        self.count_superseded();
                        last = Some(entry);
                        continue;
                    }
                    fallback = Fallback::newer(fallback, Some(Fallback { entry, ticket }));
                    Some(seen)
                }
                Some(L2Read::Miss(seen)) => Some(seen),
                Some(L2Read::Unavailable) | None => None,
            };
            if first.is_none() && loader.is_none() {
                if !can_load {
                    return Flight::Settled(Entry::uncached(None));
                }
                break;
            }
            // A share of a `get_many` batch takes no lease: the batch loads
            // every key it holds anyway.
            let lease = match (&seen, &inner.l2) {
                (Some(_), Some(l2)) if inner.lease.is_some() && job.own_load => {
                    match self.lease(key, l2, ticket, job.refresh_after).await {
                        Leased::Held(lease) => Some(lease),
                        Leased::Filled(entry) => return Flight::Settled(entry),
                        Leased::Superseded(entry) => {
                            self.count_superseded();
                            last = Some(entry);
                            continue;
                        }
                        Leased::Free => None,
                    }
                }
                _ => None,
            };
            let started = Instant::now();
            let loaded = self.load(key, first.take(), &job).await;
            let took = started.elapsed();
            let fetched = match loaded {
                Ok(fetched) => fetched,
                Err(failure) => {
                    self.release(lease).await;
                    return self.fail_safe(key, fallback, failure).await;
                }
            };
            if !fetched.keep {
                self.release(lease).await;
                return Flight::Unkept(fetched.value);
            }
            let l1_ttl = fetched
                .ttl
                .unwrap_or_else(|| inner.ttl.l1_for(&fetched.value));
            let entry = Entry::new(
                fetched.value,
                inner.clock.now(),
                l1_ttl,
                &inner.freshness,
                took,
            );
            let mut filled = Filled::Unknown;
            if let (Some(l2), Some(seen)) = (&inner.l2, &seen) {
                let l2_ttl = fetched
                    .ttl
                    .unwrap_or_else(|| inner.ttl.l2_for(&entry.value));
                if !l2_ttl.is_zero() {
                    let lifetime = inner.freshness.lifetime(l2_ttl, took);
                    let l2_key = l2.key(key);
                    let value = entry.value.as_ref();
                    filled = l2.fill(&inner.report, &l2_key, seen, value, lifetime).await;
                }
            }
            self.release(lease).await;
            if filled == Filled::Superseded {
                self.count_superseded();
                last = Some(entry);
                continue;
            }
            if self.commit(key, ticket, &entry).await {
                return Flight::Settled(entry);
            }
            self.count_superseded();
            last = Some(entry);
        }
        match last {
            Some(entry) => Flight::Superseded(entry),
            None => Flight::Settled(Entry::uncached(None)),
        }
    }

    /// One load: this caller's own (`first`), or the configured loader's, within
    /// the hard timeout.
    async fn load<F>(&self, key: &K, first: Option<F>, job: &Job<V>) -> Result<Fetched<V>, Failure>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        let limit = self.inner.freshness.hard_timeout.filter(|_| job.time_limit);
        match (first, self.inner.loader.as_deref()) {
            (Some(first), _) if job.own_load => self.timed(1, within(limit, first)).await,
            (Some(share), _) => within(limit, share).await,
            (None, Some(loader)) => {
                let load = loader
                    .load(key)
                    .map(|r| r.map(Fetched::cached).map_err(shared));
                self.timed(1, within(limit, load)).await
            }
            (None, None) => Ok(Fetched::cached(None)),
        }
    }

    /// A failed load: the stale copy instead, if there is one still to be served
    /// (fail-safe), put back in L1 fresh for the throttle; else the failure.
    async fn fail_safe(
        &self,
        key: &K,
        fallback: Option<Fallback<V>>,
        failure: Failure,
    ) -> Flight<V> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        if let Some(Fallback { entry, ticket }) = fallback {
            if !entry.is_expired(now) {
                let throttled = entry.throttled(now, inner.freshness.throttle);
                if self.commit(key, ticket, &throttled).await {
                    tracing::warn!(cache = %inner.name, "load failed: serving a stale copy (fail-safe)");
                    inner.report.event(Counter::FailSafe);
                    return Flight::Stale(throttled);
                }
            }
        }
        Flight::Failed(failure)
    }

    /// The L1 entry of what L2 holds: fresh for at most the L1 TTL.
    pub(crate) fn entry_from_l2(&self, hit: Decoded<V>, now: u64) -> Entry<V> {
        let inner = &*self.inner;
        let l1_ttl = inner.ttl.l1_for(&hit.value).min(hit.fresh);
        let mut entry = Entry::new(hit.value, now, l1_ttl, &inner.freshness, hit.load);
        entry.expires = entry
            .expires
            .min(now.saturating_add(saturating_nanos(hit.remaining)))
            .max(entry.fresh_until);
        entry
    }

    /// Writes `entry` to L1 unless `key` was invalidated since `ticket`. Returns
    /// whether the fence let it through (also when L1 is off).
    pub(crate) async fn commit(&self, key: &K, ticket: Ticket, entry: &Entry<V>) -> bool {
        let inner = &*self.inner;
        let write = async {
            if inner.l1_enabled && !entry.is_expired(inner.clock.now()) {
                inner.l1.insert(key.clone(), entry.clone()).await;
            }
        };
        inner.fence.commit(key, ticket, write).await
    }

    fn count_superseded(&self) {
        self.inner.report.event(Counter::Superseded);
    }

    /// Runs a load of `keys` keys: times it, contains a panic, counts and reports it.
    pub(crate) async fn timed<T, F>(&self, keys: usize, load: F) -> Result<T, Failure>
    where
        T: Loaded,
        F: Future<Output = Result<T, Failure>>,
    {
        let inner = &*self.inner;
        inner.report.count(Counter::Loads);
        let span = tracing::debug_span!("tiered.load", cache = %inner.name, keys);
        let start = Instant::now();
        let result = AssertUnwindSafe(load).catch_unwind().instrument(span).await;
        let elapsed = start.elapsed();
        let (outcome, result) = match result {
            Ok(Ok(value)) => (value.outcome(), Ok(value)),
            Ok(Err(failure)) => (LoadOutcome::Error, Err(failure)),
            Err(panic) => (
                LoadOutcome::Panicked,
                Err(Failure::Panicked(panic_message(&*panic))),
            ),
        };
        if outcome == LoadOutcome::Error || outcome == LoadOutcome::Panicked {
            inner.report.count(Counter::LoadErrors);
            tracing::debug!(cache = %inner.name, ?outcome, "load failed");
        }
        inner
            .report
            .with_observer(|o| o.load(outcome, keys, elapsed));
        result
    }
}

/// What a load produced, as an [`Observer`](crate::Observer) sees it.
pub(crate) trait Loaded {
    fn outcome(&self) -> LoadOutcome;
}

impl<V> Loaded for Fetched<V> {
    fn outcome(&self) -> LoadOutcome {
        match self.value {
            Some(_) => LoadOutcome::Value,
            None => LoadOutcome::Absent,
        }
    }
}

impl<K, V> Loaded for HashMap<K, V> {
    fn outcome(&self) -> LoadOutcome {
        if self.is_empty() {
            LoadOutcome::Absent
        } else {
            LoadOutcome::Value
        }
    }
}

/// `load`, given up after `limit` (if any, and inside a tokio runtime).
async fn within<T>(
    limit: Option<Duration>,
    load: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match limit {
        Some(limit) if tokio::runtime::Handle::try_current().is_ok() => {
            match tokio::time::timeout(limit, load).await {
                Ok(result) => result,
                Err(_) => Err(Failure::TimedOut(limit)),
            }
        }
        _ => load.await,
    }
}

pub(crate) fn shared(error: BoxError) -> Failure {
    Failure::Load(Arc::from(error))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
