//! The write path: inserts and invalidations, here and (through the bus) on every
//! other instance.
//!
//! Each change is made in L2 first, then in L1 through the fence (so that no load
//! that read L2 before the change can commit afterwards), then published on the
//! bus. A change that cannot reach L2 is owed: replayed before this instance reads
//! L2 again, and in the background.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::bus::{Announcement, Message};
use crate::engine::Core;
use crate::entry::Entry;
use crate::key::{CacheKey, CacheValue};
use crate::observe::Counter;
use crate::pattern::{escape_glob, Pattern};
use crate::remote::Landed;

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// Writes `value` for `key` in every tier, fresh for `l1_ttl` in L1 and
    /// `l2_ttl` in L2, and tells the other instances to drop their copy.
    pub(crate) async fn write(
        self: &Arc<Self>,
        key: K,
        value: V,
        l1_ttl: Duration,
        l2_ttl: Duration,
    ) {
        self.start_bus(false).await;
        self.report.event(Counter::Inserts);
        let now = self.clock.now();
        let entry = Entry::new(Some(value), now, l1_ttl, &self.freshness, Duration::ZERO);
        let landed = match &self.remote {
            Some(remote) => {
                let lifetime = self.freshness.lifetime(l2_ttl, Duration::ZERO);
                let value = entry.value.as_ref();
                remote.set(&remote.key(&key), value, lifetime).await
            }
            None => true,
        };
        let announcement = self.announce(landed, || Message::Key(key.to_key_string()));
        let l1_change = self.l1_change_owed(|| Landed::Key(key.to_key_string()));
        let l1_write = async {
            if self.l1.enabled() {
                self.l1.insert(key.clone(), entry).await;
            }
        };
        self.fence.supersede(&key, l1_write).await;
        l1_change.done();
        self.publish(announcement).await;
    }

    /// Removes `key` from every tier, and from every other instance's L1.
    pub(crate) async fn invalidate(self: &Arc<Self>, key: &K) {
        self.begin_invalidation(false).await;
        let landed = match &self.remote {
            Some(remote) => remote.delete(remote.key(key)).await,
            None => true,
        };
        let announcement = self.announce(landed, || Message::Key(key.to_key_string()));
        let l1_change = self.l1_change_owed(|| Landed::Key(key.to_key_string()));
        self.fence.supersede(key, self.l1.invalidate(key)).await;
        l1_change.done();
        self.publish(announcement).await;
    }

    /// Removes every key whose string form matches the Redis glob `pattern`.
    pub(crate) async fn invalidate_pattern(self: &Arc<Self>, pattern: &str) {
        self.begin_invalidation(false).await;
        let landed = match &self.remote {
            Some(remote) => remote.delete_pattern(pattern).await,
            None => true,
        };
        let announcement = self.announce(landed, || Message::Pattern(pattern.to_owned()));
        let l1_change = self.l1_change_owed(|| Landed::Pattern(pattern.to_owned()));
        self.remove_matching(Pattern::new(pattern)).await;
        l1_change.done();
        self.publish(announcement).await;
    }

    /// Removes every entry of this cache from every tier and instance.
    pub(crate) async fn invalidate_all(self: &Arc<Self>) {
        self.begin_invalidation(true).await;
        let landed = match &self.remote {
            Some(remote) => remote.clear().await,
            None => true,
        };
        let announcement = self.announce(landed, || Message::All);
        let l1_change = self.l1_change_owed(|| Landed::All);
        self.clear_l1().await;
        l1_change.done();
        self.publish(announcement).await;
    }

    /// Applies another instance's invalidation to this one's L1, through the fence.
    pub(crate) async fn apply_remote(&self, message: Message) {
        self.report.event(Counter::InvalidationsReceived);
        match message {
            Message::Key(text) => self.drop_key_text(&text).await,
            Message::Pattern(glob) => self.remove_matching(Pattern::new(glob)).await,
            Message::All => self.clear_l1().await,
        }
    }

    /// A guard for a write's L1 change, from the moment its L2 change was made
    /// (or owed): dropped before [`done`](L1ChangeOwed::done) (the caller was
    /// cancelled while it waited for the fence), it drops the key from L1 in a
    /// task of its own, so that this instance does not keep what the others drop.
    /// (Only with an L2: without one, a write cancelled before its L1 change
    /// has changed nothing.)
    fn l1_change_owed(self: &Arc<Self>, change: impl FnOnce() -> Landed) -> L1ChangeOwed<K, V> {
        L1ChangeOwed(self.remote.as_ref().map(|_| (Arc::clone(self), change())))
    }

    /// Drops from L1 what owed work that has now landed removed from L2 (the
    /// write that owed it may have been cancelled before it changed L1).
    pub(crate) async fn drop_landed(&self, landed: Landed) {
        match landed {
            Landed::Key(text) => self.drop_key_text(&text).await,
            Landed::Pattern(glob) => self.remove_matching(Pattern::new(glob)).await,
            Landed::All => self.clear_l1().await,
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

    /// Empties L1 through the fence: no load in flight commits what it read before.
    async fn clear_l1(&self) {
        self.fence.supersede_all(|| self.l1.invalidate_all()).await;
    }

    async fn remove_matching(&self, pattern: Pattern) {
        let pattern = Arc::new(pattern);
        self.fence
            .supersede_pattern(Arc::clone(&pattern), || self.l1.remove_matching(&pattern))
            .await;
    }

    /// Keeps `message` for the bus if its L2 change `landed` (at once, before
    /// any further await: from here on, a cancelled caller's message is still
    /// sent, in the background). A change that did not land is owed: the replay
    /// publishes it once it lands (published now, it would make the other
    /// instances re-read the old value from L2 and keep it).
    fn announce(
        &self,
        landed: bool,
        message: impl FnOnce() -> Message,
    ) -> Option<Announcement<'_>> {
        let bus = self.bus.as_ref().filter(|_| landed)?;
        Some(bus.announce(message()))
    }

    /// Sends an announcement (counted if it must wait for the background sender).
    async fn publish(&self, announcement: Option<Announcement<'_>>) {
        if let Some(announcement) = announcement {
            if !announcement.send().await {
                self.report.event(Counter::BusPublishErrors);
            }
        }
    }
}

/// See [`Core::l1_change_owed`].
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
