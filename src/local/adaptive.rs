//! An L1 that runs whichever eviction policy the shadow simulation prefers.
//!
//! moka fixes a cache's policy when it is built, so an adaptive L1 holds two moka
//! caches, one per policy, and reads go to the active one. A switch makes the
//! other one active and drains the one it leaves into it; while it drains, a key
//! missing from the active cache is looked up in the other and, if found, moved
//! over. Once drained, the inactive cache is emptied.
//!
//! Every invalidation applies to both caches, whichever is active, so whatever
//! either holds is as valid as a fixed L1's entry: a switch needs no care for
//! invalidations racing it. A move reads and writes under the fence's locks for
//! its key (as an invalidation changes L1 under them), so it happens wholly
//! before an invalidation of the key (which then removes what it moved) or
//! wholly after (and finds nothing to move).

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::shadow::Shadow;
use super::Moka;
use crate::entry::Entry;
use crate::fence::Fence;
use crate::key::CacheKey;
use crate::observe::{Counter, Report};
use crate::policy::L1Eviction;

pub(crate) struct Adaptive<K, V> {
    /// The TinyLFU cache, then the LRU one.
    caches: [Moka<K, V>; 2],
    /// Whether the LRU cache is the active one (else the TinyLFU one).
    lru_active: AtomicBool,
    /// Whether the inactive cache is being drained into the active one.
    draining: Arc<AtomicBool>,
    /// Held while a switch is made (windows may close on two threads at once).
    switching: Mutex<()>,
    shadow: Shadow,
    fence: Arc<Fence>,
    report: Arc<Report>,
}

impl<K, V> Adaptive<K, V>
where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    /// Starts with TinyLFU active, for an L1 of `capacity` entries; `build` makes
    /// the cache of each policy.
    pub(crate) fn new(
        capacity: u64,
        build: impl Fn(L1Eviction) -> Moka<K, V>,
        fence: Arc<Fence>,
        report: Arc<Report>,
    ) -> Self {
        Adaptive {
            caches: [build(L1Eviction::TinyLfu), build(L1Eviction::Lru)],
            lru_active: AtomicBool::new(false),
            draining: Arc::default(),
            switching: Mutex::new(()),
            shadow: Shadow::new(capacity),
            fence,
            report,
        }
    }

    /// The policy of the active cache.
    pub(crate) fn policy(&self) -> L1Eviction {
        if self.lru_active.load(Ordering::Acquire) {
            L1Eviction::Lru
        } else {
            L1Eviction::TinyLfu
        }
    }

    /// The active cache and the other one.
    #[inline]
    fn pair(&self) -> (&Moka<K, V>, &Moka<K, V>) {
        let [tiny_lfu, lru] = &self.caches;
        if self.lru_active.load(Ordering::Acquire) {
            (lru, tiny_lfu)
        } else {
            (tiny_lfu, lru)
        }
    }

    /// The cache reads and writes go to.
    #[inline]
    pub(crate) fn active(&self) -> &Moka<K, V> {
        self.pair().0
    }

    /// Both caches: what an invalidation changes.
    pub(crate) fn both(&self) -> &[Moka<K, V>] {
        &self.caches
    }

    /// A caller's read of `key`, simulated: the policy the simulation prefers
    /// when this read closes a window with a clear verdict.
    #[inline]
    fn record<Q: Hash + ?Sized>(&self, key: &Q) -> Option<L1Eviction> {
        self.shadow.record(key)
    }

    /// A caller's read of `key`: simulated, then looked up in the active cache,
    /// then (while a switch drains) moved over from the other one. The read
    /// path boxes this future (so that a fixed L1's reads stay small), and this
    /// one boxes its rare paths (so that the box is small).
    pub(crate) async fn get<Q>(&self, key: &Q) -> Option<Entry<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(preferred) = self.record(key) {
            Box::pin(self.prefer(preferred)).await;
        }
        match self.active().get(key).await {
            None => Box::pin(self.take_from_draining(&key.to_owned())).await,
            found => found,
        }
    }

    /// A key the active cache does not have, moved over from the other cache if
    /// that one is draining and has it.
    async fn take_from_draining(&self, key: &K) -> Option<Entry<V>> {
        if !self.draining.load(Ordering::Acquire) {
            return None;
        }
        let (active, other) = self.pair();
        move_entry(&self.fence, key, other, active).await
    }

    /// A read of `key` by a caller that holds the key's fence locks: the
    /// active cache, then the draining one, moving nothing (a move takes those
    /// locks itself).
    pub(crate) async fn get_in_place(&self, key: &K) -> Option<Entry<V>> {
        let (active, other) = self.pair();
        match active.get(key).await {
            None if self.draining.load(Ordering::Acquire) => other.get(key).await,
            found => found,
        }
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        let (active, other) = self.pair();
        active.contains_key(key)
            || (self.draining.load(Ordering::Acquire) && other.contains_key(key))
    }

    /// Switches to `policy` unless it runs already, or a switch is still
    /// draining.
    async fn prefer(&self, policy: L1Eviction) {
        if policy == self.policy() {
            return;
        }
        let Some(drain) = self.switch(policy) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime)
                if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                runtime.spawn(drain);
            }
            // One thread (or no tokio): this caller drains, rather than leave the
            // old cache to a task that may not run until this caller yields.
            _ => drain.await,
        }
    }

    /// Makes the cache of `policy` active, and returns the drain of the other;
    /// `None` if another caller is switching or a drain is still on.
    fn switch(&self, policy: L1Eviction) -> Option<impl std::future::Future<Output = ()>> {
        let _switching = self.switching.try_lock().ok()?;
        if policy == self.policy() || self.draining.load(Ordering::Acquire) {
            return None;
        }
        let (from, to) = self.pair();
        let (from, to) = (from.clone(), to.clone());
        self.draining.store(true, Ordering::Release);
        self.lru_active
            .store(policy == L1Eviction::Lru, Ordering::Release);
        self.report.count(Counter::L1PolicySwitches);
        self.report
            .with_observer(|observer| observer.l1_policy_switched(policy));
        tracing::info!(?policy, "L1 eviction policy switched");
        Some(drain(
            from,
            to,
            Arc::clone(&self.fence),
            Arc::clone(&self.draining),
        ))
    }
}

/// Moves every entry of `from` to `to`, then empties `from`.
async fn drain<K, V>(from: Moka<K, V>, to: Moka<K, V>, fence: Arc<Fence>, draining: Arc<AtomicBool>)
where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    let keys: Vec<Arc<K>> = from.iter().map(|(key, _)| key).collect();
    // Ends the drain however it ends, a cancelled caller's drain too (or no
    // switch would ever come again).
    let _done = Drained {
        from: from.clone(),
        draining,
    };
    for key in keys {
        move_entry(&fence, &*key, &from, &to).await;
    }
}

/// Ends a drain when dropped: empties the cache it drained (what reached it after
/// its keys were listed, or what a cancelled drain left, is dropped: a later read
/// loads it again) and lets the next switch come.
struct Drained<K: CacheKey, V: Clone + Send + Sync + 'static> {
    from: Moka<K, V>,
    draining: Arc<AtomicBool>,
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Drop for Drained<K, V> {
    fn drop(&mut self) {
        self.from.invalidate_all();
        self.draining.store(false, Ordering::Release);
    }
}

/// Moves `key`'s entry from `from` to `to` (unless `to` has one already) under
/// the fence's locks for `key`, and returns what `to` then holds.
async fn move_entry<K, V>(
    fence: &Fence,
    key: &K,
    from: &Moka<K, V>,
    to: &Moka<K, V>,
) -> Option<Entry<V>>
where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    fence
        .exclusive(key, async {
            let entry = from.get(key).await?;
            from.invalidate(key).await;
            if to.contains_key(key) {
                return to.get(key).await;
            }
            to.insert(key.clone(), entry.clone()).await;
            Some(entry)
        })
        .await
}
