//! Keeps loads that raced an invalidation from writing their (old) value back.
//!
//! A load takes a [`Ticket`] before it starts. Invalidations and explicit inserts
//! bump the generation of the key's shard (or the epoch, for `invalidate_all`) while
//! holding the shard's lock and removing the key from L1 under it. A finished load
//! writes its value only through [`Fence::commit`], which holds the same lock and
//! writes nothing if the generation moved since the ticket. So once `invalidate(k)`
//! has returned, no value loaded before it can land in the cache.
//!
//! Generations are per shard, not per key: an invalidation of another key of the
//! same shard during a load makes that load retry (a false positive costs one extra
//! load, never a stale value). With 256 shards this is rare.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::lock::Mutex;

const SHARDS: usize = 256;

pub(crate) struct Fence {
    shards: Box<[Shard]>,
    epoch: AtomicU64,
    hasher: foldhash::fast::FixedState,
}

#[derive(Default)]
struct Shard {
    generation: AtomicU64,
    lock: Mutex<()>,
}

/// What a load saw before it started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    shard: usize,
    generation: u64,
    epoch: u64,
}

impl Fence {
    pub(crate) fn new() -> Self {
        Fence {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            epoch: AtomicU64::new(0),
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    fn shard_of<K: Hash + ?Sized>(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Taken before a load starts.
    pub(crate) fn ticket<K: Hash + ?Sized>(&self, key: &K) -> Ticket {
        let shard = self.shard_of(key);
        Ticket {
            shard,
            generation: self.shards[shard].generation.load(Ordering::Acquire),
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    /// Runs `write` unless the key was invalidated (or overwritten) since `ticket`
    /// was taken. Returns whether it ran.
    pub(crate) async fn commit<F: Future<Output = ()>>(&self, ticket: Ticket, write: F) -> bool {
        let shard = &self.shards[ticket.shard];
        let _guard = shard.lock.lock().await;
        let clean = shard.generation.load(Ordering::Acquire) == ticket.generation
            && self.epoch.load(Ordering::Acquire) == ticket.epoch;
        if clean {
            write.await;
        }
        clean
    }

    /// Runs `change` (a removal or an overwrite of `key`) so that no load that
    /// started before it can commit afterwards.
    pub(crate) async fn supersede<K, F, T>(&self, key: &K, change: F) -> T
    where
        K: Hash + ?Sized,
        F: Future<Output = T>,
    {
        let shard = &self.shards[self.shard_of(key)];
        let _guard = shard.lock.lock().await;
        shard.generation.fetch_add(1, Ordering::AcqRel);
        change.await
    }

    /// Runs `change` (a removal of everything) so that no load that started before
    /// it can commit afterwards.
    pub(crate) async fn supersede_all<F: Future<Output = T>, T>(&self, change: F) -> T {
        let mut guards = Vec::with_capacity(SHARDS);
        for shard in self.shards.iter() {
            guards.push(shard.lock.lock().await);
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        change.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn run<F: Future>(f: F) -> F::Output {
        f.now_or_never().expect("no contention in these tests")
    }

    #[test]
    fn a_clean_ticket_commits() {
        let fence = Fence::new();
        let ticket = fence.ticket("a");
        assert!(run(fence.commit(ticket, async {})));
    }

    #[test]
    fn an_invalidation_after_the_ticket_blocks_the_commit() {
        let fence = Fence::new();
        let ticket = fence.ticket("a");
        run(fence.supersede("a", async {}));
        let mut wrote = false;
        assert!(!run(fence.commit(ticket, async { wrote = true })));
        assert!(!wrote);
        let fresh = fence.ticket("a");
        assert!(run(fence.commit(fresh, async {})));
    }

    #[test]
    fn invalidate_all_blocks_every_open_ticket() {
        let fence = Fence::new();
        let tickets: Vec<_> = (0..100).map(|i| fence.ticket(&i)).collect();
        run(fence.supersede_all(async {}));
        for ticket in tickets {
            assert!(!run(fence.commit(ticket, async {})));
        }
    }
}
