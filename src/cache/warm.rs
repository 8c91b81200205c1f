//! Warming: loading a known set of keys ahead of traffic.

use futures_util::stream::{self, StreamExt};

use crate::cache::TieredCache;
use crate::error::Error;
use crate::key::{CacheKey, CacheValue};

/// How many keys one warming batch looks up (one `get_many`).
const WARM_BATCH: usize = 256;

/// What [`TieredCache::warm`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Warmed {
    /// Distinct keys looked up.
    pub requested: usize,
    /// Keys that have a value now (from any tier, or loaded).
    pub found: usize,
    /// Keys whose batch failed to load.
    pub failed: usize,
    /// The first load error, if a batch failed.
    pub error: Option<Error>,
}

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// Loads `keys` into the cache ahead of traffic: batches of up to 256 keys go
    /// through [`get_many`](Self::get_many) (L1, then one L2 round trip, then one
    /// `load_many`), at most `concurrency` batches at a time (at least 1). Each
    /// finished batch is reported to the observer
    /// ([`Observer::warmed`](crate::Observer::warmed)). A failed batch does not
    /// stop the others: it is counted in [`Warmed::failed`].
    ///
    /// ```
    /// use tiered::{BoxError, TieredCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiered::BoxError> {
    /// let squares = TieredCache::<u64, u64>::builder("squares")
    ///     .loader_fn(|n: u64| async move { Ok::<_, BoxError>(Some(n * n)) })
    ///     .build()?;
    /// let keys: Vec<u64> = (0..1000).collect();
    /// let warmed = squares.warm(&keys, 4).await;
    /// assert_eq!((warmed.requested, warmed.found, warmed.failed), (1000, 1000, 0));
    /// assert_eq!(squares.get(&12).await?, Some(144)); // an L1 hit
    /// # Ok(()) }
    /// ```
    pub async fn warm(&self, keys: &[K], concurrency: usize) -> Warmed {
        let mut distinct = std::collections::HashSet::with_capacity(keys.len());
        let keys: Vec<K> = keys
            .iter()
            .filter(|key| distinct.insert(*key))
            .cloned()
            .collect();
        let total = keys.len();
        let mut warmed = Warmed {
            requested: total,
            ..Warmed::default()
        };
        let mut batches = stream::iter(keys.chunks(WARM_BATCH))
            .map(|batch| async move { (batch.len(), self.get_many(batch).await) })
            .buffer_unordered(concurrency.max(1));
        let mut done = 0;
        while let Some((len, result)) = batches.next().await {
            done += len;
            match result {
                Ok(found) => warmed.found += found.len(),
                Err(error) => {
                    tracing::warn!(cache = %self.core().name(), %error, "a warming batch failed");
                    warmed.failed += len;
                    warmed.error.get_or_insert(error);
                }
            }
            self.core()
                .report()
                .with_observer(|o| o.warmed(done, total));
        }
        warmed
    }
}
