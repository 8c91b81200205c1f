//! [`TieredCache`]: the public type, a handle to one engine [`Core`]. Every
//! method here says what it promises and hands the work to the engine.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::future::{Future, Ready};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::engine::{shared, Core, Fetched, Given, Job, Lookup, Source};
use crate::error::{BoxError, Error};
use crate::key::{CacheKey, CacheValue};
use crate::observe::{trace, Stats, Written};
use crate::policy::{EntryOptions, Plan};

mod options;
mod peek;
mod try_get;
mod warm;

pub use self::options::WithOptions;
pub use self::peek::Peeked;
pub(crate) use self::try_get::OwnLoad;
pub use self::warm::Warmed;

/// A three-tier cache: L1 in process, then L2 (shared), then the loader, with one
/// flight per key.
///
/// Cloning is cheap (one `Arc`): clones share everything. Build one with
/// [`TieredCache::builder`].
///
/// ```
/// use tiered::{BoxError, TieredCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tiered::BoxError> {
/// let users = TieredCache::<u64, String>::builder("users")
///     .loader_fn(|id: u64| async move { Ok::<_, BoxError>(Some(format!("user {id}"))) })
///     .build()?;
/// assert_eq!(users.get(&7).await?.as_deref(), Some("user 7")); // loaded
/// assert_eq!(users.get(&7).await?.as_deref(), Some("user 7")); // L1 hit
/// assert_eq!(users.stats().loads, 1);
/// # Ok(()) }
/// ```
pub struct TieredCache<K, V> {
    core: Arc<Core<K, V>>,
}

impl<K, V> Clone for TieredCache<K, V> {
    fn clone(&self) -> Self {
        TieredCache {
            core: Arc::clone(&self.core),
        }
    }
}

impl<K: CacheKey, V: CacheValue> fmt::Debug for TieredCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("name", &self.core.name())
            .field("ttl", self.core.ttl())
            .finish_non_exhaustive()
    }
}

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    pub(crate) fn from_core(core: Arc<Core<K, V>>) -> Self {
        TieredCache { core }
    }

    /// The engine, for the macro runtime.
    pub(crate) fn core(&self) -> &Arc<Core<K, V>> {
        &self.core
    }

    /// A write (`op` is the method) in its span, which records what happened.
    async fn written(&self, op: &'static str, write: impl Future<Output = Written>) -> Written {
        let span = self.core.write_span(op);
        let written = write.instrument(span.clone()).await;
        trace::written(&span, &written);
        written
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// The Redis (L2) key that holds `key`'s entry, if the cache has an L2:
    /// `{prefix}:{name}:{schema version}:{key}`.
    pub fn l2_key<Q>(&self, key: &Q) -> Option<String>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.core.l2_key(&key.to_owned())
    }

    /// A snapshot of the cache's counters.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// The cache's health now: the breaker, what is owed to Redis and its last
    /// error, the bus subscription and the messages waiting to be sent; for a
    /// readiness probe or a status page (it serializes with serde). See
    /// [`Health`](crate::Health).
    pub fn health(&self) -> crate::observe::Health {
        self.core.health()
    }

    /// Sends what this instance has waiting (changes owed to Redis, bus
    /// messages kept after a failed publish) now, retrying until nothing is
    /// left or `within` has passed, and returns what is left. Writes send
    /// their own changes and replay what is owed in the background; call this
    /// before the process exits (a rolling deploy's shutdown hook), so that
    /// what a write queued during a Redis outage is not lost with the process.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tiered::{TieredCache, Written};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = TieredCache::<u64, u64>::builder("counts").build().unwrap();
    /// cache.insert(1, 10).await;
    /// assert_eq!(cache.flush(Duration::from_secs(5)).await, Written::Applied);
    /// # }
    /// ```
    pub async fn flush(&self, within: Duration) -> Written {
        self.written("flush", self.core.flush(within)).await
    }

    /// Runs L1's pending maintenance (evictions, expirations, entry counts) now
    /// rather than on its own schedule: for tests and exact
    /// [`Stats::l1_entries`].
    pub async fn run_pending_tasks(&self) {
        self.core.run_pending_tasks().await;
    }

    /// The value of `key`: from L1, else from L2, else from the loader (one flight
    /// however many callers ask at once). `Ok(None)` means the loader found nothing,
    /// which is remembered for the negative TTL. Without a loader, only the cache
    /// tiers are read (and `Ok(None)` is also a key they do not hold: see
    /// [`peek`](Self::peek)). L2 failures never fail a read: they are counted
    /// misses.
    ///
    /// `key` is any borrowed form of the key, as with moka and `HashMap`: a
    /// `&str` for a `String` key. A hit reads L1 with it as it is; a miss
    /// makes the owned key (`to_owned`) for the rest.
    pub async fn get<Q>(&self, key: &Q) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let job = match self.core.lookup(key).await {
            Lookup::Hit(entry) => {
                self.core.read_hit("get", key);
                return Ok(entry.value);
            }
            miss => miss.into_job(),
        };
        let miss = self
            .core
            .read_miss("get", key.to_owned(), None::<Ready<_>>, job);
        miss.await
    }

    /// Cache-aside with an ad-hoc loader: the value of `key` from L1 or L2, or else
    /// from `load` (which is only polled on a miss, and only by one of the callers
    /// asking at once). `load`'s error comes back as [`Error::Load`], whose
    /// `source()` is the original error. If the key is invalidated while `load`
    /// runs, its value is returned to this caller but cached nowhere, and callers
    /// that were waiting on it run their own `load` instead.
    ///
    /// To get `load`'s own error type back rather than an [`Error`], use
    /// [`try_get_with`](Self::try_get_with).
    pub async fn get_with<Q, F, E>(&self, key: &Q, load: F) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        let job = match self.core.lookup(key).await {
            Lookup::Hit(entry) => {
                self.core.read_hit("get_with", key);
                return Ok(entry.value);
            }
            miss => miss.into_job(),
        };
        let first = load.map(|r| r.map(Fetched::cached).map_err(|e| shared(e.into())));
        let miss = self
            .core
            .read_miss("get_with", key.to_owned(), Some(first), job);
        miss.await
    }

    /// Cache-aside with a `'static` loader: the value of `key` from L1 or L2, or
    /// else from `load(key)`, with the freshness the configured loader gets:
    ///
    /// - the flight runs in a task of its own: a caller that gives up (a
    ///   timeout, a dropped request) stops waiting, but the load goes on, fills
    ///   the cache, and the next caller joins it instead of starting another;
    /// - early refresh and stale-while-revalidate: a hit late in its entry's
    ///   life returns at once and refreshes the entry in the background with
    ///   this `load`;
    /// - the soft and hard timeouts, and fail-safe.
    ///
    /// `load` is the closure [`loader_fn`](crate::loader_fn) takes: it is called
    /// on a miss or for a refresh, once per flight, and its future must own what
    /// it uses (clone an `Arc` or a pool handle into it). A plain hit allocates
    /// nothing (one that starts a refresh allocates the shared loader). Use
    /// [`get_with`](Self::get_with) for a load that borrows from its caller (it
    /// gets none of the above).
    ///
    /// Flights and entries are per key, whatever loads them: a concurrent `get`
    /// of the same key shares this flight (or this call joins one the
    /// configured loader runs), and a later hit through `get` refreshes the
    /// entry with the configured loader; every way the cache loads a key must
    /// give the same value. The closure answers `Option<V>`: an entry's own
    /// TTLs, tags or "not modified" need a [`Loader`](crate::Loader) and its
    /// [`load_with`](crate::Loader::load_with).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tiered::{BoxError, TieredCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiered::BoxError> {
    /// let names = TieredCache::<u64, Arc<str>>::builder("names").build()?;
    /// let prefix: Arc<str> = "user ".into(); // what the load needs, owned
    /// let name = names
    ///     .get_or_load(&7, move |id| {
    ///         let prefix = Arc::clone(&prefix);
    ///         async move { Ok::<_, BoxError>(Some(format!("{prefix}{id}").into())) }
    ///     })
    ///     .await?;
    /// assert_eq!(name.as_deref(), Some("user 7"));
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load<Q, F, Fut, E>(&self, key: &Q, load: F) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.get_or_load_planned(key, load, None).await
    }

    /// [`get_or_load`](Self::get_or_load) under the call's `plan`.
    pub(crate) async fn get_or_load_planned<Q, F, Fut, E>(
        &self,
        key: &Q,
        load: F,
        plan: Option<&Arc<Plan>>,
    ) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let mut source = Given::new(load);
        let job = match self.core.lookup_from(key, &mut source, plan).await {
            Lookup::Hit(entry) => {
                self.core.read_hit("get_or_load", key);
                return Ok(entry.value);
            }
            miss => miss.into_job(),
        };
        let job = Job {
            loader: source.given(),
            plan: plan.cloned(),
            ..job
        };
        let miss = self
            .core
            .read_miss("get_or_load", key.to_owned(), None::<Ready<_>>, job);
        miss.await
    }

    /// The values of `keys` that exist. L1 answers what it has, L2 the rest in one
    /// round trip, and what is still missing is loaded with one
    /// [`Loader::load_many`](crate::Loader::load_many) call, while each key still
    /// shares the flight of any concurrent `get` of it. Duplicate keys are looked
    /// up once.
    pub async fn get_many(&self, keys: &[K]) -> Result<HashMap<K, V>, Error> {
        let span = trace::read(self.core.name(), "get_many");
        self.core.get_many(keys).instrument(span).await
    }

    /// Batch cache-aside: the values of `keys` that exist, read as
    /// [`get_many`](Self::get_many) reads them, where what is still missing
    /// after L2 is loaded with one call of `load(missing keys)` (keys missing
    /// from its map have no value, which is remembered for the negative TTL).
    /// A key L2 answered with a stale entry, which must load after all, is
    /// loaded alone with `load(vec![key])`. Each key still shares the flight of
    /// any concurrent read of it. Like [`get_with`](Self::get_with), the loads
    /// run in this call and may borrow from its caller; `load`'s error comes
    /// back as [`Error::Load`].
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use tiered::{BoxError, TieredCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiered::BoxError> {
    /// let prices = TieredCache::<u64, u64>::builder("prices").build()?;
    /// prices.insert(1, 100).await;
    /// let found = prices
    ///     .get_many_with(&[1, 2, 3], |missing: Vec<u64>| async move {
    ///         // One query for keys 2 and 3: `WHERE id = ANY($1)`.
    ///         assert_eq!(missing.len(), 2);
    ///         Ok::<_, BoxError>(missing.into_iter().filter(|id| *id != 3).map(|id| (id, id * 100)).collect())
    ///     })
    ///     .await?;
    /// assert_eq!(found, HashMap::from([(1, 100), (2, 200)]));
    /// # Ok(()) }
    /// ```
    pub async fn get_many_with<F, Fut, E>(
        &self,
        keys: &[K],
        load: F,
    ) -> Result<HashMap<K, V>, Error>
    where
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
        E: Into<BoxError>,
    {
        self.get_many_with_planned(keys, load, None).await
    }

    /// [`get_many_with`](Self::get_many_with) under the call's `plan`.
    pub(crate) async fn get_many_with_planned<F, Fut, E>(
        &self,
        keys: &[K],
        load: F,
        plan: Option<&Arc<Plan>>,
    ) -> Result<HashMap<K, V>, Error>
    where
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
        E: Into<BoxError>,
    {
        let load = |keys| load(keys).map(|loaded| loaded.map_err(Into::into));
        let span = trace::read(self.core.name(), "get_many_with");
        (self.core.get_many_from(keys, Some(&load), plan))
            .instrument(span)
            .await
    }

    /// Writes `value` for `key` in every tier, with the default TTLs, and tells
    /// the other instances to drop their copy. A load of the same key that was in
    /// flight (on any instance) will not overwrite it. If Redis cannot be reached,
    /// its old entry is deleted later instead, before this instance reads it again.
    pub async fn insert(&self, key: K, value: V) -> Written {
        self.insert_many_planned(vec![(key, value)], None).await
    }

    /// Writes `value` for `key` in every tier, expiring after exactly `ttl` (no
    /// jitter) in each; a `ttl` past [`Ttl::MAX`](crate::Ttl::MAX) is shortened to
    /// it. A zero `ttl` removes the key instead.
    pub async fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) -> Written {
        let options = EntryOptions::new().ttl(ttl);
        self.with_options(&options).insert(key, value).await
    }

    /// Writes `value` for `key` as [`insert`](Self::insert) does, carrying
    /// `tags` (at most 64, each under 64 KiB; past that the value stays in L1
    /// only): [`invalidate_tag`](Self::invalidate_tag) of any of them makes it
    /// unreadable.
    ///
    /// ```
    /// # use tiered::TieredCache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = TieredCache::<String, u64>::builder("profiles").build().unwrap();
    /// cache.insert_with_tags("profile:7".into(), 70, &["user:7"]).await;
    /// cache.insert_with_tags("orders:7".into(), 3, &["user:7", "orders"]).await;
    /// cache.insert_with_tags("profile:8".into(), 80, &["user:8"]).await;
    /// cache.invalidate_tag("user:7").await; // everything about user 7
    /// assert_eq!(cache.get("orders:7").await.unwrap(), None);
    /// assert_eq!(cache.get("profile:8").await.unwrap(), Some(80));
    /// # }
    /// ```
    pub async fn insert_with_tags(&self, key: K, value: V, tags: &[&str]) -> Written {
        let options = EntryOptions::new().tags(tags.iter().copied());
        self.with_options(&options).insert(key, value).await
    }

    /// Writes every `(key, value)` as [`insert`](Self::insert) does, with the same
    /// promises, in batches of 1,000: the store writes of a batch go out
    /// together under one L2 timeout (pipelined on the connection), and one bus
    /// message per batch tells the other instances to drop their copies. A key
    /// given twice takes its last value. If a batch's writes do not all land, or
    /// the call is cancelled during them, every key of that batch is deleted
    /// from L2 later instead (new values that did land too) and announced when
    /// that lands. A call cancelled part way has written the batches it got
    /// through, not the rest.
    ///
    /// ```
    /// # use tiered::TieredCache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = TieredCache::<u64, String>::builder("orders").build().unwrap();
    /// cache.insert_many([(1, "one".to_owned()), (2, "two".to_owned())]).await;
    /// assert_eq!(cache.get(&2).await.unwrap().as_deref(), Some("two"));
    /// # }
    /// ```
    pub async fn insert_many(&self, entries: impl IntoIterator<Item = (K, V)>) -> Written {
        self.insert_many_planned(entries.into_iter().collect(), None)
            .await
    }

    /// [`insert_many`](Self::insert_many) under the call's `plan`: a zero TTL
    /// invalidates the keys instead.
    pub(crate) async fn insert_many_planned(
        &self,
        entries: Vec<(K, V)>,
        plan: Option<&Arc<Plan>>,
    ) -> Written {
        let plan = self.core.plan(plan);
        if plan.ttl.l2.is_zero() {
            let keys: Vec<K> = entries.into_iter().map(|(key, _)| key).collect();
            return self.invalidate_many(&keys).await;
        }
        self.written("insert", self.core.write_many(entries, plan))
            .await
    }

    /// Removes `key` from every tier, and from every other instance's L1. Once
    /// this returns, no load that was in flight (on any instance) can write back
    /// what it read before. If L2 cannot be reached (or this call is cancelled),
    /// the deletion is replayed before this instance reads L2 again.
    pub async fn invalidate<Q>(&self, key: &Q) -> Written
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.written("invalidate", self.core.invalidate(&key.to_owned()))
            .await
    }

    /// Removes `keys` from every tier, and from every other instance's L1, as
    /// [`invalidate`](Self::invalidate) does for one key, with the same promises,
    /// in batches of 1,000 keys: one store call (`UNLINK`; on a cluster the
    /// client splits it by slot) and one bus message per batch, each call under
    /// the L2 timeout. A key whose deletion cannot reach L2 is owed and replayed
    /// like any other. A call cancelled part way has invalidated the batches it
    /// got through (and the one it was in, whose deletions are owed), not the
    /// rest.
    ///
    /// ```
    /// # use tiered::TieredCache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = TieredCache::<u64, String>::builder("orders").build().unwrap();
    /// cache.insert(1, "one".into()).await;
    /// cache.insert(2, "two".into()).await;
    /// // After a bulk UPDATE of orders 1 and 2:
    /// cache.invalidate_many(&[1, 2]).await;
    /// assert_eq!(cache.get(&1).await.unwrap(), None);
    /// # }
    /// ```
    pub async fn invalidate_many(&self, keys: &[K]) -> Written {
        self.written("invalidate_many", self.core.invalidate_many(keys))
            .await
    }

    /// Removes every key whose string form matches the Redis glob `pattern` (`*`,
    /// `?`, `[abc]`, `[^a]`, `[a-z]`, `\` escapes; see [`Pattern`](crate::Pattern)) from every
    /// tier and every instance, with the guarantees of
    /// [`invalidate`](Self::invalidate). In L2 this walks the cache's namespace
    /// with `SCAN MATCH` + `UNLINK`, one batch per call (every master of a
    /// cluster), so it takes time in proportion to the namespace's size. Use
    /// [`escape_glob`](crate::escape_glob) for literal parts.
    ///
    /// ```
    /// # use tiered::TieredCache;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = TieredCache::<String, u32>::builder("orders").build().unwrap();
    /// cache.insert("user:7:order:1".into(), 10).await;
    /// cache.insert("user:8:order:1".into(), 20).await;
    /// cache.invalidate_pattern("user:7:*").await;
    /// assert_eq!(cache.get("user:7:order:1").await.unwrap(), None);
    /// assert_eq!(cache.get("user:8:order:1").await.unwrap(), Some(20));
    /// # }
    /// ```
    pub async fn invalidate_pattern(&self, pattern: &str) -> Written {
        self.written("invalidate_pattern", self.core.invalidate_pattern(pattern))
            .await
    }

    /// Makes every entry that carries `tag` (from
    /// [`insert_with_tags`](Self::insert_with_tags) or a loader's
    /// [`Loaded::with_tags`](crate::Loaded::with_tags)) and was written before
    /// this call unreadable, in every tier and on every instance, with the race
    /// guarantees of [`invalidate`](Self::invalidate): on this instance, what a
    /// load in flight read before this call is never served after it; on the
    /// others, not once they have the bus message (a message lost without its
    /// subscription dropping costs up to about two L1 TTLs, see docs/GUIDE.md).
    /// What such a load read may still be written to L2, where it is as
    /// unreadable as the rest.
    ///
    /// It costs one Redis call however many entries carry the tag: it moves the
    /// namespace's tag clock on and stamps the tag with it; entries record the
    /// clock as their load began and are dropped when read (a miss, which the
    /// next load overwrites; Redis reclaims the rest at their TTL). Other
    /// instances learn the stamp over the bus and by reading stamps from Redis.
    /// If Redis cannot be reached, the stamp is owed and replayed, and entries
    /// carrying the tag are unreadable here until it lands. See docs/GUIDE.md,
    /// "Tags".
    pub async fn invalidate_tag(&self, tag: &str) -> Written {
        self.written(
            "invalidate_tag",
            self.core.invalidate_tags(vec![tag.to_owned()]),
        )
        .await
    }

    /// [`invalidate_tag`](Self::invalidate_tag) of each of `tags`, in one Redis
    /// call and one bus message.
    pub async fn invalidate_tags(&self, tags: &[&str]) -> Written {
        let mut tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        tags.sort_unstable();
        tags.dedup();
        self.written("invalidate_tags", self.core.invalidate_tags(tags))
            .await
    }

    /// Makes every entry of this cache unreadable, in every tier and on every
    /// instance, with the race guarantees of
    /// [`invalidate_tag`](Self::invalidate_tag): it is the invalidation of a
    /// tag that every entry in L2 carries (the namespace epoch). It costs one
    /// Redis call and one bus message however many entries the cache holds:
    /// L1s are emptied, and entries in L2 written before the call are dropped
    /// when read (a miss), or expire at their TTL. Use
    /// [`invalidate_all_and_reclaim`](Self::invalidate_all_and_reclaim) to
    /// delete them from Redis now.
    ///
    /// Without a bus, or with an L2 store that cannot stamp tags (see
    /// [`RemoteStore::stamps_tags`](crate::RemoteStore::stamps_tags)), this is
    /// `invalidate_all_and_reclaim`. Entries written by a version of `tiered`
    /// without the epoch were born at 0: any epoch makes them unreadable; but
    /// such a version does not know the epoch, so during a rolling upgrade
    /// from one, use `invalidate_all_and_reclaim` (see docs/GUIDE.md, "Tags").
    ///
    /// ```
    /// # use tiered::TieredCache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = TieredCache::<u64, String>::builder("orders").build().unwrap();
    /// cache.insert(1, "one".into()).await;
    /// cache.invalidate_all().await;
    /// assert_eq!(cache.get(&1).await.unwrap(), None);
    /// # }
    /// ```
    pub async fn invalidate_all(&self) -> Written {
        self.written("invalidate_all", self.core.invalidate_all())
            .await
    }

    /// Removes every entry of this cache from every tier and every instance,
    /// with the guarantees of [`invalidate`](Self::invalidate), deleting them
    /// from L2 now: every key of the cache's namespace, by `SCAN` + `UNLINK`
    /// (one batch per call, every master of a cluster), so it takes time in
    /// proportion to the namespace's size and loads Redis meanwhile. For when
    /// Redis memory must be given back at once (or the fleet runs a version
    /// without the namespace epoch); otherwise
    /// [`invalidate_all`](Self::invalidate_all) is the O(1) form. If Redis
    /// cannot be reached, the walk is owed, and this instance does not read L2
    /// until it lands.
    pub async fn invalidate_all_and_reclaim(&self) -> Written {
        self.written(
            "invalidate_all_and_reclaim",
            self.core.invalidate_all_and_reclaim(),
        )
        .await
    }
}
