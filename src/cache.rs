//! [`TieredCache`]: the public type. Reads are in `cache/read.rs`, writes and
//! invalidations in `cache/write.rs`, the flight of a missing key in `flight.rs`.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::TieredCacheBuilder;
use crate::bus::Bus;
use crate::clock::Clock;
use crate::entry::TtlPolicy;
use crate::fence::Fence;
use crate::key::CacheKey;
use crate::l1::L1;
use crate::l2::L2;
use crate::l3::DynLoader;
use crate::observe::{Report, Stats};

mod read;
mod warm;
mod write;

pub(crate) use self::read::Lookup;
pub use self::warm::Warmed;

/// What a cache can hold: a `serde` type that is cheap enough to clone.
///
/// Hits return values by `clone()`. For anything bigger than a few words, cache
/// `Arc<T>` (serde's `rc` feature serializes it as `T`), so a hit costs one
/// reference-count increment.
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

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
    pub(crate) inner: Arc<Inner<K, V>>,
}

pub(crate) struct Inner<K, V> {
    pub(crate) name: String,
    pub(crate) l1: L1<K, V>,
    /// False when L1 has no capacity: entries are then not written to it.
    pub(crate) l1_enabled: bool,
    pub(crate) l2: Option<L2>,
    pub(crate) bus: Option<Bus>,
    pub(crate) loader: Option<Arc<dyn DynLoader<K, V>>>,
    pub(crate) ttl: TtlPolicy,
    pub(crate) clock: Clock,
    pub(crate) fence: Arc<Fence>,
    pub(crate) report: Arc<Report>,
    /// The flights on now, by key.
    pub(crate) flights: crate::flight::Flights<K, V>,
    /// Early refresh, stale-while-revalidate, fail-safe, loader timeouts.
    pub(crate) freshness: crate::refresh::Freshness,
    /// The life of a fleet-wide lease, if leases are on.
    pub(crate) lease: Option<std::time::Duration>,
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

    pub(crate) fn from_arc(inner: Arc<Inner<K, V>>) -> Self {
        TieredCache { inner }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The Redis (L2) key that holds `key`'s entry, if the cache has an L2:
    /// `{prefix}:{name}:{schema version}:{key}`.
    pub fn l2_key(&self, key: &K) -> Option<String> {
        self.inner.l2.as_ref().map(|l2| l2.key(key))
    }

    /// A snapshot of the cache's counters.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let mut stats = inner
            .report
            .counters
            .snapshot(inner.l1.entry_count(), inner.l1.policy());
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
}
