//! The shared tier (L2) of one cache: its store behind a gate (breaker and
//! timeout), the keys of its namespace, the wire format, and the work it owes.
//!
//! - `store.rs`: the [`RemoteStore`] port (bytes in, bytes out).
//! - `gate.rs`: every call's breaker, timeout and counting.
//! - `read.rs`: reads, which leave a fill reservation on a miss.
//! - `fill.rs`: writes: race-proof fills and explicit overwrites.
//! - `owed.rs`: deletions that could not reach the store, replayed before the
//!   store is read again, and by a background task.
//! - `lease.rs`: the fleet-wide load lease.
//!
//! # Fills that an invalidation cannot be overwritten by
//!
//! A read that finds nothing in L2 leaves a *fill reservation* in the key (a unique
//! token, atomically, only if the key is still empty) before it loads. Its fill
//! then replaces exactly those bytes (compare-and-set), or nothing. Whatever
//! changes the key in between — a deletion by `invalidate`, a `SCAN` + `UNLINK` of a
//! pattern or of the whole namespace, an `insert`, another instance's fill — makes
//! the fill a no-op, on any instance, with no clock involved: a reservation that
//! expired is simply gone, and the fill finds nothing to replace. A read that finds
//! another reader's reservation loads too and may replace it (first fill wins).

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::breaker::BreakerSettings;
use crate::clock::Clock;
use crate::codec::Wire;
use crate::error::BoxError;
use crate::key::CacheKey;
use crate::namespace::{Namespace, ALL_TAG};
use crate::observe::{BreakerState, L2Error, L2Health, Report};

mod fill;
mod gate;
mod lease;
mod owed;
mod read;
pub(crate) mod store;

pub(crate) use self::fill::Filled;
use self::gate::Gate;
pub(crate) use self::lease::Lease;
use self::owed::Owed;
pub(crate) use self::read::{L2Read, Seen};
pub use self::store::{RemoteStore, ScanCursor, ScanStep};

/// The L2 tier of one cache.
pub(crate) struct Remote {
    gate: Gate,
    owed: Owed,
    namespace: Namespace,
    wire: Wire,
    /// How long a reader's fill reservation lasts.
    reservation_ttl: Duration,
    /// Told of owed work once it landed (the engine publishes it on the bus).
    announce: Announce,
    /// This tier, for the background replay it starts.
    this: Weak<Remote>,
}

/// A change that was owed and has now landed in the store, in the cache's
/// terms: what other instances must now drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Landed {
    /// A key, in its string form.
    Key(String),
    /// Several keys, in their string forms.
    Keys(Vec<String>),
    /// A glob over keys' string forms.
    Pattern(String),
    /// The whole namespace.
    All,
    /// Tags, stamped at this tag-clock value, by (or covering) this
    /// instance's tag invalidation calls up to this number.
    Tags(u64, Vec<String>, u64),
}

/// What the tier tells of owed work that landed.
pub(crate) type Announce = Box<dyn Fn(Landed) + Send + Sync>;

/// What the L2 tier is made of, from the builder's settings.
pub(crate) struct RemoteParts {
    pub(crate) store: Arc<dyn RemoteStore>,
    pub(crate) breaker: BreakerSettings,
    pub(crate) clock: Clock,
    pub(crate) timeout: Duration,
    pub(crate) reservation_ttl: Duration,
    pub(crate) namespace: Namespace,
    pub(crate) wire: Wire,
}

impl Remote {
    /// The tier, in an `Arc` (its background replay holds it weakly).
    pub(crate) fn new(parts: RemoteParts, report: Arc<Report>, announce: Announce) -> Arc<Self> {
        Arc::new_cyclic(|this| Remote {
            gate: Gate::new(
                parts.store,
                parts.breaker,
                parts.clock,
                parts.timeout,
                report,
            ),
            owed: Owed::new(parts.timeout),
            namespace: parts.namespace,
            wire: parts.wire,
            reservation_ttl: parts.reservation_ttl,
            announce,
            this: this.clone(),
        })
    }

    /// The store key of a cache key.
    pub(crate) fn key<K: CacheKey>(&self, key: &K) -> String {
        self.namespace.key(key)
    }

    /// Owes the deletion of `keys` (store keys) unless the guard is marked
    /// done: for a write whose store call comes after an await, so that a
    /// caller cancelled before it still has the keys' old entries deleted
    /// (and announced) later.
    pub(crate) fn deleting_unless_done(&self, keys: Vec<String>) -> owed::UntilDone<'_> {
        self.until_done(owed::Work::Keys(keys))
    }

    /// Owes the stamping of `tags` (this instance's call `call`) unless the
    /// guard is marked done: for an invalidation that does other work before
    /// its stamp (see [`stamp_tags`](Self::stamp_tags)).
    pub(crate) fn stamping_unless_done(&self, tags: &[String], call: u64) -> owed::UntilDone<'_> {
        self.until_done(owed::Work::Tags(tags.to_vec(), call))
    }

    /// Whether the store can stamp tags.
    pub(crate) fn stamps_tags(&self) -> bool {
        self.gate.store().stamps_tags()
    }

    /// Invalidates `tags` (this instance's call number `call`): moves the
    /// namespace's tag clock on and stamps them with it, in one call. Returns
    /// the stamp if it landed; if not (or if this call is cancelled), the
    /// stamping is owed.
    pub(crate) async fn stamp_tags(&self, tags: &[String], call: u64) -> Option<u64> {
        let mut owed = self.until_done(owed::Work::Tags(tags.to_vec(), call));
        let keys: Vec<String> = tags.iter().map(|t| self.namespace.tag_key(t)).collect();
        let clock = self.namespace.tag_clock();
        let stamp = self
            .gate
            .call("stamp_tags", self.gate.store().stamp_tags(&clock, &keys))
            .await?;
        owed.done();
        self.owed.tags_landed(tags, call);
        Some(stamp)
    }

    /// The stamps of `tags` (0 for a tag never invalidated), read once owed work
    /// is done; `None` if they cannot be read (or one does not parse).
    pub(crate) async fn tag_stamps(&self, tags: &[&str]) -> Option<Vec<u64>> {
        let keys: Vec<String> = tags.iter().map(|t| self.namespace.tag_key(t)).collect();
        self.read_numbers(&keys).await
    }

    /// The namespace's tag clock and the stamp of its own tag (the epoch of
    /// `invalidate_all`), in one read (their keys share a slot).
    pub(crate) async fn tag_clock(&self) -> Option<(u64, u64)> {
        let keys = [self.namespace.tag_clock(), self.namespace.tag_key(ALL_TAG)];
        match self.read_numbers(&keys).await?[..] {
            [clock, epoch] => Some((clock, epoch)),
            _ => None,
        }
    }

    /// Numbers kept in the store under `keys` (0 for a key that is not
    /// there); `None` if they cannot be read, or one does not parse.
    async fn read_numbers(&self, keys: &[String]) -> Option<Vec<u64>> {
        let read = self
            .call("tag_stamps", self.gate.store().get_many(keys))
            .await?;
        read.into_iter()
            .map(|bytes| match bytes {
                None => Some(0),
                Some(bytes) => std::str::from_utf8(&bytes).ok()?.parse().ok(),
            })
            .collect()
    }

    /// The breaker's state and how often it opened.
    pub(crate) fn breaker(&self) -> (BreakerState, u64) {
        self.gate.breaker()
    }

    /// Replays owed work now, for up to one budget.
    pub(crate) async fn replay_now(&self) {
        let _ = self.replay().await;
    }

    /// How many changes are owed.
    pub(crate) fn owed(&self) -> usize {
        self.owed.count()
    }

    /// The L2 part of the cache's health.
    pub(crate) fn health(&self) -> L2Health {
        let (breaker, breaker_opened) = self.gate.breaker();
        let last_error = self.gate.last_error().map(|(op, error, at)| L2Error {
            op: op.to_owned(),
            error,
            ago: at.elapsed(),
        });
        L2Health {
            breaker,
            breaker_opened,
            owed: self.owed.count(),
            last_error,
        }
    }

    fn report(&self) -> &Report {
        self.gate.report()
    }

    /// Runs one store call through the gate, once owed deletions are done (owed
    /// tag stamps are left to the background replay). `None` when the breaker
    /// is open, deletions are still owed, or the call failed or timed out
    /// (counted).
    async fn call<T, F>(&self, op: &'static str, call: F) -> Option<T>
    where
        F: Future<Output = Result<T, BoxError>>,
    {
        if self.owed.deletions_owed() {
            self.replay().await;
            if self.owed.deletions_owed() {
                return None;
            }
        } else if self.owed.is_owed() {
            // Only tag stamps are owed: the background replay sends them.
            self.keep_replaying();
        }
        self.gate.call(op, call).await
    }
}
