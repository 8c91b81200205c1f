//! The L1 read: a hit, a stale copy for the flight to fall back on, or a miss;
//! and what a hit late in its entry's life starts (an early refresh, a
//! stale-while-revalidate refresh).

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;

use crate::engine::flight::outcome::Job;
use crate::engine::refresh::Fallback;
use crate::engine::Core;
use crate::entry::Entry;
use crate::key::{CacheKey, CacheValue};
use crate::observe::{Counter, Tier};
use crate::policy::Plan;
use crate::source::{DynLoader, FnLoader, Loader};

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
    pub(crate) fn into_job<K>(self) -> Job<K, V> {
        Job {
            fallback: self.into_fallback(),
            ..Job::default()
        }
    }

    /// The stale copy, if any.
    pub(crate) fn into_fallback(self) -> Option<Fallback<V>> {
        match self {
            Lookup::Stale(fallback) => Some(fallback),
            Lookup::Hit(_) | Lookup::Miss => None,
        }
    }
}

/// Where a read's loader comes from: the configured one, or one its caller gave
/// (`get_or_load`), made into a shared loader only once a flight or a refresh
/// needs it (a hit allocates nothing).
pub(crate) trait Source<K, V>: Send {
    /// The caller's loader (`None`: the configured one).
    fn given(&mut self) -> Option<Arc<dyn DynLoader<K, V>>>;
}

/// The configured loader (or none).
pub(crate) struct Configured;

impl<K, V> Source<K, V> for Configured {
    fn given(&mut self) -> Option<Arc<dyn DynLoader<K, V>>> {
        None
    }
}

impl<K, V, S: Source<K, V>> Source<K, V> for &mut S {
    fn given(&mut self) -> Option<Arc<dyn DynLoader<K, V>>> {
        (**self).given()
    }
}

/// A caller's own `'static` loader closure.
pub(crate) struct Given<K, V, F> {
    make: Option<F>,
    made: Option<Arc<dyn DynLoader<K, V>>>,
}

impl<K, V, F> Given<K, V, F> {
    pub(crate) fn new(make: F) -> Self {
        Given {
            make: Some(make),
            made: None,
        }
    }
}

impl<K, V, F> Source<K, V> for Given<K, V, F>
where
    K: CacheKey,
    V: CacheValue,
    F: Send + 'static,
    FnLoader<F>: Loader<K, V>,
{
    fn given(&mut self) -> Option<Arc<dyn DynLoader<K, V>>> {
        if let Some(make) = self.make.take() {
            self.made = Some(Arc::new(crate::source::loader_fn_of(make)));
        }
        self.made.clone()
    }
}

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// What L1 holds for `key`, counted as a hit or a miss. A hit before the
    /// entry's early-refresh window costs one clock read and one comparison.
    #[inline]
    pub(crate) async fn lookup<Q>(self: &Arc<Self>, key: &Q) -> Lookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.lookup_from(key, Configured, None).await
    }

    /// [`lookup`](Self::lookup), where a refresh a hit starts loads from
    /// `source` (passed by value: the configured loader's is zero-sized, so a
    /// plain `get`'s future does not grow), under the call's `plan` (`None`:
    /// the cache's). A call that skips L1 reads does not look up.
    #[inline]
    ///
    /// `key` may be any borrowed form of the key (a `&str` for a `String`
    /// key): a plain hit reads L1 with it as it is; what goes further (a
    /// refresh, a stale copy) makes the owned key.
    pub(crate) async fn lookup_from<Q, S>(
        self: &Arc<Self>,
        key: &Q,
        mut source: S,
        plan: Option<&Arc<Plan>>,
    ) -> Lookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        S: Source<K, V>,
    {
        if plan.is_some_and(|plan| plan.skip.l1_reads) {
            return Lookup::Miss;
        }
        // A fixed L1's read is moka's own future, awaited here with no state
        // machine around it: on the hottest path every byte of a future is moved
        // and every state dropped (measured with `scripts/callgrind-l1-hit`). An
        // adaptive L1's larger read is boxed, at the cost of an allocation.
        let found = match self.l1.fixed() {
            Some(cache) => cache.get(key).await,
            None => Box::pin(self.l1.get(key)).await,
        };
        match found {
            // Tagged, and a tag was invalidated after its load began: gone.
            Some(entry) if entry.tags.is_some() && !self.tags_still_hold(&entry) => {
                self.report.tier(Tier::L1, false);
                Lookup::Miss
            }
            Some(entry) => {
                let now = self.clock.now();
                // Before the early-refresh window, or in it with a draw that
                // starts nothing: a plain hit, with no allocation.
                if now < entry.early_from
                    || (entry.is_fresh(now)
                        && !entry.refresh_early(&self.plan(plan).freshness, now))
                {
                    self.count_hit(&entry);
                    return Lookup::Hit(entry);
                }
                Box::pin(self.late(key.to_owned(), entry, now, &mut source, plan)).await
            }
            None => {
                self.report.tier(Tier::L1, false);
                Lookup::Miss
            }
        }
    }

    /// A tagged L1 entry's check, out of the untagged hit's way.
    #[inline(never)]
    pub(crate) fn tags_still_hold(&self, entry: &Entry<V>) -> bool {
        entry.tags.as_ref().is_none_or(|tags| self.tags.holds(tags))
    }

    #[inline]
    pub(crate) fn count_hit(&self, entry: &Entry<V>) {
        self.report.tier(Tier::L1, true);
        if entry.value.is_none() {
            self.report.event(Counter::NegativeHits);
        }
    }

    /// An entry whose early refresh was drawn, stale, or expired.
    async fn late(
        self: &Arc<Self>,
        key: K,
        entry: Entry<V>,
        now: u64,
        source: &mut dyn Source<K, V>,
        plan: Option<&Arc<Plan>>,
    ) -> Lookup<V> {
        if entry.is_fresh(now) {
            self.count_hit(&entry);
            self.refresh(&key, &entry, source.given(), plan.cloned())
                .await;
            return Lookup::Hit(entry);
        }
        // A stale copy from before an invalidation this instance has learned
        // of since (a lost message made up for by reading L2) is not served.
        if !entry.is_expired(now) && !self.known_invalidated(entry.born, entry.tags.as_deref()) {
            let given = source.given();
            let freshness = &self.plan(plan).freshness;
            if entry.revalidates(freshness, now) && self.can_refresh(given.is_some()) {
                self.count_hit(&entry);
                self.report.event(Counter::StaleServed);
                self.refresh(&key, &entry, given, plan.cloned()).await;
                return Lookup::Hit(entry);
            }
            self.report.tier(Tier::L1, false);
            return match self.fallback(&key, &entry).await {
                Some(fallback) => Lookup::Stale(fallback),
                None => Lookup::Miss,
            };
        }
        self.report.tier(Tier::L1, false);
        Box::pin(self.remove_if_expired(&key)).await;
        Lookup::Miss
    }

    /// Drops `key` if it is still expired, so that the next flight loads it instead
    /// of finding it.
    async fn remove_if_expired(&self, key: &K) {
        let now = self.clock.now();
        self.l1.remove_if_expired(key, now).await;
    }
}
