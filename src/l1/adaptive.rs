//! An L1 that runs whichever eviction policy the shadow simulation prefers.
//!
//! moka fixes a cache's policy when it is built, so a switch builds a new cache
//! with the other policy and makes it current; the old one retires. While it
//! retires, a key missing from the current cache is looked up in the retiring one
//! and, if found, moved over; a drain moves the rest, then the retiring cache is
//! dropped. Invalidations apply to both caches. A move holds the fence's locks for
//! its key (as an invalidation does while it changes L1), so it either happens
//! before an invalidation of the key (which then removes the moved entry) or after
//! it (and finds nothing to move).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::shadow::Shadow;
use super::{L1Eviction, Moka};
use crate::entry::Entry;
use crate::fence::Fence;
use crate::key::CacheKey;
use crate::observe::{Counter, Report};
use crate::pattern::Pattern;

type Build<K, V> = Box<dyn Fn(L1Eviction) -> Moka<K, V> + Send + Sync>;

pub(crate) struct Adaptive<K, V> {
    current: ArcSwap<Moka<K, V>>,
    /// The cache the previous policy ran, until it is drained.
    retiring: Arc<ArcSwapOption<Moka<K, V>>>,
    /// Whether `current` runs LRU (else TinyLFU).
    lru: AtomicBool,
    /// Held while a switch is made (windows may close on two threads at once).
    switching: Mutex<()>,
    shadow: Shadow,
    build: Build<K, V>,
    fence: Arc<Fence>,
    report: Arc<Report>,
}

impl<K, V> Adaptive<K, V>
where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    /// Starts with TinyLFU, for an L1 of `capacity` entries.
    pub(crate) fn new(
        capacity: u64,
        build: Build<K, V>,
        fence: Arc<Fence>,
        report: Arc<Report>,
    ) -> Self {
        Adaptive {
            current: ArcSwap::from_pointee(build(L1Eviction::TinyLfu)),
            retiring: Arc::default(),
            lru: AtomicBool::new(false),
            switching: Mutex::new(()),
            shadow: Shadow::new(capacity),
            build,
            fence,
            report,
        }
    }

    /// The policy the current cache runs.
    pub(crate) fn policy(&self) -> L1Eviction {
        if self.lru.load(Ordering::Acquire) {
            L1Eviction::Lru
        } else {
            L1Eviction::TinyLfu
        }
    }

    /// A caller's read of `key`: simulated, then looked up in the current cache,
    /// then (while one retires) moved over from the retiring cache.
    pub(crate) async fn get(&self, key: &K) -> Option<Entry<V>> {
        if let Some(preferred) = self.shadow.record(key) {
            self.prefer(preferred).await;
        }
        let found = self.current.load().get(key).await;
        if found.is_some() {
            return found;
        }
        let retiring = self.retiring.load_full()?;
        let current = self.current.load_full();
        move_entry(&self.fence, key, &retiring, &current).await
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.current.load().contains_key(key)
            || self
                .retiring
                .load()
                .as_ref()
                .is_some_and(|retiring| retiring.contains_key(key))
    }

    pub(crate) async fn insert(&self, key: K, entry: Entry<V>) {
        self.current.load().insert(key, entry).await;
    }

    /// Both caches, current first: what an invalidation changes. (A switch makes
    /// the old cache retiring before it makes the new one current, so a reader
    /// that sees the new current cache also sees the retiring one.)
    pub(crate) fn caches(&self) -> impl Iterator<Item = Arc<Moka<K, V>>> {
        let current = self.current.load_full();
        let retiring = self.retiring.load_full();
        std::iter::once(current).chain(retiring)
    }

    pub(crate) fn remove_matching(&self, pattern: &Arc<Pattern>) {
        for cache in self.caches() {
            super::remove_matching(&cache, pattern);
        }
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

    /// Makes a new cache running `policy` current, and returns the drain of the
    /// old one; `None` if another caller is switching or draining.
    fn switch(&self, policy: L1Eviction) -> Option<impl std::future::Future<Output = ()>> {
        let _switching = self.switching.try_lock().ok()?;
        if policy == self.policy() || self.retiring.load().is_some() {
            return None;
        }
        let next = Arc::new((self.build)(policy));
        let previous = self.current.load_full();
        self.retiring.store(Some(Arc::clone(&previous)));
        self.current.store(Arc::clone(&next));
        self.lru.store(policy == L1Eviction::Lru, Ordering::Release);
        self.report.count(Counter::L1PolicySwitches);
        self.report
            .with_observer(|observer| observer.l1_policy_switched(policy));
        tracing::info!(?policy, "L1 eviction policy switched");
        Some(drain(
            previous,
            next,
            Arc::clone(&self.fence),
            Arc::clone(&self.retiring),
        ))
    }
}

/// Moves every entry of `old` to `new`, then forgets `old`.
async fn drain<K, V>(
    old: Arc<Moka<K, V>>,
    new: Arc<Moka<K, V>>,
    fence: Arc<Fence>,
    retiring: Arc<ArcSwapOption<Moka<K, V>>>,
) where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    let keys: Vec<Arc<K>> = old.iter().map(|(key, _)| key).collect();
    for key in keys {
        move_entry(&fence, &*key, &old, &new).await;
    }
    retiring.store(None);
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
