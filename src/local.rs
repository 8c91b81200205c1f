//! The in-process tier: moka future caches of envelopes, with one eviction policy
//! or (adaptive) whichever of two a shadow simulation prefers.

use std::borrow::Borrow;
use std::hash::Hash;
use std::mem::size_of;
use std::sync::Arc;

use moka::future::Cache;
use serde::Serialize;

use crate::entry::Entry;
use crate::fence::Fence;
use crate::key::CacheKey;
use crate::observe::Report;
use crate::pattern::Pattern;
use crate::policy::L1Eviction;

mod adaptive;
mod shadow;

use self::adaptive::Adaptive;

/// The L1 hasher. Keys are hashed on every hit, so a fast, randomly seeded hasher
/// matters more here than SipHash's stronger flood resistance.
pub(crate) type L1Hasher = foldhash::fast::RandomState;

/// One moka cache, keyed by `K` itself, holding envelopes.
///
/// moka is given no expiry policy: each envelope carries its own expiry, checked
/// on every read against the cache's clock (one clock read), and an expired entry
/// is a miss that the next load replaces. Expired entries that are never read
/// again leave through capacity eviction. moka's per-entry `Expiry` would add
/// timer-wheel work to every read; one clock read is cheaper, and it makes a
/// manual clock work without a second check.
pub(crate) type Moka<K, V> = Cache<K, Entry<V>, L1Hasher>;

/// The L1 tier. Every write to it happens under the fence (see `fence.rs`).
pub(crate) struct L1<K, V> {
    repr: Repr<K, V>,
    enabled: bool,
}

enum Repr<K, V> {
    /// One cache, one policy.
    Fixed(Moka<K, V>, L1Eviction),
    /// [`L1Eviction::Adaptive`].
    Adaptive(Box<Adaptive<K, V>>),
}

impl<K, V> L1<K, V>
where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    /// The moka cache of a fixed-policy L1: the read path awaits its `get`
    /// itself, to keep a hit's future small (an adaptive L1 reads through
    /// [`get`](Self::get), boxed).
    #[inline]
    pub(crate) fn fixed(&self) -> Option<&Moka<K, V>> {
        match &self.repr {
            Repr::Fixed(cache, _) => Some(cache),
            Repr::Adaptive(_) => None,
        }
    }

    /// A read of `key` (counted by the policy).
    pub(crate) async fn get<Q>(&self, key: &Q) -> Option<Entry<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match &self.repr {
            Repr::Fixed(cache, _) => cache.get(key).await,
            Repr::Adaptive(adaptive) => adaptive.get(key).await,
        }
    }

    /// A read of `key` by a caller that holds the key's fence locks (see
    /// `Fence::exclusive`): the same as [`get`](Self::get), except that an
    /// adaptive L1 moves nothing between its caches (which would take the locks
    /// again).
    pub(crate) async fn get_locked(&self, key: &K) -> Option<Entry<V>> {
        match &self.repr {
            Repr::Fixed(cache, _) => cache.get(key).await,
            Repr::Adaptive(adaptive) => adaptive.get_in_place(key).await,
        }
    }

    /// Whether `key` has an entry (not counted by the policy).
    pub(crate) fn contains_key(&self, key: &K) -> bool {
        match &self.repr {
            Repr::Fixed(cache, _) => cache.contains_key(key),
            Repr::Adaptive(adaptive) => adaptive.contains_key(key),
        }
    }

    pub(crate) async fn insert(&self, key: K, entry: Entry<V>) {
        match &self.repr {
            Repr::Fixed(cache, _) => cache.insert(key, entry).await,
            Repr::Adaptive(adaptive) => adaptive.active().insert(key, entry).await,
        }
    }

    /// Every cache L1 holds: what an invalidation changes (an adaptive L1's
    /// inactive cache too, so that whatever either holds is valid).
    fn all(&self) -> &[Moka<K, V>] {
        match &self.repr {
            Repr::Fixed(cache, _) => std::slice::from_ref(cache),
            Repr::Adaptive(adaptive) => adaptive.both(),
        }
    }

    pub(crate) async fn invalidate(&self, key: &K) {
        for cache in self.all() {
            cache.invalidate(key).await;
        }
    }

    pub(crate) fn invalidate_all(&self) {
        self.all().iter().for_each(Cache::invalidate_all);
    }

    /// Removes every key whose string form matches `pattern` (lazily: moka
    /// applies the predicate on reads and in the background).
    pub(crate) fn remove_matching(&self, pattern: &Arc<Pattern>) {
        for cache in self.all() {
            let matcher = Arc::clone(pattern);
            let removed = cache
                .invalidate_entries_if(move |key: &K, _| matcher.matches(&key.to_key_string()));
            if removed.is_err() {
                cache.invalidate_all();
            }
        }
    }

    /// Drops `key` if its entry is still expired at `now`, so that the next
    /// flight loads it instead of finding it.
    pub(crate) async fn remove_if_expired(&self, key: &K, now: u64) {
        for cache in self.all() {
            cache
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
    }

    /// Entries held (approximate: moka counts asynchronously).
    pub(crate) fn entry_count(&self) -> u64 {
        self.all().iter().map(Cache::entry_count).sum()
    }

    pub(crate) async fn run_pending_tasks(&self) {
        for cache in self.all() {
            cache.run_pending_tasks().await;
        }
    }

    /// The policy L1 runs now.
    pub(crate) fn policy(&self) -> L1Eviction {
        match &self.repr {
            Repr::Fixed(_, policy) => *policy,
            Repr::Adaptive(adaptive) => adaptive.policy(),
        }
    }
}

/// A function giving an entry's weight, in whatever unit the capacity is in.
pub(crate) type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u32 + Send + Sync + 'static>;

/// How L1's capacity is counted.
pub(crate) enum L1Capacity<K, V> {
    /// At most this many entries.
    Entries(u64),
    /// At most this much total weight (bytes, with the default weigher).
    Weight { max: u64, weigher: Weigher<K, V> },
}

impl<K, V> L1<K, V>
where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    /// Builds L1. `Adaptive` needs an entry count (the builder checks).
    pub(crate) fn new(
        name: &str,
        capacity: L1Capacity<K, V>,
        eviction: L1Eviction,
        fence: &Arc<Fence>,
        report: &Arc<Report>,
    ) -> Self {
        let enabled = !matches!(
            capacity,
            L1Capacity::Entries(0) | L1Capacity::Weight { max: 0, .. }
        );
        let repr = match (eviction, capacity) {
            (L1Eviction::Adaptive, L1Capacity::Entries(max)) if max > 0 => {
                let build = |policy| one(name, L1Capacity::Entries(max), policy);
                Repr::Adaptive(Box::new(Adaptive::new(
                    max,
                    build,
                    Arc::clone(fence),
                    Arc::clone(report),
                )))
            }
            (eviction, capacity) => Repr::Fixed(one(name, capacity, eviction), eviction),
        };
        L1 { repr, enabled }
    }

    /// False when L1 has no capacity: entries are then not written to it.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }
}

/// One moka cache with `eviction` (`Adaptive` means TinyLFU here).
fn one<K, V>(name: &str, capacity: L1Capacity<K, V>, eviction: L1Eviction) -> Moka<K, V>
where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    // Invalidation closures: patterns (`invalidate_pattern`, and keys received from
    // other instances that cannot be parsed back) are removed lazily by moka.
    let policy = match eviction {
        L1Eviction::TinyLfu | L1Eviction::Adaptive => moka::policy::EvictionPolicy::tiny_lfu(),
        L1Eviction::Lru => moka::policy::EvictionPolicy::lru(),
    };
    let builder = Cache::builder()
        .name(name)
        .eviction_policy(policy)
        .support_invalidation_closures();
    let builder = match capacity {
        L1Capacity::Entries(max) => builder.max_capacity(max),
        L1Capacity::Weight { max, weigher } => {
            builder
                .max_capacity(max)
                .weigher(move |key: &K, entry: &Entry<V>| match &entry.value {
                    Some(value) => weigher(key, value),
                    None => envelope_overhead::<K, V>(),
                })
        }
    };
    builder.build_with_hasher(L1Hasher::default())
}

fn envelope_overhead<K, V>() -> u32 {
    u32::try_from(size_of::<K>() + size_of::<Entry<V>>()).unwrap_or(u32::MAX)
}

/// The default weigher of a byte-bounded L1: the envelope's inline size plus the
/// value's bincode-encoded length (a close proxy for its heap footprint).
pub(crate) fn serialized_size_weigher<K, V: Serialize>() -> Weigher<K, V> {
    Arc::new(|_: &K, value: &V| {
        let mut counter = bincode::enc::write::SizeWriter::default();
        // A value that cannot be serialized weighs only its envelope.
        let _ =
            bincode::serde::encode_into_writer(value, &mut counter, bincode::config::standard());
        let bytes = counter.bytes_written as u64 + u64::from(envelope_overhead::<K, V>());
        u32::try_from(bytes).unwrap_or(u32::MAX)
    })
}
