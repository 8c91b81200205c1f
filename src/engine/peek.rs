//! A read of the cache tiers that never loads: what `TieredCache::peek` sees.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;

use crate::engine::Core;
use crate::key::{CacheKey, CacheValue};
use crate::observe::Tier;
use crate::remote::L2Read;

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// `key`'s fresh entry in L1, else in L2 (then kept in L1, as a flight
    /// keeps it): `Some(value)` (`Some(None)`: a remembered absence), or `None`
    /// when neither tier has a fresh entry. Starts no load and no refresh, and
    /// joins no flight; a stale copy is not an answer.
    pub(crate) async fn peek<Q>(self: &Arc<Self>, key: &Q) -> Option<Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.start_bus(true).await;
        if let Some(entry) = self.l1.get(key).await {
            if entry.is_fresh(self.clock.now()) && self.tags_still_hold(&entry) {
                self.count_hit(&entry);
                return Some(entry.value);
            }
        }
        self.report.tier(Tier::L1, false);
        let remote = self.remote.as_ref()?;
        let key = key.to_owned();
        let ticket = self.fence.ticket(&key);
        let L2Read::Hit(hit, _) = remote.get::<V>(&remote.key(&key), false).await else {
            return None;
        };
        if !self.l2_tags_hold(hit.tags.as_deref()).await {
            return None;
        }
        let now = self.clock.now();
        let plan = self.plan(None);
        let entry = self.entry_from_l2(hit, now, self.can_refresh(false), plan);
        // Not an answer if an invalidation came since the read began.
        (entry.is_fresh(now) && self.commit(&key, ticket, &entry, plan).await)
            .then_some(entry.value)
    }
}
