//! One load per key across a fleet (opt-in): before loading, a flight takes a
//! short lease in the shared tier (`remote/lease.rs`). Flights of other
//! instances that find the lease taken wait for the holder's value to appear in
//! L2, asking for the lease again at each poll, so that a holder that died (its
//! lease expired) is replaced by one waiter; past twice the lease they load
//! themselves. The holder gives the lease back with its token only, so a holder
//! slower than its lease never frees another's. With the breaker open or L2
//! failing, a flight does not wait: it is the local single flight.

use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::engine::Core;
use crate::entry::Entry;
use crate::fence::Ticket;
use crate::key::{CacheKey, CacheValue};
use crate::observe::Counter;
use crate::policy::Plan;
use crate::remote::{Lease, Remote};

/// The first and the longest pause between polls of a waiting flight.
const FIRST_POLL: Duration = Duration::from_millis(2);
const LONGEST_POLL: Duration = Duration::from_millis(50);

/// What asking for a lease came to.
pub(crate) enum Leased<V> {
    /// This flight loads; give the lease back after the fill.
    Held(Lease),
    /// The holder's value appeared in L2 and is now in L1.
    Filled(Entry<V>),
    /// The holder's value appeared, but the key was invalidated meanwhile.
    Superseded(Entry<V>),
    /// No lease (the store cannot be asked, or the wait ran out): load locally.
    Free,
}

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// Takes `key`'s lease, or waits for the holder's value. `refresh_after`: a
    /// refresh takes only an entry fresh past this instant.
    pub(crate) async fn lease(
        &self,
        key: &K,
        remote: &Remote,
        ticket: Ticket,
        refresh_after: Option<u64>,
        refreshable: bool,
        plan: &Plan,
    ) -> Leased<V> {
        let Some(ttl) = self.lease else {
            return Leased::Free;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Leased::Free;
        }
        let l2_key = remote.key(key);
        let token: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        let deadline = Instant::now() + ttl * 2;
        let mut polls = Backoff::new(FIRST_POLL, LONGEST_POLL, 0.25);
        let mut waited = false;
        loop {
            match remote.lease(key, token, ttl).await {
                None => return Leased::Free,
                // A waiter that takes the lease looks once more: the holder it
                // waited for may have filled and let go since its last look.
                Some(Ok(lease)) if waited => {
                    return match self
                        .filled(key, remote, ticket, refresh_after, refreshable, plan)
                        .await
                    {
                        Some(leased) => {
                            remote.release(lease).await;
                            leased
                        }
                        None => Leased::Held(lease),
                    };
                }
                Some(Ok(lease)) => return Leased::Held(lease),
                Some(Err(())) => {}
            }
            if !waited {
                waited = true;
                self.report.event(Counter::LeaseWaits);
            }
            if Instant::now() >= deadline {
                tracing::warn!(cache = %self.name, key = %l2_key,
                    "the lease holder did not fill in time: loading here");
                return Leased::Free;
            }
            polls.wait().await;
            if let Some(leased) = self
                .filled(key, remote, ticket, refresh_after, refreshable, plan)
                .await
            {
                return leased;
            }
        }
    }

    /// The holder's value, if it is in L2 (and, for a refresh, newer than
    /// `refresh_after`), committed to L1 unless the key was invalidated since
    /// `ticket`.
    async fn filled(
        &self,
        key: &K,
        remote: &Remote,
        ticket: Ticket,
        refresh_after: Option<u64>,
        refreshable: bool,
        plan: &Plan,
    ) -> Option<Leased<V>> {
        let hit = remote.peek::<V>(&remote.key(key)).await?;
        if !self.l2_tags_hold(hit.tags.as_deref()).await {
            return None;
        }
        let entry = self.entry_from_l2(hit, self.clock.now(), refreshable, plan);
        if refresh_after.is_some_and(|after| entry.fresh_until <= after) {
            return None;
        }
        Some(if self.commit(key, ticket, &entry, plan).await {
            Leased::Filled(entry)
        } else {
            Leased::Superseded(entry)
        })
    }

    /// Gives a held lease back.
    pub(crate) async fn release(&self, lease: Option<Lease>) {
        if let (Some(lease), Some(remote)) = (lease, &self.remote) {
            remote.release(lease).await;
        }
    }
}
