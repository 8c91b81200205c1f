//! The read path: L1, then one flight per key (`flight.rs`) to L2 and the loader.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;
use futures_util::FutureExt;

use crate::cache::{CacheValue, TieredCache};
use crate::entry::Entry;
use crate::error::{BoxError, Error};
use crate::flight::{shared, Failure, Fetched, Job};
use crate::key::CacheKey;
use crate::l1::L1;
use crate::l2::L2Read;
use crate::observe::{Counter, Tier};
use crate::refresh::Fallback;

/// What L1 holds for a key.
pub(crate) enum Lookup<V> {
    /// To be served (fresh, or stale within stale-while-revalidate).
    Hit(Entry<V>),
    /// Stale, kept for fail-safe: the flight falls back on it.
    Stale(Fallback<V>),
    Miss,
}

impl<V> Lookup<V> {
    /// The flight of a key L1 could not answer: with the stale copy, if any.
    fn into_job(self) -> Job<V> {
        Job {
            fallback: match self {
                Lookup::Stale(fallback) => Some(fallback),
                Lookup::Hit(_) | Lookup::Miss => None,
            },
            ..Job::default()
        }
    }
}

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// The value of `key`: from L1, else from L2, else from the loader (one flight
    /// however many callers ask at once). `Ok(None)` means the loader found nothing,
    /// which is remembered for the negative TTL. Without a loader, only the cache
    /// tiers are read. L2 failures never fail a read: they are counted misses.
    pub async fn get(&self, key: &K) -> Result<Option<V>, Error> {
        let job = match self.l1_lookup(key).await {
            Lookup::Hit(entry) => return Ok(entry.value),
            miss => miss.into_job(),
        };
        // Boxed: the miss path's state machine is large, and keeping it out of
        // `get`'s future keeps a hit from moving it around.
        Box::pin(self.fly(key, None::<std::future::Ready<_>>, job)).await
    }

    /// Cache-aside with an ad-hoc loader: the value of `key` from L1 or L2, or else
    /// from `load` (which is only polled on a miss, and only by one of the callers
    /// asking at once). `load`'s error comes back as [`Error::Load`], whose
    /// `source()` is the original error. If the key is invalidated while `load`
    /// runs, its value is returned to this caller but cached nowhere, and callers
    /// that were waiting on it run their own `load` instead.
    pub async fn get_with<F, E>(&self, key: &K, load: F) -> Result<Option<V>, Error>
    where
        F: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        let job = match self.l1_lookup(key).await {
            Lookup::Hit(entry) => return Ok(entry.value),
            miss => miss.into_job(),
        };
        let first = load.map(|r| r.map(Fetched::cached).map_err(|e| shared(e.into())));
        Box::pin(self.fly(key, Some(first), job)).await
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
        let mut fallbacks = Vec::new();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            match self.l1_lookup(key).await {
                Lookup::Hit(Entry { value: Some(v), .. }) => {
                    found.insert(key.clone(), v);
                }
                Lookup::Hit(_) => {}
                Lookup::Stale(fallback) => {
                    missing.push(key.clone());
                    fallbacks.push(Some(fallback));
                }
                Lookup::Miss => {
                    missing.push(key.clone());
                    fallbacks.push(None);
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        self.start_bus().await;
        let tickets: Vec<_> = missing.iter().map(|k| inner.fence.ticket(k)).collect();
        let from_l2: Vec<Option<L2Read<V>>> = match &inner.l2 {
            Some(l2) => {
                let l2_keys: Vec<String> = missing.iter().map(|k| l2.key(k)).collect();
                let reads = l2.get_many(&inner.report, &l2_keys).await;
                reads.into_iter().map(Some).collect()
            }
            None => missing.iter().map(|_| None).collect(),
        };
        let loader = inner.loader.as_deref();
        let to_load: Vec<K> = missing
            .iter()
            .zip(&from_l2)
            .filter(|(_, read)| !matches!(read, Some(L2Read::Hit(..))))
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
        let flights = missing.iter().zip(tickets).zip(from_l2).zip(fallbacks).map(
            |(((key, ticket), read), fallback)| {
                let batch = batch.clone();
                let first = loader.map(|_| {
                    batch.map(move |values| {
                        values.map(|values| Fetched::cached(values.get(key).cloned()))
                    })
                });
                let job = Job {
                    prepared: read.map(|read| (ticket, read)),
                    own_load: false,
                    fallback,
                    ..Job::default()
                };
                self.fly(key, first, job)
            },
        );
        for (key, result) in missing.iter().zip(join_all(flights).await) {
            if let Some(value) = result? {
                found.insert(key.clone(), value);
            }
        }
        Ok(found)
    }

    /// What L1 holds for `key`, counted as a hit or a miss. A hit before the
    /// entry's early-refresh window costs one clock read and one comparison.
    #[inline]
    pub(crate) async fn l1_lookup(&self, key: &K) -> Lookup<V> {
        let inner = &*self.inner;
        // A fixed L1's read is moka's own future, awaited here with no state
        // machine around it: on the hottest path every byte of a future is moved
        // and every state dropped (measured with `scripts/callgrind-l1-hit`). An
        // adaptive L1's larger read is boxed, at the cost of an allocation.
        let found = match &inner.l1 {
            L1::Fixed(cache, _) => cache.get(key).await,
            L1::Adaptive(adaptive) => Box::pin(adaptive.get(key)).await,
        };
        match found {
            Some(entry) => {
                let now = inner.clock.now();
                // Before the early-refresh window, or in it with a draw that
                // starts nothing: a plain hit, with no allocation.
                if now < entry.early_from
                    || (entry.is_fresh(now) && !inner.freshness.refresh_early(&entry, now))
                {
                    self.count_hit(&entry);
                    return Lookup::Hit(entry);
                }
                Box::pin(self.l1_late(key, entry, now)).await
            }
            None => {
                inner.report.tier(Tier::L1, false);
                Lookup::Miss
            }
        }
    }

    #[inline]
    fn count_hit(&self, entry: &Entry<V>) {
        self.inner.report.tier(Tier::L1, true);
        if entry.value.is_none() {
            self.inner.report.event(Counter::NegativeHits);
        }
    }

    /// An entry whose early refresh was drawn, stale, or expired.
    async fn l1_late(&self, key: &K, entry: Entry<V>, now: u64) -> Lookup<V> {
        let inner = &*self.inner;
        let freshness = &inner.freshness;
        if entry.is_fresh(now) {
            self.count_hit(&entry);
            self.refresh(key, &entry).await;
            return Lookup::Hit(entry);
        }
        if !entry.is_expired(now) {
            if freshness.revalidates(&entry, now) && self.can_refresh() {
                self.count_hit(&entry);
                inner.report.event(Counter::StaleServed);
                self.refresh(key, &entry).await;
                return Lookup::Hit(entry);
            }
            inner.report.tier(Tier::L1, false);
            return match self.fallback(key, &entry).await {
                Some(fallback) => Lookup::Stale(fallback),
                None => Lookup::Miss,
            };
        }
        inner.report.tier(Tier::L1, false);
        Box::pin(self.remove_if_expired(key)).await;
        Lookup::Miss
    }

    /// Drops `key` if it is still expired, so that the next flight loads it instead
    /// of finding it.
    async fn remove_if_expired(&self, key: &K) {
        let now = self.inner.clock.now();
        self.inner.l1.remove_if_expired(key, now).await;
    }
}
