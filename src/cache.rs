//! [`TieredCache`]: the read path (L1, then one flight per key to the loader) and
//! the write path (insert, invalidate).

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use crate::builder::TieredCacheBuilder;
use crate::clock::Clock;
use crate::entry::{Entry, TtlPolicy};
use crate::error::{BoxError, Error, SharedError};
use crate::fence::{Fence, Ticket};
use crate::key::CacheKey;
use crate::l1::L1;
use crate::l3::DynLoader;
use crate::observe::{Counter, Counters, LoadOutcome, Observer, Stats, Tier};

/// What a cache can hold: a `serde` type that is cheap enough to clone.
///
/// Hits return values by `clone()`. For anything bigger than a few words, cache
/// `Arc<T>` (serde's `rc` feature serializes it as `T`), so a hit costs one
/// reference-count increment.
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

/// How many times a load superseded by an invalidation is retried before its value
/// is returned without being cached.
const MAX_LOAD_ATTEMPTS: u32 = 3;

/// A three-tier cache: L1 in process, then the loader, with one flight per key.
///
/// Cloning is cheap (one `Arc`): clones share everything. Build one with
/// [`TieredCache::builder`].
///
/// ```
/// use tiered::{BoxError, TieredCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tiered::Error> {
/// let users = TieredCache::<u64, String>::builder("users")
///     .loader_fn(|id: u64| async move { Ok::<_, BoxError>(Some(format!("user {id}"))) })
///     .build()?;
/// assert_eq!(users.get(&7).await?.as_deref(), Some("user 7")); // loaded
/// assert_eq!(users.get(&7).await?.as_deref(), Some("user 7")); // L1 hit
/// assert_eq!(users.stats().loads, 1);
/// # Ok(()) }
/// ```
pub struct TieredCache<K, V> {
    inner: Arc<Inner<K, V>>,
}

pub(crate) struct Inner<K, V> {
    pub(crate) name: String,
    pub(crate) l1: L1<K, V>,
    pub(crate) loader: Option<Arc<dyn DynLoader<K, V>>>,
    pub(crate) ttl: TtlPolicy,
    pub(crate) clock: Clock,
    pub(crate) fence: Fence,
    pub(crate) counters: Counters,
    pub(crate) observer: Option<Arc<dyn Observer>>,
}

/// How one flight ended, as shared with every caller that waited on it. A flight
/// never returns `Ok` to moka: the value is written by [`Fence::commit`] (or not at
/// all, when superseded), and handed to the waiters through this error channel.
pub(crate) enum Flight<V> {
    Settled(Entry<V>),
    Failed(Failure),
}

/// Why a load failed.
#[derive(Clone)]
pub(crate) enum Failure {
    Load(SharedError),
    Panicked(String),
}

impl<K, V> Clone for TieredCache<K, V> {
    fn clone(&self) -> Self {
        TieredCache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V> fmt::Debug for TieredCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("name", &self.inner.name)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// Starts building a cache named `name` (1 to 64 characters of
    /// `[A-Za-z0-9_.-]`; it namespaces the cache's shared-tier keys and metrics).
    pub fn builder(name: impl Into<String>) -> TieredCacheBuilder<K, V> {
        TieredCacheBuilder::new(name)
    }

    pub(crate) fn from_inner(inner: Inner<K, V>) -> Self {
        TieredCache {
            inner: Arc::new(inner),
        }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The value of `key`: from L1, or else from the loader (one load however many
    /// callers ask at once). `Ok(None)` means the loader found nothing, which is
    /// remembered for the negative TTL. Without a loader, only L1 is read.
    pub async fn get(&self, key: &K) -> Result<Option<V>, Error> {
        if let Some(entry) = self.l1_hit(key).await {
            return Ok(entry.value);
        }
        let Some(loader) = &self.inner.loader else {
            return Ok(None);
        };
        // Lazy: the loader is called only by the caller that runs the flight.
        let first = async { loader.load(key).await.map_err(shared) };
        // Boxed: the miss path's state machine is large, and keeping it out of
        // `get`'s future keeps a hit from moving it around.
        Box::pin(self.fly(key, first, Some(&**loader))).await
    }

    /// Cache-aside with an ad-hoc loader: the value of `key` from L1, or else from
    /// `load` (which is only polled on a miss, and only by one of the callers asking
    /// at once). `load`'s error comes back as [`Error::Load`], whose `source()` is
    /// the original error.
    pub async fn get_with<F, E>(&self, key: &K, load: F) -> Result<Option<V>, Error>
    where
        F: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        if let Some(entry) = self.l1_hit(key).await {
            return Ok(entry.value);
        }
        let first = load.map(|r| r.map_err(|e| shared(e.into())));
        Box::pin(self.fly(key, first, None)).await
    }

    /// The values of `keys` that exist. L1 answers what it has; the rest is loaded
    /// with one [`Loader::load_many`](crate::Loader::load_many) call, while each key
    /// still shares the flight of any concurrent `get` of it. Duplicate keys are
    /// looked up once.
    pub async fn get_many(&self, keys: &[K]) -> Result<HashMap<K, V>, Error> {
        let mut found = HashMap::with_capacity(keys.len());
        let mut seen = HashSet::with_capacity(keys.len());
        let mut missing = Vec::new();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            match self.l1_hit(key).await {
                Some(Entry { value: Some(v), .. }) => {
                    found.insert(key.clone(), v);
                }
                Some(_) => {}
                None => missing.push(key.clone()),
            }
        }
        let Some(loader) = &self.inner.loader else {
            return Ok(found);
        };
        if missing.is_empty() {
            return Ok(found);
        }
        let loader = &**loader;
        let batch = async {
            let tickets: Vec<Ticket> = missing.iter().map(|k| self.inner.fence.ticket(k)).collect();
            let load = loader.load_many(&missing).map(|r| r.map_err(shared));
            let values = self.timed(missing.len(), load).await?;
            Ok::<_, Failure>(Arc::new((tickets, values)))
        }
        .shared();
        let flights = missing.iter().enumerate().map(|(i, key)| {
            let batch = batch.clone();
            let flight = async move {
                match batch.await {
                    Ok(batch) => {
                        let (tickets, values) = &*batch;
                        let value = values.get(key).cloned();
                        self.settle(key, tickets[i], value, Some(loader)).await
                    }
                    Err(failure) => Flight::Failed(failure),
                }
            };
            self.flight(key, flight)
        });
        for (key, result) in missing.iter().zip(join_all(flights).await) {
            if let Some(value) = self.settled(key, result)? {
                found.insert(key.clone(), value);
            }
        }
        Ok(found)
    }

    /// Writes `value` for `key` in every tier, with the default TTL. A load of the
    /// same key that was in flight will not overwrite it.
    pub async fn insert(&self, key: K, value: V) {
        let ttl = self.inner.ttl.jittered(self.inner.ttl.l1);
        self.insert_with_ttl(key, value, ttl).await;
    }

    /// Writes `value` for `key` in every tier, expiring after exactly `ttl` (no
    /// jitter). A zero `ttl` removes the key instead.
    pub async fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return self.invalidate(&key).await;
        }
        let inner = &*self.inner;
        inner.counters.add(Counter::Inserts, 1);
        let entry = Entry::new(Some(value), inner.clock.now(), ttl);
        let write = inner.l1.insert(key.clone(), entry);
        inner.fence.supersede(&key, write).await;
    }

    /// Removes `key` from every tier. Once this returns, no value loaded before the
    /// call can be written back by a load that was in flight.
    pub async fn invalidate(&self, key: &K) {
        let inner = &*self.inner;
        inner.counters.add(Counter::Invalidations, 1);
        if let Some(observer) = &inner.observer {
            observer.invalidated(false);
        }
        inner.fence.supersede(key, inner.l1.invalidate(key)).await;
    }

    /// Removes every entry of this cache from every tier, with the same guarantee
    /// towards loads in flight as [`invalidate`](Self::invalidate).
    pub async fn invalidate_all(&self) {
        let inner = &*self.inner;
        inner.counters.add(Counter::Invalidations, 1);
        if let Some(observer) = &inner.observer {
            observer.invalidated(true);
        }
        inner
            .fence
            .supersede_all(async { inner.l1.invalidate_all() })
            .await;
    }

    /// A snapshot of the cache's counters.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot(self.inner.l1.entry_count())
    }

    /// Runs L1's pending maintenance (evictions, expirations, entry counts) now
    /// rather than on its own schedule: for tests and exact
    /// [`Stats::l1_entries`].
    pub async fn run_pending_tasks(&self) {
        self.inner.l1.run_pending_tasks().await;
    }

    /// An L1 entry that may be served, counted as a hit; or a counted miss.
    #[inline]
    async fn l1_hit(&self, key: &K) -> Option<Entry<V>> {
        let inner = &*self.inner;
        let entry = inner.l1.get(key).await;
        match entry {
            Some(entry) if !entry.is_expired(inner.clock.now()) => {
                inner.counters.add(Counter::L1Hits, 1);
                if entry.value.is_none() {
                    inner.counters.add(Counter::NegativeHits, 1);
                }
                if let Some(observer) = &inner.observer {
                    observer.hit(Tier::L1);
                }
                Some(entry)
            }
            expired => {
                inner.counters.add(Counter::L1Misses, 1);
                if let Some(observer) = &inner.observer {
                    observer.miss(Tier::L1);
                }
                if expired.is_some() {
                    Box::pin(self.remove_if_expired(key)).await;
                }
                None
            }
        }
    }

    /// Drops `key` if it is still expired, so that the next flight loads it instead
    /// of finding it.
    async fn remove_if_expired(&self, key: &K) {
        let now = self.inner.clock.now();
        self.inner
            .l1
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let expired = current.is_some_and(|e| e.value().is_expired(now));
                async move {
                    if expired {
                        moka::ops::compute::Op::Remove
                    } else {
                        moka::ops::compute::Op::Nop
                    }
                }
            })
            .await;
    }

    /// One flight for `key`: the first load, retried through `retry` if an
    /// invalidation supersedes it.
    async fn fly<F>(
        &self,
        key: &K,
        first: F,
        retry: Option<&dyn DynLoader<K, V>>,
    ) -> Result<Option<V>, Error>
    where
        F: Future<Output = Result<Option<V>, Failure>>,
    {
        let flight = async {
            let ticket = self.inner.fence.ticket(key);
            match self.timed(1, first).await {
                Ok(value) => self.settle(key, ticket, value, retry).await,
                Err(failure) => Flight::Failed(failure),
            }
        };
        let result = self.flight(key, flight).await;
        self.settled(key, result)
    }

    /// Runs `load` as the one flight of `key` (or waits for the flight already under
    /// way). `Ok` is an entry some other caller cached meanwhile.
    async fn flight<F>(&self, key: &K, load: F) -> Result<Entry<V>, Arc<Flight<V>>>
    where
        F: Future<Output = Flight<V>>,
    {
        let ran = AtomicBool::new(false);
        let init = async {
            ran.store(true, Ordering::Relaxed);
            Err::<Entry<V>, _>(load.await)
        };
        let result = self.inner.l1.try_get_with_by_ref(key, init).await;
        if !ran.load(Ordering::Relaxed) && result.is_err() {
            self.inner.counters.add(Counter::Coalesced, 1);
            if let Some(observer) = &self.inner.observer {
                observer.coalesced();
            }
        }
        result
    }

    /// The value a flight ended with, or its error.
    fn settled(
        &self,
        key: &K,
        result: Result<Entry<V>, Arc<Flight<V>>>,
    ) -> Result<Option<V>, Error> {
        match result {
            Ok(entry) => Ok(entry.value),
            Err(flight) => match &*flight {
                Flight::Settled(entry) => Ok(entry.value.clone()),
                Flight::Failed(Failure::Load(source)) => Err(Error::Load {
                    key: key.to_key_string(),
                    source: Arc::clone(source),
                }),
                Flight::Failed(Failure::Panicked(message)) => Err(Error::LoaderPanicked {
                    key: key.to_key_string(),
                    message: message.clone(),
                }),
            },
        }
    }

    /// Caches a loaded value unless `key` was invalidated since `ticket`; then loads
    /// again through `retry` (when there is one), up to [`MAX_LOAD_ATTEMPTS`] loads
    /// in all. A value that never settles is returned uncached.
    async fn settle(
        &self,
        key: &K,
        mut ticket: Ticket,
        mut value: Option<V>,
        retry: Option<&dyn DynLoader<K, V>>,
    ) -> Flight<V> {
        let inner = &*self.inner;
        let mut attempt = 1;
        loop {
            let ttl = inner.ttl.for_loaded(&value);
            let entry = Entry::new(value, inner.clock.now(), ttl);
            let write = async {
                if !ttl.is_zero() {
                    inner.l1.insert(key.clone(), entry.clone()).await;
                }
            };
            if inner.fence.commit(ticket, write).await {
                return Flight::Settled(entry);
            }
            inner.counters.add(Counter::Superseded, 1);
            if let Some(observer) = &inner.observer {
                observer.superseded();
            }
            let Some(loader) = retry.filter(|_| attempt < MAX_LOAD_ATTEMPTS) else {
                return Flight::Settled(entry);
            };
            attempt += 1;
            ticket = inner.fence.ticket(key);
            let load = loader.load(key).map(|r| r.map_err(shared));
            match self.timed(1, load).await {
                Ok(reloaded) => value = reloaded,
                Err(failure) => return Flight::Failed(failure),
            }
        }
    }

    /// Runs a load of `keys` keys: times it, contains a panic, counts and reports it.
    async fn timed<T, F>(&self, keys: usize, load: F) -> Result<T, Failure>
    where
        T: Loaded,
        F: Future<Output = Result<T, Failure>>,
    {
        let inner = &*self.inner;
        inner.counters.add(Counter::Loads, 1);
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
            inner.counters.add(Counter::LoadErrors, 1);
            tracing::debug!(cache = %inner.name, ?outcome, "load failed");
        }
        if let Some(observer) = &inner.observer {
            observer.load(outcome, keys, elapsed);
        }
        result
    }
}

/// What a load produced, as an [`Observer`] sees it.
trait Loaded {
    fn outcome(&self) -> LoadOutcome;
}

impl<V> Loaded for Option<V> {
    fn outcome(&self) -> LoadOutcome {
        match self {
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

fn shared(error: BoxError) -> Failure {
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
