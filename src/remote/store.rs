//! The shared tier's port: [`RemoteStore`], a key-value store at the level of
//! bytes, implemented by the Redis adapter (`redis_store.rs`), the in-memory double
//! (`memory/`) and users' own stores.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::error::BoxError;

/// A shared key-value store for the L2 tier, at the level of bytes.
///
/// Futures are boxed so that a cache can hold any store as `Arc<dyn RemoteStore>`.
/// Implementations report failures as errors; the cache wraps every call in its own
/// timeout and circuit breaker and never lets a store error fail a read.
/// [`get_or_reserve`](RemoteStore::get_or_reserve) and
/// [`replace`](RemoteStore::replace) must each be atomic on their key: they are what
/// keeps a load that raced an invalidation from writing its old value back.
pub trait RemoteStore: Send + Sync + fmt::Debug + 'static {
    /// The bytes at `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>>;

    /// The bytes at each of `keys`, in order (one round trip where the store can).
    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, BoxError>>;

    /// The bytes at `key`; if there are none, stores `reservation` there for `ttl`
    /// (atomically with the read) and returns `None`.
    fn get_or_reserve<'a>(
        &'a self,
        key: &'a str,
        reservation: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>>;

    /// Stores `value` at `key` for `ttl`, whatever was there.
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Stores `value` at `key` for `ttl` only if `key` holds exactly `expected`
    /// (atomically); returns whether it did.
    fn replace<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>>;

    /// Takes the lease `key` for `ttl` if no one holds it (`SET key token NX PX`);
    /// returns whether this caller now holds it. The default (for stores without
    /// leases) always grants it: every instance loads for itself.
    fn lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        let _ = (key, token, ttl);
        Box::pin(async { Ok(true) })
    }

    /// Gives the lease `key` back if it is still held with `token` (atomically);
    /// a lease that expired and was taken by another is left alone.
    fn release<'a>(&'a self, key: &'a str, token: &'a [u8]) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = (key, token);
        Box::pin(async { Ok(()) })
    }

    /// Moves the tag clock at `clock` (a decimal number; absent or not a
    /// number counts as 0) on to the store's time in microseconds, or one past
    /// its value if that is later, and writes the new value to `clock` and to
    /// each key of `tags`, atomically, with no expiry; returns the new value.
    /// (A clock based on time keeps moving forward if the store loses its
    /// data.) The clock and the tag keys of a namespace share one hash slot.
    /// Implement it together with [`stamps_tags`](Self::stamps_tags).
    fn stamp_tags<'a>(
        &'a self,
        clock: &'a str,
        tags: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BoxError>> {
        let _ = (clock, tags);
        Box::pin(async { Err("this store cannot stamp tags".into()) })
    }

    /// Whether [`stamp_tags`](Self::stamp_tags) is implemented. A store
    /// without it (this default) cannot hold tag stamps: an
    /// [`invalidate_tag`](crate::TieredCache::invalidate_tag) on it clears the
    /// whole namespace instead, as
    /// [`invalidate_all`](crate::TieredCache::invalidate_all) does.
    fn stamps_tags(&self) -> bool {
        false
    }

    /// Removes `keys`.
    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Checks that the store answers (the circuit breaker's background probe).
    /// The default reads a key that is never written.
    fn ping(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move { self.get("tiered:ping").await.map(|_| ()) })
    }

    /// One step of removing every key that matches the Redis glob `pattern`
    /// (`SCAN MATCH` + `UNLINK` of one batch, on every node of a cluster in turn),
    /// starting at `cursor` ([`ScanCursor::default`] for the first step). Keys that
    /// exist from the first step to the last are removed.
    fn delete_matching<'a>(
        &'a self,
        pattern: &'a str,
        cursor: ScanCursor,
    ) -> BoxFuture<'a, Result<ScanStep, BoxError>>;

    /// Which store this is, for sharing one circuit breaker: caches whose stores
    /// return the same `Some(id)` (clones of one `RedisStore`, say) share a
    /// breaker, so that one outage opens it once for all of them and one probe
    /// closes it. Ids must be unique per underlying store within the process.
    /// The default, `None`, gives each cache a breaker of its own.
    fn identity(&self) -> Option<u64> {
        None
    }
}

/// A fresh process-unique store identity, for [`RemoteStore::identity`].
#[cfg(any(feature = "redis", feature = "testing"))]
pub(crate) fn new_identity() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Where a [`RemoteStore::delete_matching`] walk is.
///
/// A store on one server needs only `position` ([`ScanCursor::at`]); a cluster
/// also records the first hash slot not yet covered and which node is scanning
/// from there, so that a failover or a resharding between two steps restarts that
/// node's scan instead of applying its `SCAN` cursor to another node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanCursor {
    /// The first hash slot the walk has not covered yet (0 for a single server).
    pub slot: u16,
    /// The node being scanned, in the store's own terms (0 for a single server;
    /// for a cluster, a fingerprint of the node's id and the slots it covers).
    pub node: u64,
    /// The `SCAN` cursor on that node.
    pub position: u64,
}

impl ScanCursor {
    /// The cursor of a store on one server, at `SCAN` position `position`.
    pub const fn at(position: u64) -> Self {
        ScanCursor {
            slot: 0,
            node: 0,
            position,
        }
    }
}

/// What one [`RemoteStore::delete_matching`] step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanStep {
    /// Keys removed by this step.
    pub deleted: u64,
    /// Where to go on, or `None` when the walk is complete.
    pub next: Option<ScanCursor>,
}
