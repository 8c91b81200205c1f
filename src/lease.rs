//! One load per key across a fleet (opt-in): before loading, a flight takes a
//! short lease in the shared tier (`SET lease-key token NX PX`). Flights of other
//! instances that find the lease taken wait for the holder's value to appear in
//! L2, asking for the lease again at each poll, so that a holder that died (its
//! lease expired) is replaced by one waiter; past twice the lease they load
//! themselves. The holder gives the lease back with its token only (a script), so
//! a holder slower than its lease never frees another's. With the breaker open or
//! L2 failing, a flight does not wait: it is the local single flight.

use std::time::{Duration, Instant};

use crate::cache::{CacheValue, TieredCache};
use crate::entry::Entry;
use crate::fence::Ticket;
use crate::key::CacheKey;
use crate::l2::L2;
use crate::observe::Counter;

/// The default life of a lease (it should outlast a load).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// The first and the longest pause between polls of a waiting flight.
const FIRST_POLL: Duration = Duration::from_millis(2);
const LONGEST_POLL: Duration = Duration::from_millis(50);

/// A lease this flight holds.
pub(crate) struct Lease {
    key: String,
    token: [u8; 16],
}

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

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// Takes `key`'s lease, or waits for the holder's value. `refresh_after`: a
    /// refresh takes only an entry fresh past this instant.
    pub(crate) async fn lease(
        &self,
        key: &K,
        l2: &L2,
        ticket: Ticket,
        refresh_after: Option<u64>,
    ) -> Leased<V> {
        let inner = &*self.inner;
        let Some(ttl) = inner.lease else {
            return Leased::Free;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Leased::Free;
        }
        let lease_key = l2.lease_key(key);
        let l2_key = l2.key(key);
        let token: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        let deadline = Instant::now() + ttl * 2;
        let mut pause = FIRST_POLL;
        let mut waited = false;
        loop {
            match l2.lease(&inner.report, &lease_key, &token, ttl).await {
                None => return Leased::Free,
                Some(true) => {
                    return Leased::Held(Lease {
                        key: lease_key,
                        token,
                    })
                }
                Some(false) => {}
            }
            if !waited {
                waited = true;
                inner.report.event(Counter::LeaseWaits);
            }
            if Instant::now() >= deadline {
                tracing::warn!(cache = %inner.name, key = %lease_key,
                    "the lease holder did not fill in time: loading here");
                return Leased::Free;
            }
            let jitter = pause.mul_f64(fastrand::f64() * 0.25);
            tokio::time::sleep(pause + jitter).await;
            pause = (pause * 2).min(LONGEST_POLL);
            let Some(hit) = l2.peek::<V>(&inner.report, &l2_key).await else {
                continue;
            };
            let entry = self.entry_from_l2(hit, inner.clock.now());
            if refresh_after.is_some_and(|after| entry.fresh_until <= after) {
                continue;
            }
            return if self.commit(key, ticket, &entry).await {
                Leased::Filled(entry)
            } else {
                Leased::Superseded(entry)
            };
        }
    }

    /// Gives a held lease back.
    pub(crate) async fn release(&self, lease: Option<Lease>) {
        if let (Some(lease), Some(l2)) = (lease, &self.inner.l2) {
            l2.release(&self.inner.report, &lease.key, &lease.token)
                .await;
        }
    }
}
