//! [`TieredCache::peek`]: what the cache tiers hold for a key, without loading.

use std::borrow::Borrow;
use std::hash::Hash;

use crate::cache::TieredCache;
use crate::key::{CacheKey, CacheValue};
use crate::observe::trace;

use tracing::Instrument;

/// What the cache tiers hold for a key: [`TieredCache::peek`]'s answer, which
/// tells an absence the cache remembers from a key it knows nothing of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked<V> {
    /// A fresh value.
    Value(V),
    /// A remembered absence: a load found nothing (cached for the negative
    /// TTL).
    Absent,
    /// Neither L1 nor L2 holds a fresh entry (or L2 could not be reached).
    Missing,
}

impl<V> Peeked<V> {
    /// The value, if there is one.
    pub fn value(self) -> Option<V> {
        match self {
            Peeked::Value(value) => Some(value),
            Peeked::Absent | Peeked::Missing => None,
        }
    }

    /// Whether the cache holds an answer for the key (a value or an absence).
    pub fn is_cached(&self) -> bool {
        !matches!(self, Peeked::Missing)
    }
}

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// What L1, then L2, holds for `key`, without ever loading: no loader
    /// runs (the configured one or any other), no flight is joined or started,
    /// and no refresh begins, whatever the cache's settings. A fresh L2 entry
    /// is kept in L1, as a read keeps it; a stale one is not an answer (but a
    /// stale copy that fail-safe served after a failed load is fresh again in
    /// L1 for its throttle, and answers then, as it answers `get`).
    ///
    /// [`get`](Self::get) answers `Ok(None)` both for an absence the loader
    /// reported and, on a cache without a loader, for a key no tier holds;
    /// `peek` tells them apart.
    ///
    /// ```
    /// use tiered::{Peeked, TieredCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiered::BoxError> {
    /// let users = TieredCache::<String, String>::builder("users")
    ///     .loader_fn(|id: String| async move {
    ///         Ok::<_, tiered::BoxError>((id == "alice").then(|| "Alice".to_owned()))
    ///     })
    ///     .build()?;
    /// assert_eq!(users.peek("alice").await, Peeked::Missing); // nothing loaded
    /// users.get("alice").await?;
    /// users.get("bob").await?; // absent, and remembered
    /// assert_eq!(users.peek("alice").await, Peeked::Value("Alice".to_owned()));
    /// assert_eq!(users.peek("bob").await, Peeked::Absent);
    /// assert_eq!(users.stats().loads, 2);
    /// # Ok(()) }
    /// ```
    pub async fn peek<Q>(&self, key: &Q) -> Peeked<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let span = trace::read(self.core().name(), "peek");
        match self.core().peek(key).instrument(span).await {
            Some(Some(value)) => Peeked::Value(value),
            Some(None) => Peeked::Absent,
            None => Peeked::Missing,
        }
    }
}
