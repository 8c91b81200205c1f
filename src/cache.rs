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
use crate::l2::L2Read;
use crate::l2::L2;
use crate::l3::DynLoader;
use crate::observe::{Counter, LoadOutcome, Report, Stats, Tier};

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
    /// False when L1 has no capacity: entries are then not written to it.
    pub(crate) l1_enabled: bool,
    pub(crate) l2: Option<L2>,
    pub(crate) loader: Option<Arc<dyn DynLoader<K, V>>>,
    pub(crate) ttl: TtlPolicy,
    pub(crate) clock: Clock,
    pub(crate) fence: Fence,
    pub(crate) report: Report,
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
    fn cached(value: Option<V>) -> Self {
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

/// Where a value being settled came from.
#[derive(Clone, Copy)]
enum Source {
    /// From L2, with this much of its life left: fills L1 only.
    L2(Duration),
    /// From the loader: fills L1, and L2 when `write_l2` (L2 answered the read),
    /// for `ttl` in both when set, else for the configured TTLs.
    Loaded {
        write_l2: bool,
        ttl: Option<Duration>,
    },
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

    /// The value of `key`: from L1, else from L2, else from the loader (one flight
    /// however many callers ask at once). `Ok(None)` means the loader found nothing,
    /// which is remembered for the negative TTL. Without a loader, only the cache
    /// tiers are read. L2 failures never fail a read: they are counted misses.
    pub async fn get(&self, key: &K) -> Result<Option<V>, Error> {
        if let Some(entry) = self.l1_hit(key).await {
            return Ok(entry.value);
        }
        let loader = self.inner.loader.as_deref();
        // Lazy: the loader is called only by the caller that runs the flight.
        let first = loader.map(|loader| async move { loader.load(key).await.map_err(shared) });
        // Boxed: the miss path's state machine is large, and keeping it out of
        // `get`'s future keeps a hit from moving it around.
        Box::pin(self.fly(key, first, loader)).await
    }

    /// Cache-aside with an ad-hoc loader: the value of `key` from L1 or L2, or else
    /// from `load` (which is only polled on a miss, and only by one of the callers
    /// asking at once). `load`'s error comes back as [`Error::Load`], whose
    /// `source()` is the original error.
    pub async fn get_with<F, E>(&self, key: &K, load: F) -> Result<Option<V>, Error>
    where
        F: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        if let Some(entry) = self.l1_hit(key).await {
            return Ok(entry.value);
        }
        let first = load.map(|r| r.map_err(|e| shared(e.into())));
        Box::pin(self.fly(key, Some(first), None)).await
    }

    /// The values of `keys` that exist. L1 answers what it has, L2 the rest in one
    /// round trip, and what is still missing is loaded with one
    /// [`Loader::load_many`](crate::Loader::load_many) call, while each key still
    /// shares the flight of any concurrent `get` of it. Duplicate keys are looked
    /// up once.
    pub async fn get_many(&self, keys: &[K]) -> Result<HashMap<K, V>, Error> {
        let inner = &*self.inner;
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
        if missing.is_empty() {
            return Ok(found);
        }
        let tickets: Vec<Ticket> = missing.iter().map(|k| inner.fence.ticket(k)).collect();
        let from_l2: Vec<L2Read<V>> = match &inner.l2 {
            Some(l2) => {
                let l2_keys: Vec<String> = missing.iter().map(|k| l2.key(k)).collect();
                l2.get_many(&inner.report, &l2_keys).await
            }
            None => missing.iter().map(|_| L2Read::Miss).collect(),
        };
        let loader = inner.loader.as_deref();
        let to_load: Vec<K> = missing
            .iter()
            .zip(&from_l2)
            .filter(|(_, read)| !matches!(read, L2Read::Hit(_)))
            .map(|(k, _)| k.clone())
            .collect();
        // Polled only if some key still needs loading after L2, by the first such flight.
        let batch = async {
            let Some(loader) = loader else {
                return Ok(Arc::new(HashMap::new()));
            };
            let load = loader.load_many(&to_load).map(|r| r.map_err(shared));
            Ok::<_, Failure>(Arc::new(self.timed(to_load.len(), load).await?))
        }
        .shared();
        let flights = missing
            .iter()
            .zip(tickets)
            .zip(from_l2)
            .map(|((key, ticket), read)| {
                let batch = batch.clone();
                let flight = async move {
                    let write_l2 = match read {
                        L2Read::Hit(hit) => {
                            let source = Source::L2(hit.remaining);
                            return self.settle(key, ticket, hit.value, source, loader).await;
                        }
                        L2Read::Miss => true,
                        L2Read::Unavailable => false,
                    };
                    if loader.is_none() {
                        return Flight::Settled(Entry::uncached(None));
                    }
                    match batch.await {
                        Ok(values) => {
                            let value = values.get(key).cloned();
                            let source = Source::Loaded {
                                write_l2,
                                ttl: None,
                            };
                            self.settle(key, ticket, value, source, loader).await
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

    /// Writes `value` for `key` in every tier, with the default TTLs. A load of the
    /// same key that was in flight will not overwrite it.
    pub async fn insert(&self, key: K, value: V) {
        let inner = &*self.inner;
        let l1_ttl = inner.ttl.jittered(inner.ttl.l1);
        let l2_ttl = inner.ttl.jittered(inner.ttl.l2);
        self.write(key, value, l1_ttl, l2_ttl).await;
    }

    /// Writes `value` for `key` in every tier, expiring after exactly `ttl` (no
    /// jitter) in each. A zero `ttl` removes the key instead.
    pub async fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return self.invalidate(&key).await;
        }
        self.write(key, value, ttl, ttl).await;
    }

    async fn write(&self, key: K, value: V, l1_ttl: Duration, l2_ttl: Duration) {
        let inner = &*self.inner;
        inner.report.count(Counter::Inserts);
        let entry = Entry::new(Some(value), inner.clock.now(), l1_ttl);
        let write = async {
            if let Some(l2) = &inner.l2 {
                l2.set(&inner.report, &l2.key(&key), entry.value.as_ref(), l2_ttl)
                    .await;
            }
            if inner.l1_enabled {
                inner.l1.insert(key.clone(), entry).await;
            }
        };
        inner.fence.supersede(&key, write).await;
    }

    /// Removes `key` from every tier. Once this returns, no value loaded before the
    /// call can be written back by a load of this instance that was in flight. If
    /// L2 cannot be reached, the deletion is replayed before L2 is read again.
    pub async fn invalidate(&self, key: &K) {
        let inner = &*self.inner;
        inner.report.count(Counter::Invalidations);
        inner.report.with_observer(|o| o.invalidated(false));
        let remove = async {
            inner.l1.invalidate(key).await;
            if let Some(l2) = &inner.l2 {
                l2.delete(&inner.report, l2.key(key)).await;
            }
        };
        inner.fence.supersede(key, remove).await;
    }

    /// Removes every entry of this cache from every tier (in L2: every key of its
    /// namespace, by `SCAN` + `UNLINK`), with the same guarantees as
    /// [`invalidate`](Self::invalidate).
    pub async fn invalidate_all(&self) {
        let inner = &*self.inner;
        inner.report.count(Counter::Invalidations);
        inner.report.with_observer(|o| o.invalidated(true));
        let remove = async {
            inner.l1.invalidate_all();
            if let Some(l2) = &inner.l2 {
                l2.clear(&inner.report).await;
            }
        };
        inner.fence.supersede_all(remove).await;
    }

    /// A snapshot of the cache's counters.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let mut stats = inner.report.counters.snapshot(inner.l1.entry_count());
        if let Some(l2) = &inner.l2 {
            stats.breaker = l2.breaker.state();
            stats.breaker_opened = l2.breaker.times_opened();
        }
        stats
    }

    /// Runs L1's pending maintenance (evictions, expirations, entry counts) now
    /// rather than on its own schedule: for tests and exact
    /// [`Stats::l1_entries`].
    pub async fn run_pending_tasks(&self) {
        self.inner.l1.run_pending_tasks().await;
    }

    /// An L1 entry that may be served, counted as a hit; or a counted miss.
    #[inline]
    pub(crate) async fn l1_hit(&self, key: &K) -> Option<Entry<V>> {
        let inner = &*self.inner;
        let entry = inner.l1.get(key).await;
        match entry {
            Some(entry) if !entry.is_expired(inner.clock.now()) => {
                inner.report.tier(Tier::L1, true);
                if entry.value.is_none() {
                    inner.report.count(Counter::NegativeHits);
                }
                Some(entry)
            }
            expired => {
                inner.report.tier(Tier::L1, false);
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

    /// One flight for `key`: L2, then the first load; retried through `retry` if an
    /// invalidation supersedes it.
    async fn fly<F>(
        &self,
        key: &K,
        first: Option<F>,
        retry: Option<&dyn DynLoader<K, V>>,
    ) -> Result<Option<V>, Error>
    where
        F: Future<Output = Result<Option<V>, Failure>>,
    {
        let first = first.map(|load| load.map(|r| r.map(Fetched::cached)));
        let result = self.fly_raw(key, first, retry).await;
        self.settled(key, result)
    }

    /// [`fly`](Self::fly), with the flight's own outcome: for callers (the
    /// `#[cached_tier]` support) that need a failure's original error back.
    pub(crate) async fn fly_raw<F>(
        &self,
        key: &K,
        first: Option<F>,
        retry: Option<&dyn DynLoader<K, V>>,
    ) -> Result<Entry<V>, Arc<Flight<V>>>
    where
        F: Future<Output = Result<Fetched<V>, Failure>>,
    {
        let inner = &*self.inner;
        let flight = async {
            let ticket = inner.fence.ticket(key);
            let mut write_l2 = true;
            if let Some(l2) = &inner.l2 {
                match l2.get::<V>(&inner.report, &l2.key(key)).await {
                    L2Read::Hit(hit) => {
                        let source = Source::L2(hit.remaining);
                        return self.settle(key, ticket, hit.value, source, retry).await;
                    }
                    L2Read::Miss => {}
                    L2Read::Unavailable => write_l2 = false,
                }
            }
            let Some(first) = first else {
                return Flight::Settled(Entry::uncached(None));
            };
            match self.timed(1, first).await {
                Ok(Fetched {
                    value, keep: false, ..
                }) => Flight::Settled(Entry::uncached(value)),
                Ok(Fetched { value, ttl, .. }) => {
                    let source = Source::Loaded { write_l2, ttl };
                    self.settle(key, ticket, value, source, retry).await
                }
                Err(failure) => Flight::Failed(failure),
            }
        };
        self.flight(key, flight).await
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
        // Not running the flight means getting what another caller's flight produced:
        // through the flight's result, or from L1 once that flight had written it.
        if !ran.load(Ordering::Relaxed) {
            self.inner.report.count(Counter::Coalesced);
            self.inner.report.with_observer(|o| o.coalesced());
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
                Flight::Failed(Failure::Foreign { type_name, .. }) => Err(Error::Load {
                    key: key.to_key_string(),
                    source: Arc::new(ForeignError(type_name)),
                }),
            },
        }
    }

    /// Caches a value (a loaded one in L2 and L1, one from L2 in L1) unless `key`
    /// was invalidated since `ticket`; then loads again through `retry` (when there
    /// is one), up to [`MAX_LOAD_ATTEMPTS`] times. A value that never settles is
    /// returned uncached.
    async fn settle(
        &self,
        key: &K,
        mut ticket: Ticket,
        mut value: Option<V>,
        mut source: Source,
        retry: Option<&dyn DynLoader<K, V>>,
    ) -> Flight<V> {
        let inner = &*self.inner;
        let mut attempt = 1;
        loop {
            let (l1_ttl, l2_ttl) = match source {
                Source::L2(remaining) => (inner.ttl.l1_for(&value).min(remaining), None),
                Source::Loaded { write_l2, ttl } => (
                    ttl.unwrap_or_else(|| inner.ttl.l1_for(&value)),
                    write_l2.then(|| ttl.unwrap_or_else(|| inner.ttl.l2_for(&value))),
                ),
            };
            let entry = Entry::new(value, inner.clock.now(), l1_ttl);
            let write = async {
                if let (Some(l2), Some(ttl)) = (&inner.l2, l2_ttl) {
                    if !ttl.is_zero() {
                        l2.set(&inner.report, &l2.key(key), entry.value.as_ref(), ttl)
                            .await;
                    }
                }
                if inner.l1_enabled && !l1_ttl.is_zero() {
                    inner.l1.insert(key.clone(), entry.clone()).await;
                }
            };
            if inner.fence.commit(ticket, write).await {
                return Flight::Settled(entry);
            }
            inner.report.count(Counter::Superseded);
            inner.report.with_observer(|o| o.superseded());
            let Some(loader) = retry.filter(|_| attempt < MAX_LOAD_ATTEMPTS) else {
                return Flight::Settled(entry);
            };
            attempt += 1;
            ticket = inner.fence.ticket(key);
            let load = loader.load(key).map(|r| r.map_err(shared));
            match self.timed(1, load).await {
                Ok(reloaded) => {
                    value = reloaded;
                    if let Source::L2(_) = source {
                        source = Source::Loaded {
                            write_l2: true,
                            ttl: None,
                        };
                    }
                }
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

/// What a load produced, as an [`Observer`] sees it.
trait Loaded {
    fn outcome(&self) -> LoadOutcome;
}

impl<V> Loaded for Fetched<V> {
    fn outcome(&self) -> LoadOutcome {
        self.value.outcome()
    }
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
