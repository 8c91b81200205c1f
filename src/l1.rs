//! The in-process tier: a moka future cache of envelopes.

use std::mem::size_of;
use std::sync::Arc;

use moka::future::Cache;
use serde::Serialize;

use crate::entry::Entry;
use crate::key::CacheKey;

/// The L1 hasher. Keys are hashed on every hit, so a fast, randomly seeded hasher
/// matters more here than SipHash's stronger flood resistance.
pub(crate) type L1Hasher = foldhash::fast::RandomState;

/// The L1 tier: moka, keyed by `K` itself, holding envelopes.
///
/// moka is given no expiry policy: each envelope carries its own expiry, checked
/// on every read against the cache's clock (one clock read), and an expired entry
/// is a miss that the next load replaces. Expired entries that are never read
/// again leave through capacity eviction. moka's per-entry `Expiry` would add
/// timer-wheel work to every read; one clock read is cheaper, and it makes a
/// manual clock work without a second check.
pub(crate) type L1<K, V> = Cache<K, Entry<V>, L1Hasher>;

/// A function giving an entry's weight, in whatever unit the capacity is in.
pub(crate) type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u32 + Send + Sync + 'static>;

/// Which entry L1 evicts when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum L1Eviction {
    /// moka's TinyLFU: a new entry is admitted only if it has been asked for more
    /// often than the entry it would evict (a frequency sketch remembers), and the
    /// least recently used admitted entry goes first. Best when popularity is
    /// stable (Zipf-like traffic) and with one-off scans, which it keeps out.
    #[default]
    TinyLfu,
    /// Least recently used: every new entry is admitted. Best when the hot set
    /// moves (yesterday's popular keys are cold today).
    Lru,
}

/// How L1's capacity is counted.
pub(crate) enum L1Capacity<K, V> {
    /// At most this many entries.
    Entries(u64),
    /// At most this much total weight (bytes, with the default weigher).
    Weight { max: u64, weigher: Weigher<K, V> },
}

pub(crate) fn build<K, V>(name: &str, capacity: L1Capacity<K, V>, eviction: L1Eviction) -> L1<K, V>
where
    K: CacheKey,
    V: Clone + Send + Sync + 'static,
{
    // Invalidation closures: patterns (`invalidate_pattern`, and keys received from
    // other instances that cannot be parsed back) are removed lazily by moka.
    let policy = match eviction {
        L1Eviction::TinyLfu => moka::policy::EvictionPolicy::tiny_lfu(),
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
