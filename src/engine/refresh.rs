//! Background refreshes (early refresh, stale-while-revalidate) and the stale
//! copies a flight may fall back on (fail-safe).
//!
//! A background refresh is a flight of the configured loader in a task of its own
//! (see `flight.rs`): at most one per key, shared with any caller that misses the
//! key meanwhile, and it outlives the hit that started it. The maths of when to
//! refresh is in `policy/freshness.rs`.

use std::sync::Arc;

use crate::engine::flight::outcome::Job;
use crate::engine::Core;
use crate::entry::Entry;
use crate::fence::Ticket;
use crate::key::{CacheKey, CacheValue};
use crate::observe::{trace, Counter};
use crate::policy::Plan;
use crate::source::DynLoader;

/// A stale copy a flight may fall back on, with a ticket taken while it was
/// still in L1 (so that it is never put back after an invalidation).
#[derive(Clone)]
pub(crate) struct Fallback<V> {
    pub(crate) entry: Entry<V>,
    pub(crate) ticket: Ticket,
}

impl<V> Fallback<V> {
    /// The newer of two stale copies.
    pub(crate) fn newer(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) if b.entry.fresh_until > a.entry.fresh_until => Some(b),
            (Some(a), _) => Some(a),
            (None, b) => b,
        }
    }
}

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// Whether a refresh can run in the background: it needs a `'static`
    /// loader (`given` by the caller, else the configured one) and a tokio
    /// runtime.
    pub(crate) fn can_refresh(&self, given: bool) -> bool {
        (given || self.loader.is_some()) && tokio::runtime::Handle::try_current().is_ok()
    }

    /// `seen` (an L1 entry past its fresh time, or in its XFetch window) as a
    /// fallback: a settled ticket (no invalidation half done), then the same
    /// entry found in L1 again. `None` if it
    /// left L1 meanwhile (an invalidation, a newer value).
    pub(crate) async fn fallback(&self, key: &K, seen: &Entry<V>) -> Option<Fallback<V>> {
        let ticket = self.fence.settled_ticket(key).await;
        let again = self.l1.get(key).await?;
        let same = again.fresh_until == seen.fresh_until && again.expires == seen.expires;
        let invalidated = self.known_invalidated(again.born, again.tags.as_deref());
        (same && !invalidated).then_some(Fallback {
            entry: again,
            ticket,
        })
    }

    /// Whether a stale copy taken earlier may still be served: its key was not
    /// invalidated since, nor (as far as this instance knows, and can read)
    /// its tags or the namespace epoch.
    pub(crate) async fn still_valid(&self, key: &K, stale: &Fallback<V>) -> bool {
        let now = self.fence.ticket(key);
        !self.fence.changed_between(key, &stale.ticket, &now)
            && !self.known_invalidated(stale.entry.born, stale.entry.tags.as_deref())
            && self.tags_hold(stale.entry.tags.as_deref()).await
    }

    /// Starts a background refresh of `key` (whose L1 entry is `seen`) with the
    /// `given` loader (else the configured one), under the `plan` of the call
    /// that read it, unless a flight of the key is already on. Returns at once.
    pub(crate) async fn refresh(
        self: &Arc<Self>,
        key: &K,
        seen: &Entry<V>,
        given: Option<Arc<dyn DynLoader<K, V>>>,
        plan: Option<Arc<Plan>>,
    ) {
        if !self.can_refresh(given.is_some()) || self.flights.flying(key) {
            return;
        }
        let fallback = self.fallback(key, seen).await;
        let job = Job {
            fallback,
            refresh_after: Some(seen.fresh_until),
            loader: given,
            plan,
            span: trace::refresh(&self.name),
            ..Job::default()
        };
        if self.launch(key, job) {
            self.report.event(Counter::Refreshes);
        }
    }
}
