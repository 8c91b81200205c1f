//! The write path: inserts and invalidations, here and (through the bus) on every
//! other instance.
//!
//! Each change is made in L2 first, then in L1 through the fence (so that no load
//! that read L2 before the change can commit afterwards), then published on the
//! bus. A change that cannot reach L2 is owed: replayed before this instance reads
//! L2 again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::bus::Message;
use crate::cache::{CacheValue, TieredCache};
use crate::entry::Entry;
use crate::key::CacheKey;
use crate::observe::Counter;
use crate::pattern::{escape_glob, Pattern};

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// Writes `value` for `key` in every tier, with the default TTLs, and tells
    /// the other instances to drop their copy. A load of the same key that was in
    /// flight (on any instance) will not overwrite it. If Redis cannot be reached,
    /// its old entry is deleted later instead, before this instance reads it again.
    pub async fn insert(&self, key: K, value: V) {
        let inner = &*self.inner;
        let l1_ttl = inner.ttl.jittered(inner.ttl.l1);
        let l2_ttl = inner.ttl.jittered(inner.ttl.l2);
        self.write(key, value, l1_ttl, l2_ttl).await;
    }

    /// Writes `value` for `key` in every tier, expiring after exactly `ttl` (no
    /// jitter) in each; a `ttl` past [`Ttl::MAX`](crate::Ttl::MAX) is shortened to
    /// it. A zero `ttl` removes the key instead.
    pub async fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return self.invalidate(&key).await;
        }
        let ttl = ttl.min(crate::Ttl::MAX);
        self.write(key, value, ttl, ttl).await;
    }

    async fn write(&self, key: K, value: V, l1_ttl: Duration, l2_ttl: Duration) {
        self.start_bus().await;
        let inner = &*self.inner;
        inner.report.event(Counter::Inserts);
        let now = inner.clock.now();
        let entry = Entry::new(Some(value), now, l1_ttl, &inner.freshness, Duration::ZERO);
        if let Some(l2) = &inner.l2 {
            let lifetime = inner.freshness.lifetime(l2_ttl, Duration::ZERO);
            l2.set(&inner.report, &l2.key(&key), entry.value.as_ref(), lifetime)
                .await;
        }
        let l1_write = async {
            if inner.l1_enabled {
                inner.l1.insert(key.clone(), entry).await;
            }
        };
        inner.fence.supersede(&key, l1_write).await;
        self.publish(Message::Key(key.to_key_string())).await;
    }

    /// Removes `key` from every tier, and from every other instance's L1. Once
    /// this returns, no load that was in flight (on any instance) can write back
    /// what it read before. If L2 cannot be reached (or this call is cancelled),
    /// the deletion is replayed before this instance reads L2 again.
    pub async fn invalidate(&self, key: &K) {
        self.begin_invalidation(false).await;
        let inner = &*self.inner;
        if let Some(l2) = &inner.l2 {
            l2.delete(&inner.report, l2.key(key)).await;
        }
        inner.fence.supersede(key, inner.l1.invalidate(key)).await;
        self.publish(Message::Key(key.to_key_string())).await;
    }

    /// Removes every key whose string form matches the Redis glob `pattern` (`*`,
    /// `?`, `[abc]`, `[^a]`, `[a-z]`, `\` escapes; see [`Pattern`]) from every
    /// tier and every instance, with the guarantees of
    /// [`invalidate`](Self::invalidate). In L2 this walks the cache's namespace
    /// with `SCAN MATCH` + `UNLINK`, one batch per call (every master of a
    /// cluster), so it takes time in proportion to the namespace's size. Use
    /// [`escape_glob`](crate::escape_glob) for literal parts.
    ///
    /// ```
    /// # use tiered::TieredCache;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = TieredCache::<String, u32>::builder("orders").build().unwrap();
    /// cache.insert("user:7:order:1".into(), 10).await;
    /// cache.insert("user:8:order:1".into(), 20).await;
    /// cache.invalidate_pattern("user:7:*").await;
    /// assert_eq!(cache.get(&"user:7:order:1".into()).await.unwrap(), None);
    /// assert_eq!(cache.get(&"user:8:order:1".into()).await.unwrap(), Some(20));
    /// # }
    /// ```
    pub async fn invalidate_pattern(&self, pattern: &str) {
        self.begin_invalidation(false).await;
        let inner = &*self.inner;
        if let Some(l2) = &inner.l2 {
            l2.delete_pattern(&inner.report, pattern).await;
        }
        self.remove_matching(Pattern::new(pattern)).await;
        self.publish(Message::Pattern(pattern.to_owned())).await;
    }

    /// Removes every entry of this cache from every tier (in L2: every key of its
    /// namespace, by `SCAN` + `UNLINK`) and every instance, with the guarantees of
    /// [`invalidate`](Self::invalidate).
    pub async fn invalidate_all(&self) {
        self.begin_invalidation(true).await;
        let inner = &*self.inner;
        if let Some(l2) = &inner.l2 {
            l2.clear(&inner.report).await;
        }
        self.clear_l1().await;
        self.publish(Message::All).await;
    }

    /// Applies another instance's invalidation to this one's L1, through the fence.
    pub(crate) async fn apply_remote(&self, message: Message) {
        let inner = &*self.inner;
        inner.report.event(Counter::InvalidationsReceived);
        match message {
            Message::Key(text) => match K::from_key_str(&text) {
                Some(key) => inner.fence.supersede(&key, inner.l1.invalidate(&key)).await,
                None => self.remove_matching(Pattern::new(escape_glob(&text))).await,
            },
            Message::Pattern(glob) => self.remove_matching(Pattern::new(glob)).await,
            Message::All => self.clear_l1().await,
        }
    }

    /// Clears L1 once the bus subscription is (re)established: messages may have
    /// been missed. `count` is false for the first subscription (L1 then only
    /// holds what was read while the subscription was not up yet).
    pub(crate) async fn clear_l1_after_gap(&self, count: bool) {
        let inner = &*self.inner;
        self.clear_l1().await;
        if count {
            inner.report.event(Counter::BusResubscribes);
            tracing::info!(cache = %inner.name, "bus resubscribed: L1 cleared");
        }
    }

    /// Starts the bus if needed, and counts and reports an invalidation.
    async fn begin_invalidation(&self, all: bool) {
        self.start_bus().await;
        self.inner.report.count(Counter::Invalidations);
        self.inner.report.with_observer(|o| o.invalidated(all));
    }

    /// Empties L1 through the fence: no load in flight commits what it read before.
    async fn clear_l1(&self) {
        let inner = &*self.inner;
        inner
            .fence
            .supersede_all(|| inner.l1.invalidate_all())
            .await;
    }

    async fn remove_matching(&self, pattern: Pattern) {
        let inner = &*self.inner;
        let pattern = Arc::new(pattern);
        inner
            .fence
            .supersede_pattern(Arc::clone(&pattern), || inner.l1.remove_matching(&pattern))
            .await;
    }

    /// Publishes `message`, and makes sure that what L2 still owes is replayed in
    /// the background (other instances read L2 too: they must not wait for this
    /// one's next read to stop seeing what it deleted).
    async fn publish(&self, message: Message) {
        self.keep_flushing();
        if let Some(bus) = &self.inner.bus {
            if !bus.publish(message).await {
                self.inner.report.event(Counter::BusPublishErrors);
            }
        }
    }

    /// Starts the background replay of owed L2 deletions, unless it runs or
    /// nothing is owed. It retries with backoff (50 ms doubling to 5 s) until
    /// nothing is owed or the cache is dropped.
    fn keep_flushing(&self) {
        let Some(l2) = &self.inner.l2 else {
            return;
        };
        if !l2.has_pending() || l2.flusher.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            l2.flusher.store(false, Ordering::Release);
            return;
        };
        let cache = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let mut delay = Duration::from_millis(50);
            loop {
                tokio::time::sleep(delay).await;
                let Some(inner) = cache.upgrade() else {
                    return;
                };
                let Some(l2) = inner.l2.as_ref() else {
                    return;
                };
                if l2.flush_pending(&inner.report).await {
                    l2.flusher.store(false, Ordering::Release);
                    // Owed again meanwhile, with nobody to see to it: go on.
                    if !l2.has_pending() || l2.flusher.swap(true, Ordering::AcqRel) {
                        return;
                    }
                    delay = Duration::from_millis(50);
                } else {
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        });
    }
}
