//! The write path: inserts and invalidations, here and (through the bus) on every
//! other instance.
//!
//! Each change is made in L2 first, then in L1 through the fence (so that no load
//! that read L2 before the change can commit afterwards), then published on the
//! bus. A change that cannot reach L2 is owed: replayed before this instance reads
//! L2 again, and in the background.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::bus::{Bus, Message};
use crate::engine::Core;
use crate::entry::{Entry, Tags};
use crate::key::{CacheKey, CacheValue};
use crate::namespace::ALL_TAG;
use crate::observe::{Counter, Written};
use crate::pattern::{escape_glob, Pattern};
use crate::policy::Plan;
use crate::remote::{Landed, Remote};

/// How many keys of an `invalidate_many` or `insert_many` go in one store call
/// (or set of pipelined writes) and one message.
const BATCH: usize = 1000;

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// Writes each `(key, value)` in the tiers the call's `plan` writes, with
    /// its TTLs (jittered per entry unless the call set them) and tags, in
    /// batches of [`BATCH`]: the store writes of a batch go out together under
    /// one timeout, and one bus message tells the other instances to drop their
    /// copies of the batch. A tier the plan skips has the keys dropped instead
    /// (it must not keep an older value than the others).
    pub(crate) async fn write_many(self: &Arc<Self>, entries: Vec<(K, V)>, plan: &Plan) -> Written {
        if entries.is_empty() {
            return Written::Applied;
        }
        // A key given twice takes its last value, in every tier (the writes of
        // a batch land in no set order).
        let entries = if entries.len() == 1 {
            entries
        } else {
            let mut seen = std::collections::HashSet::with_capacity(entries.len());
            let mut kept: Vec<(K, V)> = (entries.into_iter().rev())
                .filter(|(key, _)| seen.insert(key.clone()))
                .collect();
            kept.reverse();
            kept
        };
        self.start_bus(false).await;
        // Reading the tag clock comes before the store writes: a caller
        // cancelled there has the keys' old entries deleted instead.
        let mut owed = (self.remote.as_ref()).map(|remote| {
            let keys = entries.iter().map(|(key, _)| remote.key(key)).collect();
            remote.deleting_unless_done(keys)
        });
        self.sync_tag_clock().await;
        if let Some(owed) = &mut owed {
            owed.done();
        }
        let mut entries = entries.into_iter().peekable();
        let mut applied = true;
        let ttl = &plan.ttl;
        while entries.peek().is_some() {
            let now = self.clock.now();
            let born = self.tags.clock();
            let batch: Vec<(K, Entry<V>, Duration)> = entries
                .by_ref()
                .take(BATCH)
                .map(|(key, value)| {
                    let (l1_ttl, l2_ttl) = (ttl.jittered(ttl.l1), ttl.jittered(ttl.l2));
                    let tags = plan.tags.clone().map(|names| Tags::new(names, born));
                    let entry =
                        Entry::new(Some(value), now, l1_ttl, &plan.freshness, Duration::ZERO)
                            .tagged(born, tags);
                    (key, entry, l2_ttl)
                })
                .collect();
            for _ in &batch {
                self.report.event(Counter::Inserts);
            }
            let landed = match &self.remote {
                Some(remote) if plan.skip.l2_writes => {
                    (remote.delete_many(batch.iter().map(|(k, ..)| remote.key(k)).collect())).await
                }
                Some(remote) => {
                    let births: Vec<_> = batch.iter().map(|(_, e, _)| self.l2_tags(e)).collect();
                    let writes: Vec<_> = batch
                        .iter()
                        .zip(&births)
                        .map(|((key, entry, l2_ttl), tags)| {
                            let lifetime = plan.freshness.lifetime(*l2_ttl, Duration::ZERO);
                            (
                                remote.key(key),
                                entry.value.as_ref(),
                                lifetime,
                                tags.as_deref(),
                            )
                        })
                        .collect();
                    remote.set_many(&writes).await
                }
                None => true,
            };
            let change = || match &batch[..] {
                [(key, ..)] => Landed::Key(key.to_key_string()),
                batch => Landed::Keys(batch.iter().map(|(k, ..)| k.to_key_string()).collect()),
            };
            let l1 = async {
                for (key, entry, _) in &batch {
                    let write = async {
                        if !self.l1.enabled() {
                        } else if plan.skip.l1_writes {
                            self.l1.invalidate(key).await;
                        } else {
                            self.l1.insert(key.clone(), entry.clone()).await;
                        }
                    };
                    self.fence.supersede(key, write).await;
                }
            };
            applied &= self.finish(landed, change, l1).await.is_applied();
        }
        if applied {
            Written::Applied
        } else {
            self.waiting()
        }
    }

    /// Removes `key` from every tier, and from every other instance's L1.
    pub(crate) async fn invalidate(self: &Arc<Self>, key: &K) -> Written {
        self.begin_invalidation(false).await;
        let landed = match &self.remote {
            Some(remote) => remote.delete(remote.key(key)).await,
            None => true,
        };
        let change = || Landed::Key(key.to_key_string());
        self.finish(
            landed,
            change,
            self.fence.supersede(key, self.l1.invalidate(key)),
        )
        .await
    }

    /// Removes `keys` from every tier, and from every other instance's L1, in
    /// batches of [`BATCH`] keys: one store call and one bus message each (a
    /// call under one timeout, a message of bounded size).
    pub(crate) async fn invalidate_many(self: &Arc<Self>, keys: &[K]) -> Written {
        if keys.is_empty() {
            return Written::Applied;
        }
        self.begin_invalidation(false).await;
        let mut applied = true;
        for batch in keys.chunks(BATCH) {
            let landed = match &self.remote {
                Some(remote) => {
                    remote
                        .delete_many(batch.iter().map(|k| remote.key(k)).collect())
                        .await
                }
                None => true,
            };
            let change = || Landed::Keys(batch.iter().map(CacheKey::to_key_string).collect());
            let l1 = async {
                for key in batch {
                    self.fence.supersede(key, self.l1.invalidate(key)).await;
                }
            };
            applied &= self.finish(landed, change, l1).await.is_applied();
        }
        if applied {
            Written::Applied
        } else {
            self.waiting()
        }
    }

    /// Removes every key whose string form matches the Redis glob `pattern`.
    pub(crate) async fn invalidate_pattern(self: &Arc<Self>, pattern: &str) -> Written {
        self.begin_invalidation(false).await;
        let landed = match &self.remote {
            Some(remote) => remote.delete_pattern(pattern).await,
            None => true,
        };
        let change = || Landed::Pattern(pattern.to_owned());
        self.finish(landed, change, self.remove_matching(Pattern::new(pattern)))
            .await
    }

    /// Makes every entry carrying one of `tags`, written before this call,
    /// unreadable in every tier and instance: stamps them on the tag clock (in
    /// L2, in one call), then tells the other instances the stamp. Until the
    /// stamp lands (if L2 cannot be reached, it is owed), entries carrying them
    /// are unreadable here.
    pub(crate) async fn invalidate_tags(self: &Arc<Self>, tags: Vec<String>) -> Written {
        if tags.is_empty() {
            return Written::Applied;
        }
        if self
            .remote
            .as_ref()
            .is_some_and(|remote| !remote.stamps_tags())
        {
            tracing::warn!(cache = %self.name, "the L2 store cannot stamp tags: invalidate_tag clears the namespace");
            return Box::pin(self.invalidate_all()).await;
        }
        self.begin_invalidation(false).await;
        let Some(remote) = &self.remote else {
            self.tags.invalidate_here(tags.iter().map(String::as_str));
            // The other instances' clocks are their own: the stamp means
            // nothing to them, the tags do.
            let change = || Landed::Tags(0, tags.clone(), 0);
            return self.finish(true, change, async {}).await;
        };
        // Pending first: a caller cancelled while the stamp is on its way
        // leaves the tags unreadable here until the owed stamp lands.
        let call = self.tags.pending(tags.iter().map(String::as_str));
        let stamp = remote.stamp_tags(&tags, call).await;
        if let Some(stamp) = stamp {
            let names = tags.iter().map(String::as_str);
            self.tags.invalidated(names, stamp, Some(call));
        }
        let change = || Landed::Tags(stamp.unwrap_or(0), tags.clone(), call);
        self.finish(stamp.is_some(), change, async {}).await
    }

    /// Makes every entry of this cache unreadable in every tier and instance.
    /// With a bus and a store that stamps tags, that is the namespace epoch:
    /// one stamp of the namespace's own tag, which every entry in L2 carries,
    /// and one message; the entries stay in L2 until their TTL (or
    /// [`invalidate_all_and_reclaim`](Self::invalidate_all_and_reclaim)). Otherwise, the walk.
    pub(crate) async fn invalidate_all(self: &Arc<Self>) -> Written {
        let Some(remote) = (self.remote.as_ref()).filter(|_| self.bus.is_some() && self.epochs())
        else {
            return self.invalidate_all_and_reclaim().await;
        };
        self.begin_invalidation(true).await;
        // Pending first, and the stamp owed at once: from here until the
        // stamp lands (or its owed replay does, if this call is cancelled or
        // L2 cannot be reached), nothing this instance reads from L2 is
        // served. So L1 is emptied first (whatever becomes of the call); the
        // landing, or its replay, empties it again and is published.
        let tags = vec![ALL_TAG.to_owned()];
        let call = self.tags.pending([ALL_TAG]);
        let mut owed = remote.stamping_unless_done(&tags, call);
        self.empty_l1().await;
        let stamp = remote.stamp_tags(&tags, call).await;
        owed.done();
        let Some(stamp) = stamp else {
            return self.waiting(); // owed by `stamp_tags`
        };
        self.tags.invalidated([ALL_TAG], stamp, Some(call));
        let change = || Landed::Tags(stamp, tags.clone(), call);
        self.finish(true, change, self.empty_l1()).await
    }

    /// Removes every entry of this cache from every tier and instance: in L2,
    /// every key of its namespace, by a walk (`SCAN` + `UNLINK`).
    pub(crate) async fn invalidate_all_and_reclaim(self: &Arc<Self>) -> Written {
        self.begin_invalidation(true).await;
        let landed = match &self.remote {
            Some(remote) => remote.clear().await,
            None => true,
        };
        self.finish(landed, || Landed::All, self.clear_l1()).await
    }

    /// What every write does once its L2 change was made (or owed): keeps the
    /// bus message of a change that `landed` (at once, before any further await:
    /// from here on, a cancelled caller's message is still sent), makes the L1
    /// change `l1` through the fence (guarded: a caller cancelled while it waits
    /// for the fence has the change made in a task of its own, so that this
    /// instance does not keep what the others drop — only with an L2: without
    /// one, such a write has changed nothing), then sends the message.
    async fn finish(
        self: &Arc<Self>,
        landed: bool,
        change: impl FnOnce() -> Landed,
        l1: impl Future<Output = ()>,
    ) -> Written {
        let bus = self.bus.as_ref().filter(|_| landed);
        let change = (bus.is_some() || self.remote.is_some()).then(change);
        let announcement = bus
            .zip(change.as_ref())
            .map(|(bus, c)| bus.announce(message(c)));
        let l1_change = L1ChangeOwed(
            change
                .filter(|_| self.remote.is_some())
                .map(|c| (Arc::clone(self), c)),
        );
        l1.await;
        l1_change.done();
        let mut sent = true;
        if let Some(announcement) = announcement {
            if !announcement.send().await {
                self.report.event(Counter::BusPublishErrors);
                sent = false;
            }
        }
        if landed && sent {
            Written::Applied
        } else {
            self.waiting()
        }
    }

    /// What this instance has waiting to be sent: [`Written::Applied`] if
    /// nothing.
    pub(crate) fn waiting(&self) -> Written {
        waiting_in(self.remote.as_ref(), self.bus.as_ref())
    }

    /// Sends what this instance has waiting (owed changes, kept messages) now,
    /// until nothing is left or `within` has passed; returns what is left.
    pub(crate) async fn flush(&self, within: std::time::Duration) -> Written {
        flush_parts(self.remote.as_ref(), self.bus.as_ref(), within).await
    }

    /// Applies another instance's invalidation to this one's L1, through the fence.
    pub(crate) async fn apply_remote(&self, message: Message) {
        self.report.event(Counter::InvalidationsReceived);
        self.drop_landed(match message {
            Message::Key(text) => Landed::Key(text),
            Message::Keys(texts) => Landed::Keys(texts),
            Message::Pattern(glob) => Landed::Pattern(glob),
            Message::All => Landed::All,
            Message::Tags(stamp, tags) => {
                // Another instance's invalidation, whose stamp may be older than
                // one of this instance's own still pending.
                // The stamp first: a load that takes its ticket after the
                // stamp is known checks what it reads from L2 against it; one
                // that took it before is refused by the L1 change.
                self.tags_invalidated(&tags, stamp, None);
                if tags.iter().any(|t| t == ALL_TAG) {
                    self.empty_l1().await;
                }
                return;
            }
        })
        .await;
    }

    /// Tags invalidated at `stamp` (by this instance's calls up to `call`, owed
    /// until now; `None`: by another instance). Without an L2, each instance's
    /// tag clock is its own: it moves on.
    fn tags_invalidated(&self, tags: &[String], stamp: u64, call: Option<u64>) {
        let names = tags.iter().map(String::as_str);
        if self.remote.is_some() {
            self.tags.invalidated(names, stamp, call);
        } else {
            self.tags.invalidate_here(names);
        }
    }

    /// Drops from L1 what a change removed (owed work that has now landed, whose
    /// write may have been cancelled before it changed L1; another instance's
    /// change).
    pub(crate) async fn drop_landed(&self, landed: Landed) {
        match landed {
            Landed::Key(text) => self.drop_key_text(&text).await,
            Landed::Keys(texts) => {
                for text in texts {
                    self.drop_key_text(&text).await;
                }
            }
            Landed::Pattern(glob) => self.remove_matching(Pattern::new(glob)).await,
            Landed::All => self.clear_l1().await,
            Landed::Tags(stamp, tags, call) => {
                self.tags_invalidated(&tags, stamp, Some(call));
                if tags.iter().any(|t| t == ALL_TAG) {
                    self.empty_l1().await;
                }
            }
        }
    }

    /// Drops a key, given in its string form, from L1.
    async fn drop_key_text(&self, text: &str) {
        match K::from_key_str(text) {
            Some(key) => self.fence.supersede(&key, self.l1.invalidate(&key)).await,
            None => self.remove_matching(Pattern::new(escape_glob(text))).await,
        }
    }

    /// Clears L1 once the bus subscription is (re)established: messages may have
    /// been missed. `again` is false for the first subscription (L1 then only
    /// holds what was read while the subscription was not up yet).
    pub(crate) async fn clear_l1_after_gap(&self, again: bool) {
        self.clear_l1().await;
        if again {
            self.report.event(Counter::BusResubscribes);
            tracing::info!(cache = %self.name, "bus resubscribed: L1 cleared");
        }
    }

    /// Clears L1 after another instance's message could not be applied: what it
    /// would have removed is unknown.
    pub(crate) async fn clear_l1_after_failed_apply(&self) {
        self.clear_l1().await;
        self.report.event(Counter::BusApplyFailures);
        tracing::error!(cache = %self.name, "a bus message could not be applied (a panic): L1 cleared");
    }

    /// Starts the bus if needed, and counts and reports an invalidation.
    async fn begin_invalidation(self: &Arc<Self>, all: bool) {
        self.start_bus(false).await;
        self.report.count(Counter::Invalidations);
        self.report.with_observer(|o| o.invalidated(all));
    }

    /// Empties L1 through the fence: no load in flight commits what it read
    /// before. Forgets the tag stamps this instance knew, too: a clear may
    /// stand for messages that were lost or merged (tag invalidations among
    /// them, whose old entries are still in L2), so they are read again.
    async fn clear_l1(&self) {
        self.tags.forget();
        self.empty_l1().await;
    }

    /// Empties L1 through the fence (the tag book stays).
    async fn empty_l1(&self) {
        self.fence.supersede_all(|| self.l1.invalidate_all()).await;
    }

    async fn remove_matching(&self, pattern: Pattern) {
        let pattern = Arc::new(pattern);
        self.fence
            .supersede_pattern(Arc::clone(&pattern), || self.l1.remove_matching(&pattern))
            .await;
    }
}

/// The L1 change of a write, made in a task if the write is cancelled first
/// (see [`Core::finish`]).
pub(crate) struct L1ChangeOwed<K: CacheKey, V: CacheValue>(Option<(Arc<Core<K, V>>, Landed)>);

impl<K: CacheKey, V: CacheValue> L1ChangeOwed<K, V> {
    /// The L1 change was made.
    fn done(mut self) {
        self.0 = None;
    }
}

impl<K: CacheKey, V: CacheValue> Drop for L1ChangeOwed<K, V> {
    fn drop(&mut self) {
        if let (Some((core, change)), Ok(runtime)) = (self.0.take(), Handle::try_current()) {
            runtime.spawn(async move { core.drop_landed(change).await });
        }
    }
}

/// The bus message of a change.
pub(crate) fn message(change: &Landed) -> Message {
    match change {
        Landed::Key(key) => Message::Key(key.clone()),
        Landed::Keys(keys) => Message::Keys(keys.clone()),
        Landed::Pattern(glob) => Message::Pattern(glob.clone()),
        Landed::All => Message::All,
        Landed::Tags(stamp, tags, _) => Message::Tags(*stamp, tags.clone()),
    }
}

/// What `remote` and `bus` have waiting: owed changes, kept messages.
pub(crate) fn waiting_in(remote: Option<&Arc<Remote>>, bus: Option<&Arc<Bus>>) -> Written {
    let owed = remote.map_or(0, |remote| remote.owed());
    let unsent = bus.map_or(0, |bus| bus.health().unsent);
    if owed == 0 && unsent == 0 {
        Written::Applied
    } else {
        Written::Queued { owed, unsent }
    }
}

/// Sends what `remote` and `bus` have waiting now, until nothing is left or
/// `within` has passed; returns what is left. (Changes that land are
/// announced on the bus as they land.)
pub(crate) async fn flush_parts(
    remote: Option<&Arc<Remote>>,
    bus: Option<&Arc<Bus>>,
    within: Duration,
) -> Written {
    let sending = async {
        loop {
            if let Some(remote) = remote {
                remote.replay_now().await;
            }
            if let Some(bus) = bus {
                bus.send_unsent().await;
            }
            if waiting_in(remote, bus).is_applied() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = tokio::time::timeout(within, sending).await;
    waiting_in(remote, bus)
}
