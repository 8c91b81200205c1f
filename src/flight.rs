//! One flight per key: how a missing key is read from L2, loaded, filled and
//! committed, and what the callers that waited on it get.
//!
//! A flight runs inside moka's `try_get_with` (which coalesces callers of one key)
//! and never returns `Ok` to moka: it writes L1 itself, through the fence, and
//! hands its outcome to every waiting caller through the error channel. Each
//! attempt takes a fence ticket, reads L2 (leaving a fill reservation on a miss),
//! loads, fills L2 only if the key still holds what the read saw, and commits L1
//! only if no invalidation came since the ticket. An attempt superseded anywhere
//! (locally, or by another instance through L2) starts over, up to
//! [`MAX_LOAD_ATTEMPTS`] times.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tracing::Instrument;

use crate::cache::{CacheValue, TieredCache};
use crate::entry::Entry;
use crate::error::{BoxError, Error, SharedError};
use crate::fence::Ticket;
use crate::key::CacheKey;
use crate::l2::{Filled, L2Read};
use crate::observe::{Counter, LoadOutcome};

/// How many times a flight superseded by an invalidation starts over before its
/// value is returned (to the caller that ran it only) without being cached.
const MAX_LOAD_ATTEMPTS: u32 = 3;

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
    Failed(Failure),
}

/// Why a load failed.
#[derive(Clone)]
pub(crate) enum Failure {
    Load(SharedError),
    Panicked(String),
    /// The error of a `#[cached_tier]` function, returned as it is to its callers.
    Foreign {
        error: Arc<dyn Any + Send + Sync>,
        type_name: &'static str,
    },
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

/// Flights that outlive their callers, by key (see `detached`).
pub(crate) type Detached<K, V> = Mutex<
    std::collections::HashMap<K, futures_util::future::Shared<BoxFuture<'static, Flight<V>>>>,
>;

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// The value of `key` through its flight: `first` is this caller's own load
    /// (else the configured loader is used).
    pub(crate) async fn fly<F>(&self, key: &K, first: Option<F>) -> Result<Option<V>, Error>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        self.fly_prepared(key, first, None, true).await
    }

    /// [`fly`](Self::fly), starting from an L2 read done ahead. `own_load`: `first`
    /// is a load of its own, to time and count (false: a share of a batch that is
    /// counted once, by `get_many`).
    pub(crate) async fn fly_prepared<F>(
        &self,
        key: &K,
        first: Option<F>,
        prepared: Option<Prepared<V>>,
        own_load: bool,
    ) -> Result<Option<V>, Error>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        let result = self.fly_raw(key, first, prepared, own_load).await;
        self.settled(key, result)
    }

    /// The flight's own outcome: for callers (the `#[cached_tier]` support) that
    /// need a failure's original error back. `Ok` is an entry another caller
    /// cached meanwhile. [`Flight::Superseded`] only reaches the caller that ran
    /// the flight: a waiter given it flies again, with its own `first`.
    pub(crate) async fn fly_raw<F>(
        &self,
        key: &K,
        first: Option<F>,
        mut prepared: Option<Prepared<V>>,
        own_load: bool,
    ) -> Result<Entry<V>, Arc<Flight<V>>>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        self.start_bus().await;
        let slot = Mutex::new(first);
        let mut round = 1;
        loop {
            let ran = AtomicBool::new(false);
            let prepared = prepared.take();
            let init = async {
                ran.store(true, Ordering::Relaxed);
                let first = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                let flight = match first {
                    // A load of the configured loader outlives its caller.
                    None if self.inner.loader.is_some() => self.detached(key, prepared).await,
                    first => self.run(key, first, prepared, own_load).await,
                };
                Err::<Entry<V>, _>(flight)
            };
            let result = self.inner.l1.try_get_with_by_ref(key, init).await;
            if ran.load(Ordering::Relaxed) {
                return result;
            }
            // Not running the flight means getting what another caller's flight
            // produced: through the flight's result, or from L1 once written.
            self.inner.report.event(Counter::Coalesced);
            match &result {
                Err(flight) if matches!(**flight, Flight::Superseded(_)) => {
                    if round == MAX_LOAD_ATTEMPTS {
                        return result;
                    }
                    round += 1;
                }
                _ => return result,
            }
        }
    }

    /// The flight of `key` with the configured loader, in a task of its own: a
    /// caller that gives up (a timeout, a dropped request) stops waiting, but the
    /// load goes on and fills the cache, and the next caller joins it instead of
    /// starting another. (Outside a tokio runtime it runs inline.)
    async fn detached(&self, key: &K, prepared: Option<Prepared<V>>) -> Flight<V> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.run(key, None::<NoLoad<V>>, prepared, true).await;
        };
        let flight = {
            let mut detached = self
                .inner
                .detached
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let flight = detached.entry(key.clone()).or_insert_with(|| {
                let (cache, key) = (self.clone(), key.clone());
                let task = runtime.spawn(async move {
                    let flight = cache.run(&key, None::<NoLoad<V>>, prepared, true).await;
                    let mut detached = cache
                        .inner
                        .detached
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    detached.remove(&key);
                    flight
                });
                task.map(|joined| {
                    joined.unwrap_or_else(|error| {
                        Flight::Failed(Failure::Panicked(error.to_string()))
                    })
                })
                .boxed()
                .shared()
            });
            flight.clone()
        };
        flight.await
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
                Flight::Settled(entry) | Flight::Superseded(entry) => Ok(entry.value.clone()),
                Flight::Unkept(value) => Ok(value.clone()),
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

    /// The flight itself, run by one caller.
    async fn run<F>(
        &self,
        key: &K,
        mut first: Option<F>,
        mut prepared: Option<Prepared<V>>,
        own_load: bool,
    ) -> Flight<V>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        let inner = &*self.inner;
        let loader = inner.loader.as_deref();
        let can_load = first.is_some() || loader.is_some();
        let mut last = None;
        for _ in 0..MAX_LOAD_ATTEMPTS {
            let (ticket, read) = match prepared.take() {
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
                Some(L2Read::Hit(hit)) => {
                    let l1_ttl = inner.ttl.l1_for(&hit.value).min(hit.remaining);
                    let entry = Entry::new(hit.value, inner.clock.now(), l1_ttl);
                    if self.commit(key, ticket, &entry).await {
                        return Flight::Settled(entry);
                    }
                    self.count_superseded();
                    last = Some(entry);
                    continue;
                }
                Some(L2Read::Miss(seen)) => Some(seen),
                Some(L2Read::Unavailable) | None => None,
            };
            let loaded = match (first.take(), loader) {
                (Some(first), _) if own_load => self.timed(1, first).await,
                (Some(share), _) => share.await,
                (None, Some(loader)) => {
                    let load = loader
                        .load(key)
                        .map(|r| r.map(Fetched::cached).map_err(shared));
                    self.timed(1, load).await
                }
                (None, None) if !can_load => return Flight::Settled(Entry::uncached(None)),
                (None, None) => break,
            };
            let fetched = match loaded {
                Ok(fetched) => fetched,
                Err(failure) => return Flight::Failed(failure),
            };
            if !fetched.keep {
                return Flight::Unkept(fetched.value);
            }
            let l1_ttl = fetched
                .ttl
                .unwrap_or_else(|| inner.ttl.l1_for(&fetched.value));
            let entry = Entry::new(fetched.value, inner.clock.now(), l1_ttl);
            if let (Some(l2), Some(seen)) = (&inner.l2, &seen) {
                let l2_ttl = fetched
                    .ttl
                    .unwrap_or_else(|| inner.ttl.l2_for(&entry.value));
                if !l2_ttl.is_zero() {
                    let l2_key = l2.key(key);
                    let fill = l2.fill(&inner.report, &l2_key, seen, entry.value.as_ref(), l2_ttl);
                    if fill.await == Filled::Superseded {
                        self.count_superseded();
                        last = Some(entry);
                        continue;
                    }
                }
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

    /// Writes `entry` to L1 unless `key` was invalidated since `ticket`. Returns
    /// whether the fence let it through (also when L1 is off).
    async fn commit(&self, key: &K, ticket: Ticket, entry: &Entry<V>) -> bool {
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
