//! One flight per key: how a missing key is read from L2, loaded, filled and
//! committed, and what the callers that waited on it get.
//!
//! The first caller of a missing key runs its flight (`coalesce.rs`); callers that
//! come meanwhile wait for the outcome it publishes (`outcome.rs`). A flight
//! writes L1 itself, through the fence (`run.rs`). Each attempt takes a fence
//! ticket, reads L2 (leaving a fill reservation on a miss), loads, fills L2 only
//! if the key still holds what the read saw, and commits L1 only if no
//! invalidation came since the ticket. An attempt superseded anywhere (locally,
//! or by another instance through L2) starts over, up to [`MAX_LOAD_ATTEMPTS`]
//! times.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::engine::Core;
use crate::entry::Entry;
use crate::error::Error;
use crate::key::{CacheKey, CacheValue};
use crate::observe::{trace, Counter};

pub(crate) mod coalesce;
mod lease;
pub(crate) mod outcome;
mod run;

use self::coalesce::{Joined, Runner};
use self::outcome::{Failure, Fetched, Flight, Job};
use self::run::panic_message;

/// How many times a flight superseded by an invalidation starts over before its
/// value is returned (to the caller that ran it only) without being cached.
const MAX_LOAD_ATTEMPTS: u32 = 3;

/// The type of "no load of the caller's own" (the configured loader is used).
type NoLoad<V> = std::future::Ready<Result<Fetched<V>, Failure>>;

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// The value of `key` through its flight: `first` is this caller's own load
    /// (else the configured loader is used).
    pub(crate) async fn fly<F>(
        self: &Arc<Self>,
        key: &K,
        first: Option<F>,
        job: Job<K, V>,
    ) -> Result<Option<V>, Error>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        match self.fly_raw(key, first, job).await {
            Ok(entry) => Ok(entry.value),
            Err(flight) => flight.to_result(key),
        }
    }

    /// A read's miss (`op` is the method): its flight, in the read's span
    /// (which the flight records the tier it reached on), with a failure
    /// recorded there too. Boxed here, out of line: the miss path's state
    /// machine is large, and neither it nor its construction belongs in the
    /// read's own future and frame, which a hit runs through.
    #[inline(never)]
    pub(crate) fn read_miss<'a, F>(
        self: &'a Arc<Self>,
        op: &'static str,
        key: K,
        first: Option<F>,
        job: Job<K, V>,
    ) -> Pin<Box<impl Future<Output = Result<Option<V>, Error>> + 'a>>
    where
        F: Future<Output = Result<Fetched<V>, Failure>> + 'a,
    {
        Box::pin(async move {
            let span = self.read_span(op, &key);
            let job = Job {
                span: span.clone(),
                ..job
            };
            let result = self.fly(&key, first, job).instrument(span.clone()).await;
            if let Err(error) = &result {
                trace::failed(&span, error.label());
            }
            result
        })
    }

    /// A read's L1 hit (`op` is the method): its span, if a subscriber wants
    /// one.
    #[inline(always)]
    pub(crate) fn read_hit<Q>(&self, op: &'static str, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: ToOwned<Owned = K> + ?Sized,
    {
        trace::l1_hit(self.name(), op, || self.traced_key(key));
    }

    /// The flight's own outcome: for callers (the `#[cached_tier]` support) that
    /// need a failure's original error back. `Ok` is an entry another flight
    /// cached meanwhile. [`Flight::Superseded`] only reaches the caller that ran
    /// the flight: a waiter given it flies again, with its own `first`.
    ///
    /// A flight with a `'static` loader (the configured one, `get_or_load`'s)
    /// runs in a task of its own: a caller
    /// that gives up (a timeout, a dropped request) stops waiting, but the load
    /// goes on and fills the cache, and the next caller joins it instead of
    /// starting another. A caller holding a stale copy waits at most the soft
    /// timeout for it.
    pub(crate) async fn fly_raw<F>(
        self: &Arc<Self>,
        key: &K,
        mut first: Option<F>,
        mut job: Job<K, V>,
    ) -> Result<Entry<V>, Arc<Flight<V>>>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        self.start_bus(true).await;
        let can_load = first.is_some() || job.loader.is_some() || self.loader.is_some();
        let detach = first.is_none() && self.can_refresh(job.loader.is_some());
        // A stale copy this caller takes at the soft timeout (detached loads only).
        let soft = (self.plan(job.plan.as_ref()).freshness.soft_timeout)
            .filter(|_| detach)
            .zip(job.fallback.clone());
        let mut round = 1;
        loop {
            let (waiting, ran, overtaken) = match self.flights.join(&self.fence, key, can_load) {
                Joined::Waiter(outcome) => (outcome, false, false),
                Joined::Overtaken(outcome) => (outcome, false, true),
                Joined::Runner(runner) => {
                    // A flight that ended just before this one began left its
                    // value in L1: this caller got another caller's load.
                    let skips_l1 = self.plan(job.plan.as_ref()).skip.l1_reads;
                    if let Some(entry) = self.fresh_in_l1(key).await.filter(|_| !skips_l1) {
                        self.report.event(Counter::Coalesced);
                        trace::tier(&job.span, "l1", true);
                        runner.finish(Arc::new(Flight::Settled(entry.clone())));
                        return Ok(entry);
                    }
                    let this_job = Job {
                        prepared: job.prepared.take(),
                        fallback: job.fallback.clone(),
                        loader: job.loader.clone(),
                        plan: job.plan.clone(),
                        span: job.span.clone(),
                        ..job
                    };
                    if !detach {
                        let flight = Arc::new(self.run(key, first.take(), this_job).await);
                        runner.finish(Arc::clone(&flight));
                        return self.served(key, Err(flight), &job).await;
                    }
                    let outcome = runner.outcome();
                    self.spawn_flight(key, runner, this_job);
                    (outcome, true, false)
                }
            };
            let flight = match &soft {
                Some((after, stale)) => {
                    let mut waiting = std::pin::pin!(coalesce::outcome(waiting));
                    match tokio::time::timeout(*after, &mut waiting).await {
                        Ok(flight) => flight,
                        // The copy, unless it was invalidated while this
                        // caller waited (then it waits on).
                        Err(_) if self.still_valid(key, stale).await => {
                            self.report.event(Counter::SoftTimeouts);
                            trace::tier(&job.span, "stale", false);
                            let flight = Arc::new(Flight::Stale(stale.entry.clone()));
                            return self.served(key, Err(flight), &job).await;
                        }
                        Err(_) => waiting.await,
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
                self.report.event(Counter::Coalesced);
                trace::tier(&job.span, "shared", false);
                // A flight this caller joined may have read before a tag
                // invalidation this caller saw return (tags do not move the
                // fence): its value is taken only if its tags still hold.
                let invalidated = match flight.tags() {
                    Some(tags) => !self.tags_hold(Some(tags)).await,
                    None => false,
                };
                let superseded = matches!(*flight, Flight::Superseded(_));
                if (superseded || invalidated) && round < MAX_LOAD_ATTEMPTS {
                    round += 1;
                    continue;
                }
            }
            return self.served(key, Err(flight), &job).await;
        }
    }

    /// `key`'s L1 entry if it is fresh. Reads L1 only if the key is there, so
    /// that a miss is not counted twice in moka's frequency sketch, and then
    /// under the key's fence locks: an invalidation that has moved the fence but
    /// not yet emptied L1 is waited for, so that the entry this flight hands its
    /// waiters is no older than the ticket it joined them with.
    async fn fresh_in_l1(&self, key: &K) -> Option<Entry<V>> {
        if !self.l1.contains_key(key) {
            return None;
        }
        let entry = self.fence.exclusive(key, self.l1.get_locked(key)).await?;
        let readable = entry.tags.as_ref().is_none_or(|t| self.tags.holds(t));
        (readable && entry.is_fresh(self.clock.now())).then_some(entry)
    }

    /// Counts a stale value handed to a caller, and starts the refresh of a stale
    /// entry a flight took from L2 (stale-while-revalidate), with `job`'s loader.
    async fn served(
        self: &Arc<Self>,
        key: &K,
        result: Result<Entry<V>, Arc<Flight<V>>>,
        job: &Job<K, V>,
    ) -> Result<Entry<V>, Arc<Flight<V>>> {
        let entry = match &result {
            Ok(entry) => entry,
            Err(flight) => match &**flight {
                Flight::Settled(entry) => entry,
                Flight::Stale(_) => {
                    self.report.event(Counter::StaleServed);
                    trace::tier(&job.span, "stale", false);
                    return result;
                }
                _ => return result,
            },
        };
        // Only stale-while-revalidate commits an entry that is already stale (an
        // entry that went stale since its commit was fresh when it was read).
        let now = self.clock.now();
        let freshness = &self.plan(job.plan.as_ref()).freshness;
        if !freshness.stale_while_revalidate.is_zero()
            && entry.expires != 0
            && !entry.is_fresh(now)
            && entry.revalidates(freshness, now)
        {
            self.report.event(Counter::StaleServed);
            self.refresh(key, entry, job.loader.clone(), job.plan.clone())
                .await;
        }
        result
    }

    /// Starts `key`'s flight with `job`'s loader (else the configured one) in a
    /// task of its own, unless one is on; returns whether it started one. Needs
    /// a tokio runtime.
    pub(crate) fn launch(self: &Arc<Self>, key: &K, job: Job<K, V>) -> bool {
        let Joined::Runner(runner) = self.flights.join(&self.fence, key, true) else {
            return false;
        };
        self.spawn_flight(key, runner, job);
        true
    }

    /// Runs `key`'s flight with `job`'s loader (else the configured one) in a
    /// task of its own. A
    /// panic anywhere in it is the flight's outcome (its waiters would otherwise
    /// start the same flight again, and again).
    fn spawn_flight(self: &Arc<Self>, key: &K, runner: Runner<K, V>, job: Job<K, V>) {
        let (cache, owned) = (Arc::clone(self), key.clone());
        let span = job.span.clone();
        let flight = async move {
            let run = cache.run(&owned, None::<NoLoad<V>>, job);
            let flight = match AssertUnwindSafe(run).catch_unwind().await {
                Ok(flight) => flight,
                Err(panic) => Flight::Failed(Failure::Panicked(panic_message(&*panic))),
            };
            runner.finish(Arc::new(flight));
        };
        tokio::spawn(flight.instrument(span));
    }
}
