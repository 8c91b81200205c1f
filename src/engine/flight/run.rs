//! Running a flight: per attempt, a fence ticket, the L2 read (or the one
//! `get_many` did), the fleet lease, the load, the L2 fill and the L1 commit.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tracing::Instrument;

use crate::clock::saturating_nanos;
use crate::codec::Decoded;
use crate::engine::flight::lease::Leased;
use crate::engine::flight::outcome::{shared, Failure, Fetched, Flight, Job};
use crate::engine::flight::MAX_LOAD_ATTEMPTS;
use crate::engine::refresh::Fallback;
use crate::engine::tag_checks::Verdict;
use crate::engine::Core;
use crate::entry::{Entry, Tags};
use crate::fence::Ticket;
use crate::key::{CacheKey, CacheValue};
use crate::observe::{trace, Counter, LoadOutcome};
use crate::policy::Plan;
use crate::remote::{Filled, L2Read};
use crate::source::{Answer, DynLoader, LoadContext, Loaded, NOT_MODIFIED_WITHOUT_STALE};

/// One millisecond in clock nanoseconds: L2 times are kept in milliseconds.
const MILLI: u64 = 1_000_000;

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// The flight itself, run by one caller (or in a task of its own).
    pub(super) async fn run<F>(
        &self,
        key: &K,
        mut first: Option<F>,
        mut job: Job<K, V>,
    ) -> Flight<V>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        let loader = job.loader.clone();
        let loader = loader.as_deref().or(self.loader.as_deref());
        let can_load = first.is_some() || loader.is_some();
        // Entries of a flight whose loader can refresh them open an early
        // refresh window; others do not (a hit there would draw for nothing).
        let refreshable = self.can_refresh(job.loader.is_some());
        // A caller's own load (`get_with`, a `#[cached_tier]` body) runs once: a
        // retry never swaps in the configured loader, whose value or error is
        // not this caller's.
        let own = first.is_some() && job.own_load;
        let loader = loader.filter(|_| !own);
        let mut fallback = job.fallback.take();
        let plan = job.plan.clone();
        let plan = self.plan(plan.as_ref());
        let mut last = None;
        for _ in 0..MAX_LOAD_ATTEMPTS {
            let (ticket, born, read) = match job.prepared.take() {
                Some((ticket, read)) => {
                    let born = job.born.take().unwrap_or(0);
                    (ticket, born, Some(read))
                }
                None => {
                    self.sync_tag_clock().await;
                    let ticket = self.fence.ticket(key);
                    // Where this attempt's load begins on the tag clock.
                    let born = self.tags.clock();
                    // Only a read that will load, and fill, leaves a fill
                    // reservation. A call that skips both L2 reads and writes
                    // does not read (one that skips reads only still does,
                    // for its fill's compare-and-set).
                    let reserve = (first.is_some() || loader.is_some()) && !plan.skip.l2_writes;
                    let read = match &self.remote {
                        Some(remote) if !(plan.skip.l2_reads && plan.skip.l2_writes) => {
                            Some(remote.get::<V>(&remote.key(key), reserve).await)
                        }
                        _ => None,
                    };
                    (ticket, born, read)
                }
            };
            // A stale copy invalidated since it was taken (its key, or one of
            // its tags) is no longer a fallback, nor what a "not modified"
            // answer may bring back.
            if let Some(stale) = &fallback {
                if self.fence.changed_between(key, &stale.ticket, &ticket)
                    || self.known_invalidated(stale.entry.born, None)
                    || !self.tags_hold(stale.entry.tags.as_deref()).await
                {
                    fallback = None;
                }
            }
            let seen = match read {
                // Not this call's answer: a miss, whose fill replaces it.
                Some(L2Read::Hit(_, seen)) if plan.skip.l2_reads => Some(seen),
                Some(L2Read::Hit(hit, seen)) if !self.l2_tags_hold(hit.tags.as_deref()).await => {
                    // An entry a tag invalidation made unreadable: a miss, whose
                    // fill replaces it.
                    Some(seen)
                }
                Some(L2Read::Hit(hit, seen)) => {
                    let now = self.clock.now();
                    let entry = self.entry_from_l2(hit, now, refreshable, plan);
                    let newer = job
                        .refresh_after
                        .is_none_or(|after| entry.fresh_until > after.saturating_add(MILLI));
                    let revalidate = job.refresh_after.is_none()
                        && entry.revalidates(&plan.freshness, now)
                        && refreshable;
                    if (entry.is_fresh(now) && newer) || revalidate {
                        // Fresh, or stale within stale-while-revalidate (served
                        // now; the caller starts the refresh).
                        if self.commit(key, ticket, &entry, plan).await {
                            trace::tier(&job.span, "l2", true);
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
                    trace::tier(&job.span, "none", false);
                    return Flight::Settled(Entry::uncached(None));
                }
                break;
            }
            // A share of a `get_many` batch takes no lease: the batch loads
            // every key it holds anyway.
            // Nor does a call that skips L2's answer (a holder's fill is an
            // answer from L2) or L2 writes (it would fill nothing for the
            // waiters).
            let leases = !plan.skip.l2_reads && !plan.skip.l2_writes;
            let lease = match (&seen, &self.remote) {
                (Some(_), Some(remote)) if self.lease.is_some() && job.own_load && leases => {
                    match self
                        .lease(key, remote, ticket, job.refresh_after, refreshable, plan)
                        .await
                    {
                        Leased::Held(lease) => Some(lease),
                        Leased::Filled(entry) => {
                            trace::tier(&job.span, "l2", true);
                            return Flight::Settled(entry);
                        }
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
            trace::tier(&job.span, "loader", false);
            let started = Instant::now();
            let loaded = self
                .load(key, first.take(), &job, loader, fallback.as_ref())
                .await;
            let took = started.elapsed();
            let fetched = match loaded {
                Ok(fetched) => fetched,
                Err(failure) => {
                    self.release(lease).await;
                    return self.fail_safe(key, fallback, failure, plan).await;
                }
            };
            // Where the value was read on the tag clock (a "not modified"
            // answer keeps the stale copy's).
            let born = fetched.born.map_or(born, |at| at.min(born));
            let tags = plan.tags_with(fetched.tags);
            let l2_ttl = fetched
                .ttl
                .unwrap_or_else(|| plan.ttl.l2_for(&fetched.value));
            // A zero TTL caches nothing (not even stale, for stale-while-
            // revalidate or fail-safe).
            if !fetched.keep || l2_ttl.is_zero() {
                self.release(lease).await;
                let tags = tags.map(|names| Tags::new(names, born));
                return Flight::Unkept(fetched.value, tags);
            }
            let l1_ttl = match (fetched.l1_ttl, fetched.ttl) {
                (Some(l1), _) => l1.min(l2_ttl),
                (None, Some(ttl)) => ttl,
                (None, None) => plan.ttl.l1_for(&fetched.value).min(l2_ttl),
            };
            let entry = Entry::new(
                fetched.value,
                self.clock.now(),
                l1_ttl,
                plan.freshness(refreshable),
                took,
            )
            .tagged(born, tags.map(|names| Tags::new(names, born)));
            let mut filled = Filled::Unknown;
            if let (Some(remote), Some(seen)) = (&self.remote, &seen) {
                if !l2_ttl.is_zero() && !plan.skip.l2_writes {
                    let lifetime = plan.freshness.lifetime(l2_ttl, took);
                    let l2_key = remote.key(key);
                    let (value, tags) = (entry.value.as_ref(), self.l2_tags(&entry));
                    filled = (remote.fill(&l2_key, seen, value, lifetime, tags.as_deref())).await;
                }
            }
            self.release(lease).await;
            if filled == Filled::Superseded {
                self.count_superseded();
                last = Some(entry);
                continue;
            }
            // Tags that cannot be checked now (L2 down, this instance's own
            // invalidation not landed): the value answers the caller that ran
            // this flight, cached nowhere, and is not loaded again for it.
            // Callers that joined the flight fly again (what it read may
            // predate an invalidation they saw return).
            if self.tags_verdict(entry.tags.as_deref(), false).await == Verdict::Unreadable {
                return Flight::Superseded(entry);
            }
            if self.commit(key, ticket, &entry, plan).await {
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

    /// One load: this caller's own (`first`), or `loader`'s (told of the stale
    /// copy, `fallback`), within the hard timeout.
    async fn load<F>(
        &self,
        key: &K,
        first: Option<F>,
        job: &Job<K, V>,
        loader: Option<&dyn DynLoader<K, V>>,
        fallback: Option<&Fallback<V>>,
    ) -> Result<Fetched<V>, Failure>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        let limit =
            (self.plan(job.plan.as_ref()).freshness.hard_timeout).filter(|_| job.time_limit);
        match (first, loader) {
            (Some(first), _) if job.own_load => self.timed(1, within(limit, first)).await,
            (Some(share), _) => within(limit, share).await,
            (None, Some(loader)) => {
                let context = match fallback {
                    Some(Fallback { entry, .. }) => {
                        let stale_for = self.clock.now().saturating_sub(entry.fresh_until);
                        LoadContext::with_stale(
                            entry.value.clone(),
                            Duration::from_nanos(stale_for),
                        )
                    }
                    None => LoadContext::empty(),
                };
                let load = loader.load(key, context).map(|r| r.map_err(shared));
                let loaded = self.timed(1, within(limit, load)).await?;
                let not_modified = matches!(loaded.answer, Answer::NotModified);
                match Fetched::from_loaded(loaded, fallback.map(|stale| &stale.entry)) {
                    Some(fetched) => {
                        if not_modified {
                            self.report.event(Counter::NotModified);
                        }
                        Ok(fetched)
                    }
                    None => {
                        self.report.count(Counter::LoadErrors);
                        Err(shared(NOT_MODIFIED_WITHOUT_STALE.into()))
                    }
                }
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
        plan: &Plan,
    ) -> Flight<V> {
        let now = self.clock.now();
        if let Some(Fallback { entry, ticket }) = fallback.filter(|_| plan.serves_stale) {
            if !entry.is_expired(now) {
                let throttled = entry.throttled(now, plan.freshness.throttle);
                if self.commit(key, ticket, &throttled, plan).await {
                    tracing::warn!(cache = %self.name, "load failed: serving a stale copy (fail-safe)");
                    self.report.event(Counter::FailSafe);
                    return Flight::Stale(throttled);
                }
            }
        }
        Flight::Failed(failure)
    }

    /// The L1 entry of what L2 holds: fresh for at most the L1 TTL (of the
    /// call's `plan`), with an early refresh window if the flight's loader can
    /// refresh it.
    pub(crate) fn entry_from_l2(
        &self,
        hit: Decoded<V>,
        now: u64,
        refreshable: bool,
        plan: &Plan,
    ) -> Entry<V> {
        let l1_ttl = plan.ttl.l1_for(&hit.value).min(hit.fresh);
        let freshness = plan.freshness(refreshable);
        // Its birth stays with it (a "not modified" answer keeps it); only
        // tags with names are checked on L1 hits.
        let born = hit.tags.as_ref().map_or(0, |tags| tags.born);
        let tags = hit.tags.filter(|tags| !tags.names.is_empty());
        let mut entry = Entry::new(hit.value, now, l1_ttl, freshness, hit.load).tagged(born, tags);
        if hit.fresh.is_zero() {
            // Stale in L2: since when (what stale-while-revalidate's window and
            // a loader's context count from).
            let since = now.saturating_sub(saturating_nanos(hit.stale_for));
            (entry.early_from, entry.fresh_until) = (since, since);
        }
        entry.expires = entry
            .expires
            .min(now.saturating_add(saturating_nanos(hit.remaining)))
            .max(entry.fresh_until);
        entry
    }

    /// Writes `entry` to L1 unless `key` was invalidated since `ticket`, or one
    /// of its tags since its load began. Returns whether it went through (also
    /// when L1 is off, or the call's `plan` skips L1 writes).
    pub(crate) async fn commit(
        &self,
        key: &K,
        ticket: Ticket,
        entry: &Entry<V>,
        plan: &Plan,
    ) -> bool {
        if !self.tags_hold(entry.tags.as_deref()).await {
            return false;
        }
        let write = async {
            if !self.l1.enabled() {
            } else if plan.skip.l1_writes {
                // Not kept here, and no older value either.
                self.l1.invalidate(key).await;
            } else if !entry.is_expired(self.clock.now()) {
                self.l1.insert(key.clone(), entry.clone()).await;
            }
        };
        self.fence.commit(key, ticket, write).await
    }

    fn count_superseded(&self) {
        self.report.event(Counter::Superseded);
    }

    /// Runs a load of `keys` keys: times it, contains a panic, counts and reports it.
    pub(crate) async fn timed<T, F>(&self, keys: usize, load: F) -> Result<T, Failure>
    where
        T: LoadResult,
        F: Future<Output = Result<T, Failure>>,
    {
        self.report.count(Counter::Loads);
        let span = trace::load(&self.name, keys);
        let start = Instant::now();
        let result = AssertUnwindSafe(load)
            .catch_unwind()
            .instrument(span.clone())
            .await;
        let elapsed = start.elapsed();
        let (outcome, result) = match result {
            Ok(Ok(value)) => (value.outcome(), Ok(value)),
            Ok(Err(failure)) => (LoadOutcome::Error, Err(failure)),
            Err(panic) => (
                LoadOutcome::Panicked,
                Err(Failure::Panicked(panic_message(&*panic))),
            ),
        };
        if !span.is_disabled() {
            span.record("cache.load.outcome", outcome.label());
        }
        if outcome == LoadOutcome::Error || outcome == LoadOutcome::Panicked {
            if !span.is_disabled() {
                span.record("otel.status_code", "ERROR");
            }
            self.report.count(Counter::LoadErrors);
            tracing::debug!(cache = %self.name, ?outcome, "load failed");
        }
        self.report
            .with_observer(|o| o.load(outcome, keys, elapsed));
        result
    }
}

/// What a load produced, as an [`Observer`](crate::Observer) sees it.
pub(crate) trait LoadResult {
    fn outcome(&self) -> LoadOutcome;
}

impl<V> LoadResult for Fetched<V> {
    fn outcome(&self) -> LoadOutcome {
        match self.value {
            Some(_) => LoadOutcome::Value,
            None => LoadOutcome::Absent,
        }
    }
}

impl<V> LoadResult for Loaded<V> {
    fn outcome(&self) -> LoadOutcome {
        match self.answer {
            Answer::Value(Some(_)) | Answer::NotModified => LoadOutcome::Value,
            Answer::Value(None) => LoadOutcome::Absent,
        }
    }
}

impl<K, V> LoadResult for HashMap<K, V> {
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

pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
