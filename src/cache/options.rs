//! [`WithOptions`]: a cache's reads and writes under per-call
//! [`EntryOptions`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::cache::{OwnLoad, TieredCache};
use crate::engine::{shared, Configured, Fetched, Job, Lookup};
use crate::error::{BoxError, Error};
use crate::key::{CacheKey, CacheValue};
use crate::observe::Written;
use crate::policy::{EntryOptions, Plan};

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// This cache's reads and writes under `options` (the cache's settings
    /// for what they leave unset). Making one lays the options over the
    /// settings once; keep it (it is `Clone`, and holds a handle to the
    /// cache) to use the same options for many calls.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tiered::{BoxError, EntryOptions, TieredCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiered::BoxError> {
    /// let users = TieredCache::<u64, String>::builder("users")
    ///     .loader_fn(|id: u64| async move { Ok::<_, BoxError>(Some(format!("user {id}"))) })
    ///     .build()?;
    /// // An admin screen: never from L1, and nothing it loads stays there.
    /// let admin = users.with_options(&EntryOptions::new().skip_l1());
    /// assert_eq!(admin.get(&7).await?.as_deref(), Some("user 7"));
    /// assert_eq!(users.stats().l1_entries, 0);
    /// // A session, kept 15 minutes and tagged with its user.
    /// let session = EntryOptions::new().ttl(Duration::from_secs(900)).tags(["user:7"]);
    /// users.with_options(&session).insert(70, "session of 7".into()).await;
    /// # Ok(()) }
    /// ```
    pub fn with_options(&self, options: &EntryOptions) -> WithOptions<K, V> {
        let defaults = self.core().defaults();
        WithOptions {
            cache: self.clone(),
            plan: options.plan(&defaults.freshness, &defaults.ttl),
        }
    }
}

/// A cache's reads and writes under per-call [`EntryOptions`]; made by
/// [`TieredCache::with_options`]. Each method is the cache's method of the
/// same name, with the same promises, under the options.
pub struct WithOptions<K, V> {
    cache: TieredCache<K, V>,
    plan: Arc<Plan>,
}

impl<K, V> Clone for WithOptions<K, V> {
    fn clone(&self) -> Self {
        WithOptions {
            cache: self.cache.clone(),
            plan: Arc::clone(&self.plan),
        }
    }
}

impl<K: CacheKey, V: CacheValue> fmt::Debug for WithOptions<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithOptions")
            .field("cache", &self.cache.name())
            .field("plan", &self.plan)
            .finish()
    }
}

impl<K: CacheKey, V: CacheValue> WithOptions<K, V> {
    /// [`TieredCache::get`] under the options.
    pub async fn get<Q>(&self, key: &Q) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let job = match self.lookup(key).await {
            Ok(job) => job,
            Err(hit) => {
                self.cache.core().read_hit("get", key);
                return Ok(hit);
            }
        };
        let core = self.cache.core();
        let miss = core.read_miss("get", key.to_owned(), None::<std::future::Ready<_>>, job);
        miss.await
    }

    /// L1's answer under the options (`Err`: a hit), or the flight's job.
    async fn lookup<Q>(&self, key: &Q) -> Result<Job<K, V>, Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let core = self.cache.core();
        let job = match core.lookup_from(key, Configured, Some(&self.plan)).await {
            Lookup::Hit(entry) => return Err(entry.value),
            miss => miss.into_job(),
        };
        Ok(Job {
            plan: Some(Arc::clone(&self.plan)),
            ..job
        })
    }

    /// [`TieredCache::get_with`] under the options.
    pub async fn get_with<Q, F, E>(&self, key: &Q, load: F) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        let job = match self.lookup(key).await {
            Ok(job) => job,
            Err(hit) => {
                self.cache.core().read_hit("get_with", key);
                return Ok(hit);
            }
        };
        let first = load.map(|r| r.map(Fetched::cached).map_err(|e| shared(e.into())));
        let miss = (self.cache.core()).read_miss("get_with", key.to_owned(), Some(first), job);
        miss.await
    }

    /// [`TieredCache::try_get_with`] under the options.
    pub async fn try_get_with<Q, F, E>(&self, key: &Q, load: F) -> Result<Option<V>, Arc<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Future<Output = Result<Option<V>, E>>,
        E: Send + Sync + 'static,
    {
        let how = OwnLoad::try_get_with(Some(&self.plan));
        self.cache.own_load(key, &how, load).await
    }

    /// [`TieredCache::get_or_load`] under the options (the refreshes its hits
    /// start run under them too).
    pub async fn get_or_load<Q, F, Fut, E>(&self, key: &Q, load: F) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        (self.cache)
            .get_or_load_planned(key, load, Some(&self.plan))
            .await
    }

    /// [`TieredCache::get_many`] under the options.
    pub async fn get_many(&self, keys: &[K]) -> Result<HashMap<K, V>, Error> {
        let no_batch = None::<&fn(Vec<K>) -> std::future::Ready<Result<HashMap<K, V>, BoxError>>>;
        (self.cache.core())
            .get_many_from(keys, no_batch, Some(&self.plan))
            .await
    }

    /// [`TieredCache::get_many_with`] under the options.
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
        (self.cache)
            .get_many_with_planned(keys, load, Some(&self.plan))
            .await
    }

    /// [`TieredCache::insert`] under the options: their TTLs (exact, if set;
    /// a zero TTL invalidates the key instead), their tags, and the tiers they
    /// write (a tier skipped has the key dropped instead).
    pub async fn insert(&self, key: K, value: V) -> Written {
        (self.cache)
            .insert_many_planned(vec![(key, value)], Some(&self.plan))
            .await
    }

    /// [`TieredCache::insert_many`] under the options, as
    /// [`insert`](Self::insert).
    pub async fn insert_many(&self, entries: impl IntoIterator<Item = (K, V)>) -> Written {
        (self.cache)
            .insert_many_planned(entries.into_iter().collect(), Some(&self.plan))
            .await
    }
}
