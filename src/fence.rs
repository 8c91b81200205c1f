//! Keeps loads that raced an invalidation from writing their (old) value into L1.
//!
//! A load takes a [`Ticket`] before it reads L2. An invalidation first makes its
//! change in L2 (delete, overwrite), and only then moves the fence: under the
//! key's shard lock it bumps the shard's generation and changes L1. A finished
//! load writes L1 only through [`Fence::commit`], which holds the same lock and
//! writes nothing if the generation moved since the ticket. So a load either
//! committed before the invalidation touched L1 (and the invalidation removes its
//! value), or its ticket predates the bump (and it is refused), or its ticket is
//! newer and its L2 read came after the L2 change (it saw no old value).
//!
//! Patterns and `invalidate_all` cannot name a shard: they take the fence's global
//! lock for writing (commits hold it for reading, only around their L1 write, never
//! across Redis I/O), record the pattern (or bump the epoch) and change L1 under it.
//! A commit is refused if a pattern recorded after its ticket matches its key.
//!
//! Generations are per shard, and each shard remembers which key (by a 64-bit
//! hash) each of its last [`RECENT_KEYS`] bumps was for: a commit is refused only
//! when its own key was changed since its ticket, or when its shard moved too far
//! to tell (more than [`RECENT_KEYS`] changes in its shard during one load).
//! Invalidations of other keys refuse nothing below that, where before any
//! change in the same of 256 shards did. (A hash collision refuses a clean
//! commit: one extra load, never a stale value.)

use std::collections::VecDeque;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::lock::Mutex as AsyncMutex;
use tokio::sync::RwLock;

use crate::key::CacheKey;
use crate::pattern::Pattern;

const SHARDS: usize = 256;

/// How many of its latest changes a shard remembers the keys of.
const RECENT_KEYS: usize = 16;

/// How many recent patterns a commit is checked against; a ticket older than all
/// of them is refused.
const RECENT_PATTERNS: usize = 64;

pub(crate) struct Fence {
    shards: Box<[Shard]>,
    /// Held for reading by commits, for writing by pattern and global changes.
    global: RwLock<()>,
    epoch: AtomicU64,
    /// How many patterns were ever recorded.
    pattern_seq: AtomicU64,
    /// The last [`RECENT_PATTERNS`] patterns, with their sequence numbers.
    patterns: Mutex<VecDeque<(u64, Arc<Pattern>)>>,
    hasher: foldhash::fast::FixedState,
}

#[derive(Default)]
struct Shard {
    /// Moved only while `recent` is held (so the two agree for a reader of both).
    generation: AtomicU64,
    /// The key hash of the change that made generation `g`, at `g % RECENT_KEYS`.
    recent: Mutex<[u64; RECENT_KEYS]>,
    lock: AsyncMutex<()>,
}

impl Shard {
    /// Whether the key hashed `hash` may have changed since `generation`.
    fn changed_since(&self, hash: u64, generation: u64) -> bool {
        self.changed_between(hash, generation, u64::MAX)
    }

    /// Whether the key hashed `hash` may have changed after `from`, up to `to`
    /// (generations of this shard).
    fn changed_between(&self, hash: u64, from: u64, to: u64) -> bool {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.generation.load(Ordering::Acquire);
        if from >= now.min(to) {
            return false;
        }
        // The ring no longer holds generation `from + 1`: cannot tell.
        now - from > RECENT_KEYS as u64
            || (from + 1..=now.min(to)).any(|g| recent[g as usize % RECENT_KEYS] == hash)
    }

    fn bump(&self, hash: u64) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let next = self.generation.load(Ordering::Acquire) + 1;
        recent[next as usize % RECENT_KEYS] = hash;
        self.generation.store(next, Ordering::Release);
    }
}

/// What a load saw before it started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    hash: u64,
    shard: usize,
    generation: u64,
    epoch: u64,
    pattern_seq: u64,
}

impl Fence {
    pub(crate) fn new() -> Self {
        Fence {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            global: RwLock::new(()),
            epoch: AtomicU64::new(0),
            pattern_seq: AtomicU64::new(0),
            patterns: Mutex::new(VecDeque::with_capacity(RECENT_PATTERNS)),
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    fn shard_of<K: CacheKey>(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Taken before a load reads L2.
    pub(crate) fn ticket<K: CacheKey>(&self, key: &K) -> Ticket {
        let hash = self.hasher.hash_one(key);
        let shard = hash as usize % SHARDS;
        Ticket {
            hash,
            shard,
            generation: self.shards[shard].generation.load(Ordering::Acquire),
            epoch: self.epoch.load(Ordering::Acquire),
            pattern_seq: self.pattern_seq.load(Ordering::Acquire),
        }
    }

    /// A ticket taken once no invalidation of `key` is half done: one that has
    /// moved the fence but not yet changed L1 is waited for. For a load that
    /// reads L1 (not L2) after its ticket: the change an invalidation makes in
    /// L1 comes after it moves the fence, so a plain [`ticket`](Self::ticket)
    /// taken in between would let the load read the old value and still commit.
    pub(crate) async fn settled_ticket<K: CacheKey>(&self, key: &K) -> Ticket {
        self.exclusive(key, async { self.ticket(key) }).await
    }

    /// Runs `f` (an L1 change of `key` that reads L1 first, such as moving an
    /// entry between caches) while no invalidation of `key` runs: it happens
    /// wholly before or wholly after each of them.
    pub(crate) async fn exclusive<K: CacheKey, F: Future>(&self, key: &K, f: F) -> F::Output {
        let _global = self.global.read().await;
        let _guard = self.shards[self.shard_of(key)].lock.lock().await;
        f.await
    }

    /// Runs `write` (an L1 write of `key`) unless `key` was invalidated or
    /// overwritten since `ticket` was taken. Returns whether it ran.
    pub(crate) async fn commit<K: CacheKey, F: Future<Output = ()>>(
        &self,
        key: &K,
        ticket: Ticket,
        write: F,
    ) -> bool {
        let _global = self.global.read().await;
        let shard = &self.shards[ticket.shard];
        let _guard = shard.lock.lock().await;
        let clean = !shard.changed_since(ticket.hash, ticket.generation)
            && self.epoch.load(Ordering::Acquire) == ticket.epoch
            && !self.pattern_since(ticket.pattern_seq, key);
        if clean {
            write.await;
        }
        clean
    }

    /// Whether `key` may have been invalidated after `earlier` was taken and
    /// before `later` was (two tickets of `key`).
    pub(crate) fn changed_between<K: CacheKey>(
        &self,
        key: &K,
        earlier: &Ticket,
        later: &Ticket,
    ) -> bool {
        self.shards[earlier.shard].changed_between(
            earlier.hash,
            earlier.generation,
            later.generation,
        ) || earlier.epoch < later.epoch
            || (earlier.pattern_seq < later.pattern_seq
                && self.pattern_in(earlier.pattern_seq, later.pattern_seq, key))
    }

    /// Whether a pattern recorded after `seq` matches `key` (or may have: it is no
    /// longer among the recent ones).
    fn pattern_since<K: CacheKey>(&self, seq: u64, key: &K) -> bool {
        let latest = self.pattern_seq.load(Ordering::Acquire);
        latest != seq && self.pattern_in(seq, latest, key)
    }

    /// Whether a pattern recorded after `after`, up to `until`, matches `key` (or
    /// may have: it is no longer among the recent ones).
    fn pattern_in<K: CacheKey>(&self, after: u64, until: u64, key: &K) -> bool {
        let patterns = self.patterns.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest_kept = patterns.front().map_or(u64::MAX, |(n, _)| *n);
        if oldest_kept > after + 1 {
            return true;
        }
        let key = key.to_key_string();
        patterns
            .iter()
            .any(|(n, pattern)| (after + 1..=until).contains(n) && pattern.matches(&key))
    }

    /// Runs `change` (an L1 removal or overwrite of `key`, after the L2 change
    /// landed) so that no load that took its ticket before can commit afterwards.
    pub(crate) async fn supersede<K: CacheKey, F: Future<Output = T>, T>(
        &self,
        key: &K,
        change: F,
    ) -> T {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[hash as usize % SHARDS];
        let _guard = shard.lock.lock().await;
        shard.bump(hash);
        change.await
    }

    /// Records `pattern` and runs `change` (its L1 removal) so that no load of a
    /// matching key that took its ticket before can commit afterwards.
    pub(crate) async fn supersede_pattern<T>(
        &self,
        pattern: Arc<Pattern>,
        change: impl FnOnce() -> T,
    ) -> T {
        let _global = self.global.write().await;
        {
            let mut patterns = self.patterns.lock().unwrap_or_else(PoisonError::into_inner);
            let seq = self.pattern_seq.load(Ordering::Acquire) + 1;
            if patterns.len() == RECENT_PATTERNS {
                patterns.pop_front();
            }
            patterns.push_back((seq, pattern));
            self.pattern_seq.store(seq, Ordering::Release);
        }
        change()
    }

    /// Runs `change` (a removal of everything from L1) so that no load that took
    /// its ticket before can commit afterwards.
    pub(crate) async fn supersede_all<T>(&self, change: impl FnOnce() -> T) -> T {
        let _global = self.global.write().await;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        change()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::pin::pin;

    fn run<F: Future>(f: F) -> F::Output {
        f.now_or_never().expect("no contention in these tests")
    }

    #[test]
    fn a_clean_ticket_commits() {
        let fence = Fence::new();
        let ticket = fence.ticket(&"a");
        assert!(run(fence.commit(&"a", ticket, async {})));
    }

    #[test]
    fn an_invalidation_after_the_ticket_blocks_the_commit() {
        let fence = Fence::new();
        let ticket = fence.ticket(&"a");
        run(fence.supersede(&"a", async {}));
        let mut wrote = false;
        assert!(!run(fence.commit(&"a", ticket, async { wrote = true })));
        assert!(!wrote);
        let fresh = fence.ticket(&"a");
        assert!(run(fence.commit(&"a", fresh, async {})));
    }

    /// A reader of "L1" (a slot) that takes its ticket while an invalidation is
    /// half done (fence moved, slot not yet emptied) must not put back what the
    /// invalidation removes.
    #[test]
    fn a_reader_during_an_invalidation_cannot_put_back_what_it_removes() {
        let fence = Fence::new();
        let slot = Mutex::new(Some(1));
        let read = || *slot.lock().unwrap();
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        let invalidation = fence.supersede(&"a", async {
            let _ = gate.await;
            *slot.lock().unwrap() = None;
        });
        let reader = async {
            let ticket = fence.settled_ticket(&"a").await;
            let seen = read();
            fence
                .commit(&"a", ticket, async {
                    if seen.is_some() {
                        *slot.lock().unwrap() = seen;
                    }
                })
                .await
        };
        let (mut invalidation, mut reader) = (pin!(invalidation), pin!(reader));
        assert!(
            invalidation.as_mut().now_or_never().is_none(),
            "the gate holds it"
        );
        assert!(
            reader.as_mut().now_or_never().is_none(),
            "the shard is locked"
        );
        open.send(()).unwrap();
        run(invalidation);
        run(reader);
        assert_eq!(read(), None, "the invalidated value came back");
    }

    /// A key in the same shard as `key`, other than it.
    fn neighbour(fence: &Fence, key: u64) -> u64 {
        (key + 1..)
            .find(|other| fence.shard_of(other) == fence.shard_of(&key))
            .unwrap()
    }

    #[test]
    fn invalidations_of_other_keys_of_the_shard_do_not_refuse_a_commit() {
        let fence = Fence::new();
        let key = 7u64;
        let ticket = fence.ticket(&key);
        let other = neighbour(&fence, key);
        for _ in 0..RECENT_KEYS {
            run(fence.supersede(&other, async {}));
        }
        assert!(!fence.changed_between(&key, &ticket, &fence.ticket(&key)));
        assert!(run(fence.commit(&key, ticket, async {})));
        // The key's own invalidation among them still refuses it.
        let ticket = fence.ticket(&key);
        run(fence.supersede(&other, async {}));
        run(fence.supersede(&key, async {}));
        run(fence.supersede(&other, async {}));
        assert!(fence.changed_between(&key, &ticket, &fence.ticket(&key)));
        assert!(!run(fence.commit(&key, ticket, async {})));
    }

    #[test]
    fn a_shard_that_moved_too_far_to_tell_refuses() {
        let fence = Fence::new();
        let key = 7u64;
        let ticket = fence.ticket(&key);
        let other = neighbour(&fence, key);
        for _ in 0..=RECENT_KEYS {
            run(fence.supersede(&other, async {}));
        }
        assert!(!run(fence.commit(&key, ticket, async {})));
    }

    #[test]
    fn changed_between_looks_only_between_its_two_tickets() {
        let fence = Fence::new();
        let key = 7u64;
        let earlier = fence.ticket(&key);
        let later = fence.ticket(&key);
        run(fence.supersede(&key, async {}));
        assert!(!fence.changed_between(&key, &earlier, &later));
        assert!(fence.changed_between(&key, &earlier, &fence.ticket(&key)));
    }

    #[test]
    fn invalidate_all_blocks_every_open_ticket() {
        let fence = Fence::new();
        let tickets: Vec<_> = (0..100u64).map(|i| (i, fence.ticket(&i))).collect();
        run(fence.supersede_all(|| ()));
        for (key, ticket) in tickets {
            assert!(!run(fence.commit(&key, ticket, async {})));
        }
    }

    #[test]
    fn a_pattern_blocks_only_the_keys_it_matches() {
        let fence = Fence::new();
        let (a, b) = ("user:1", "order:1");
        let (ta, tb) = (fence.ticket(&a), fence.ticket(&b));
        run(fence.supersede_pattern(Arc::new(Pattern::new("user:*")), || ()));
        assert!(!run(fence.commit(&a, ta, async {})));
        assert!(run(fence.commit(&b, tb, async {})));
    }

    #[test]
    fn a_ticket_older_than_every_kept_pattern_is_refused() {
        let fence = Fence::new();
        let key = "unrelated";
        let ticket = fence.ticket(&key);
        for _ in 0..=RECENT_PATTERNS {
            run(fence.supersede_pattern(Arc::new(Pattern::new("other:*")), || ()));
        }
        assert!(!run(fence.commit(&key, ticket, async {})));
        let fresh = fence.ticket(&key);
        assert!(run(fence.commit(&key, fresh, async {})));
    }
}
