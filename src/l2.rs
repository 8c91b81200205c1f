//! The shared tier: the [`RemoteStore`] trait (bytes in, bytes out) and the tier
//! around it (keys, wire format, timeouts, circuit breaker, race-proof fills,
//! deferred invalidations).
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

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{join_all, BoxFuture};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::breaker::Breaker;
use crate::codec::{Decoded, EncodeError, Wire};
use crate::error::BoxError;
use crate::key::CacheKey;
use crate::observe::{Counter, Report, Tier};
use crate::pattern::escape_glob;
use crate::refresh::Lifetime;

#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;

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
}

/// Where a [`RemoteStore::delete_matching`] walk is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanCursor {
    /// The node being scanned (0 for a single server; the index of a cluster master
    /// in address order).
    pub node: usize,
    /// The `SCAN` cursor on that node.
    pub position: u64,
}

/// What one [`RemoteStore::delete_matching`] step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanStep {
    /// Keys removed by this step.
    pub deleted: u64,
    /// Where to go on, or `None` when the walk is complete.
    pub next: Option<ScanCursor>,
}

/// What a read of the shared tier found.
pub(crate) enum L2Read<V> {
    /// An entry still to be served (fresh, or stale but kept), with its bytes: a
    /// refresh of it fills only if they are still there.
    Hit(Decoded<V>, Seen),
    /// Nothing usable: a fill may replace exactly these bytes (this reader's
    /// reservation, another's, or an expired entry).
    Miss(Seen),
    /// The call was skipped (breaker open) or failed: writing back after the load
    /// would most likely fail too, and make the read wait a second timeout.
    Unavailable,
}

/// The bytes a fill must find in its key to write.
pub(crate) struct Seen(Vec<u8>);

/// How a fill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    Written,
    /// The key changed since the read: an invalidation (or another fill) came first.
    Superseded,
    /// Skipped or failed: unknown whether anything changed.
    Unknown,
}

/// Deletions that could not reach the store, replayed before the store is read
/// again. Past this many keys, the whole namespace is cleared instead.
const MAX_PENDING: usize = 10_000;

/// How many owed keys one replayed deletion removes.
const REPLAY_BATCH: usize = 1000;

/// Work the store still owes: deletions that failed, were cancelled, or were cut
/// short. Entries leave only once the store confirmed them.
#[derive(Default)]
struct Pending {
    /// Key → the deferral's number (a key deferred again while being replayed is
    /// kept).
    keys: HashMap<String, u64>,
    /// Glob walks, with how far each got.
    patterns: Vec<(String, ScanCursor)>,
    /// A walk of the whole namespace, with how far it got.
    clear: Option<ScanCursor>,
    next_number: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.patterns.is_empty() && self.clear.is_none()
    }
}

/// Something to defer.
enum Work {
    Key(String),
    Pattern(String, ScanCursor),
    Clear(ScanCursor),
}

/// The L2 tier of one cache.
pub(crate) struct L2 {
    store: Arc<dyn RemoteStore>,
    pub(crate) breaker: Arc<Breaker>,
    timeout: Duration,
    reservation_ttl: Duration,
    namespace: String,
    /// The namespace, escaped for globs.
    namespace_glob: String,
    wire: Wire,
    pending: Mutex<Pending>,
    has_pending: AtomicBool,
    flushing: futures_util::lock::Mutex<()>,
    /// Whether a background task is replaying owed deletions.
    pub(crate) flusher: AtomicBool,
}

/// Settings of the L2 tier, from the builder.
pub(crate) struct L2Config {
    pub(crate) store: Arc<dyn RemoteStore>,
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) timeout: Duration,
    pub(crate) reservation_ttl: Duration,
    /// `{prefix}{cache name}:{schema version}:`
    pub(crate) namespace: String,
    pub(crate) wire: Wire,
}

/// Defers its work when dropped armed: a deletion whose call failed, timed out or
/// was cancelled (its caller's future dropped) is replayed later, never lost.
struct DeferOnDrop<'a> {
    l2: &'a L2,
    work: Option<Work>,
}

impl DeferOnDrop<'_> {
    fn disarm(&mut self) {
        self.work = None;
    }
}

impl Drop for DeferOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            self.l2.defer(work);
        }
    }
}

impl L2 {
    pub(crate) fn new(config: L2Config) -> Self {
        L2 {
            store: config.store,
            breaker: config.breaker,
            timeout: config.timeout,
            reservation_ttl: config.reservation_ttl,
            namespace_glob: escape_glob(&config.namespace),
            namespace: config.namespace,
            wire: config.wire,
            pending: Mutex::new(Pending::default()),
            has_pending: AtomicBool::new(false),
            flushing: futures_util::lock::Mutex::new(()),
            flusher: AtomicBool::new(false),
        }
    }

    /// The store key of a cache key.
    pub(crate) fn key<K: CacheKey>(&self, key: &K) -> String {
        let mut out = String::with_capacity(self.namespace.len() + 16);
        out.push_str(&self.namespace);
        key.write_key(&mut out);
        out
    }

    /// The store glob of a glob over cache keys.
    pub(crate) fn glob(&self, pattern: &str) -> String {
        format!("{}{pattern}", self.namespace_glob)
    }

    /// Whether deletions are owed.
    pub(crate) fn has_pending(&self) -> bool {
        self.has_pending.load(Ordering::Acquire)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one store call through the breaker and the timeout, once owed
    /// deletions are done. `None` when the breaker is open, deletions are still
    /// owed, or the call failed or timed out (counted).
    async fn call<T, F>(&self, report: &Report, op: &'static str, call: F) -> Option<T>
    where
        F: Future<Output = Result<T, BoxError>>,
    {
        if self.has_pending.load(Ordering::Acquire) && !self.flush_pending(report).await {
            return None;
        }
        self.guarded(report, op, call).await
    }

    async fn guarded<T, F>(&self, report: &Report, op: &'static str, call: F) -> Option<T>
    where
        F: Future<Output = Result<T, BoxError>>,
    {
        // Transitions reach every cache on this breaker through its listeners.
        let permit = self.breaker.permit().0?;
        let span = tracing::debug_span!("tiered.l2", op);
        let result =
            tracing::Instrument::instrument(tokio::time::timeout(self.timeout, call), span).await;
        match result {
            Ok(Ok(value)) => {
                permit.success();
                Some(value)
            }
            Ok(Err(error)) => {
                tracing::debug!(op, %error, "L2 call failed");
                report.l2_error();
                permit.failure();
                None
            }
            Err(_elapsed) => {
                tracing::debug!(op, timeout = ?self.timeout, "L2 call timed out");
                report.l2_error();
                permit.failure();
                None
            }
        }
    }

    fn defer(&self, work: Work) {
        let mut pending = self.lock_pending();
        match work {
            Work::Key(key) => {
                pending.next_number += 1;
                let number = pending.next_number;
                pending.keys.insert(key, number);
                if pending.keys.len() > MAX_PENDING {
                    pending.keys.clear();
                    pending.patterns.clear();
                    pending.clear = Some(ScanCursor::default());
                }
            }
            Work::Pattern(glob, cursor) => {
                if pending.clear.is_none() {
                    match pending.patterns.iter_mut().find(|(g, _)| *g == glob) {
                        // The same glob again: walk it again from the start.
                        Some(existing) => existing.1 = ScanCursor::default(),
                        None => pending.patterns.push((glob, cursor)),
                    }
                }
            }
            Work::Clear(cursor) => {
                // What is owed so far is covered by the walk of the whole namespace.
                pending.keys.clear();
                pending.patterns.clear();
                let restart = pending.clear.is_some();
                pending.clear = Some(if restart {
                    ScanCursor::default()
                } else {
                    cursor
                });
            }
        }
        self.has_pending.store(true, Ordering::Release);
    }

    /// Replays owed deletions for up to one timeout. Returns whether none are left
    /// (reads of the store must wait until then: they could see a deleted value).
    /// Progress is kept across calls, and only confirmed work leaves the list, so a
    /// cancelled or failed flush loses nothing.
    pub(crate) async fn flush_pending(&self, report: &Report) -> bool {
        let Some(_flushing) = self.flushing.try_lock() else {
            return false; // another caller is flushing; this read skips L2
        };
        let started = Instant::now();
        loop {
            let (clear, pattern, keys) = {
                let pending = self.lock_pending();
                if pending.is_empty() {
                    self.has_pending.store(false, Ordering::Release);
                    return true;
                }
                let keys: Vec<(String, u64)> = pending
                    .keys
                    .iter()
                    .take(REPLAY_BATCH)
                    .map(|(k, n)| (k.clone(), *n))
                    .collect();
                (pending.clear, pending.patterns.first().cloned(), keys)
            };
            if started.elapsed() >= self.timeout {
                return false;
            }
            if let Some(cursor) = clear {
                let Some(step) = self.step(report, &self.glob("*"), cursor).await else {
                    return false;
                };
                let mut pending = self.lock_pending();
                if pending.clear == Some(cursor) {
                    pending.clear = step.next;
                    if step.next.is_none() {
                        report.event(Counter::L2NamespaceClears);
                    }
                }
            } else if let Some((glob, cursor)) = pattern {
                let Some(step) = self.step(report, &glob, cursor).await else {
                    return false;
                };
                let mut pending = self.lock_pending();
                if let Some(i) = pending
                    .patterns
                    .iter()
                    .position(|p| *p == (glob.clone(), cursor))
                {
                    match step.next {
                        Some(next) => pending.patterns[i].1 = next,
                        None => {
                            pending.patterns.remove(i);
                        }
                    }
                }
            } else {
                let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
                if self
                    .guarded(report, "delete", self.store.delete(&names))
                    .await
                    .is_none()
                {
                    return false;
                }
                let mut pending = self.lock_pending();
                for (key, number) in keys {
                    if pending.keys.get(&key) == Some(&number) {
                        pending.keys.remove(&key);
                    }
                }
            }
        }
    }

    async fn step(&self, report: &Report, glob: &str, cursor: ScanCursor) -> Option<ScanStep> {
        self.guarded(report, "scan", self.store.delete_matching(glob, cursor))
            .await
    }

    /// Reads one entry. Nothing usable there is a miss that leaves a fill
    /// reservation (unless another reader's is there); undecodable bytes are a
    /// counted miss, and the key is deleted first.
    pub(crate) async fn get<V: DeserializeOwned>(&self, report: &Report, key: &str) -> L2Read<V> {
        let Some(bytes) = self.call(report, "get", self.store.get(key)).await else {
            report.tier(Tier::L2, false);
            return L2Read::Unavailable;
        };
        let read = self.accept(report, key, bytes).await;
        report.tier(Tier::L2, matches!(read, L2Read::Hit(..)));
        read
    }

    /// Reads several entries with one call (and reserves the missing ones).
    pub(crate) async fn get_many<V: DeserializeOwned>(
        &self,
        report: &Report,
        keys: &[String],
    ) -> Vec<L2Read<V>> {
        let found = self
            .call(report, "get_many", self.store.get_many(keys))
            .await
            .filter(|values| values.len() == keys.len());
        let Some(values) = found else {
            for _ in keys {
                report.tier(Tier::L2, false);
            }
            return keys.iter().map(|_| L2Read::Unavailable).collect();
        };
        let reads = join_all(
            keys.iter()
                .zip(values)
                .map(|(key, bytes)| self.accept(report, key, bytes)),
        )
        .await;
        for read in &reads {
            report.tier(Tier::L2, matches!(read, L2Read::Hit(..)));
        }
        reads
    }

    /// What the bytes read at `key` mean.
    async fn accept<V: DeserializeOwned>(
        &self,
        report: &Report,
        key: &str,
        bytes: Option<Vec<u8>>,
    ) -> L2Read<V> {
        if let Some(bytes) = bytes {
            match self.decode(report, key, &bytes) {
                Decoding::Hit(hit) => return L2Read::Hit(hit, Seen(bytes)),
                Decoding::Unusable => return L2Read::Miss(Seen(bytes)),
                Decoding::Corrupt => {
                    let keys = [key.to_owned()];
                    self.guarded(report, "delete", self.store.delete(&keys))
                        .await;
                }
            }
        }
        let reservation = self.wire.reservation();
        let reserve = self
            .store
            .get_or_reserve(key, &reservation, self.reservation_ttl);
        match self.guarded(report, "reserve", reserve).await {
            None => L2Read::Unavailable,
            Some(None) => L2Read::Miss(Seen(reservation)),
            Some(Some(bytes)) => match self.decode(report, key, &bytes) {
                Decoding::Hit(hit) => L2Read::Hit(hit, Seen(bytes)),
                // A corrupt entry written meanwhile is replaced by the fill.
                Decoding::Unusable | Decoding::Corrupt => L2Read::Miss(Seen(bytes)),
            },
        }
    }

    fn decode<V: DeserializeOwned>(&self, report: &Report, key: &str, bytes: &[u8]) -> Decoding<V> {
        match self.wire.decode::<V>(bytes, key) {
            Ok(Some(decoded)) if !decoded.remaining.is_zero() => Decoding::Hit(decoded),
            Ok(_reservation_or_expired) => Decoding::Unusable,
            Err(error) => {
                tracing::warn!(key, %error, "undecodable L2 entry: deleted, reloading");
                report.event(Counter::L2Corrupt);
                Decoding::Corrupt
            }
        }
    }

    /// Writes a loaded entry (a value or an absence) for its `lifetime`, only if
    /// the key still holds what the read saw.
    pub(crate) async fn fill<V: Serialize>(
        &self,
        report: &Report,
        key: &str,
        seen: &Seen,
        value: Option<&V>,
        lifetime: Lifetime,
    ) -> Filled {
        let ttl = self.store_ttl(lifetime);
        let bytes = match self.wire.encode(value, lifetime, key) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.not_encoded(report, key, &error);
                return Filled::Unknown;
            }
        };
        let replace = self.store.replace(key, &seen.0, &bytes, ttl);
        match self.call(report, "fill", replace).await {
            Some(true) => Filled::Written,
            Some(false) => Filled::Superseded,
            None => Filled::Unknown,
        }
    }

    /// Overwrites the entry of `key` (an explicit insert). If that fails, the old
    /// entry is deleted later instead, before the store is read again.
    pub(crate) async fn set<V: Serialize>(
        &self,
        report: &Report,
        key: &str,
        value: Option<&V>,
        lifetime: Lifetime,
    ) {
        let ttl = self.store_ttl(lifetime);
        let mut guard = DeferOnDrop {
            l2: self,
            work: Some(Work::Key(key.to_owned())),
        };
        match self.wire.encode(value, lifetime, key) {
            Ok(bytes) => {
                if self
                    .call(report, "set", self.store.set(key, &bytes, ttl))
                    .await
                    .is_some()
                {
                    guard.disarm();
                }
            }
            Err(error) => {
                // The old entry must not outlive the insert: delete it now.
                self.not_encoded(report, key, &error);
                guard.disarm();
                self.delete(report, key.to_owned()).await;
            }
        }
    }

    /// How long the store keeps an entry: past its usable time by a grace (up to
    /// the fill window), so that a fill that read the entry still finds its bytes
    /// there when it ran past their expiry (the entry reads as a miss meanwhile).
    /// Without it, a load racing its entry's expiry would see the key change
    /// under it and load again.
    fn store_ttl(&self, lifetime: Lifetime) -> Duration {
        let grace = self.reservation_ttl.min(lifetime.keep);
        lifetime.keep.saturating_add(grace)
    }

    /// The lease key of a cache key: outside the namespace's keys (no pattern or
    /// namespace walk of entries matches it).
    pub(crate) fn lease_key<K: CacheKey>(&self, key: &K) -> String {
        let mut out = String::with_capacity(self.namespace.len() + 24);
        out.push_str(self.namespace.strip_suffix(':').unwrap_or(&self.namespace));
        out.push_str("#lease:");
        key.write_key(&mut out);
        out
    }

    /// Tries to take a lease: `None` when the store cannot be asked (breaker
    /// open, a failure).
    pub(crate) async fn lease(
        &self,
        report: &Report,
        key: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Option<bool> {
        self.guarded(report, "lease", self.store.lease(key, token, ttl))
            .await
    }

    /// Gives a lease back (a failure leaves it to expire).
    pub(crate) async fn release(&self, report: &Report, key: &str, token: &[u8]) {
        self.guarded(report, "release", self.store.release(key, token))
            .await;
    }

    /// The entry at `key` if it is fresh, read without counting a tier hit or
    /// miss and without reserving (a wait for another instance's load).
    pub(crate) async fn peek<V: DeserializeOwned>(
        &self,
        report: &Report,
        key: &str,
    ) -> Option<Decoded<V>> {
        let bytes = self.guarded(report, "get", self.store.get(key)).await??;
        match self.wire.decode::<V>(&bytes, key) {
            Ok(Some(decoded)) if !decoded.fresh.is_zero() => Some(decoded),
            _ => None,
        }
    }

    /// Counts a value that is not written to L2 (it stays L1-only).
    fn not_encoded(&self, report: &Report, key: &str, error: &EncodeError) {
        match error {
            EncodeError::TooLarge(bytes) => {
                tracing::debug!(key, bytes, "value past l2_max_value_bytes: L1 only");
                report.event(Counter::L2Oversized);
            }
            EncodeError::Codec(_) => {
                tracing::warn!(key, %error, "value does not encode: L1 only");
                report.l2_error();
            }
        }
    }

    /// Deletes `key`; if the store cannot be reached (or this call is cancelled),
    /// the deletion is kept and replayed before the next read of the store.
    pub(crate) async fn delete(&self, report: &Report, key: String) {
        let keys = [key];
        let mut guard = DeferOnDrop {
            l2: self,
            work: Some(Work::Key(keys[0].clone())),
        };
        if self
            .call(report, "delete", self.store.delete(&keys))
            .await
            .is_some()
        {
            guard.disarm();
        }
    }

    /// Deletes every key of this cache matching `pattern` (a glob over cache keys),
    /// one `SCAN` batch per call, each under its own timeout. Returns how many were
    /// deleted; if the store fails midway, the rest of the walk is owed.
    pub(crate) async fn delete_pattern(&self, report: &Report, pattern: &str) -> u64 {
        let glob = self.glob(pattern);
        self.walk(report, &glob, |cursor| Work::Pattern(glob.clone(), cursor))
            .await
    }

    /// Deletes every key of this cache's namespace, like
    /// [`delete_pattern`](Self::delete_pattern) with `*`.
    pub(crate) async fn clear(&self, report: &Report) -> u64 {
        let glob = self.glob("*");
        self.walk(report, &glob, Work::Clear).await
    }

    async fn walk(&self, report: &Report, glob: &str, owed: impl Fn(ScanCursor) -> Work) -> u64 {
        let mut cursor = ScanCursor::default();
        let mut deleted = 0;
        let mut guard = DeferOnDrop {
            l2: self,
            work: Some(owed(cursor)),
        };
        loop {
            let step = self.store.delete_matching(glob, cursor);
            let Some(step) = self.call(report, "scan", step).await else {
                return deleted; // the guard owes the rest
            };
            deleted += step.deleted;
            match step.next {
                Some(next) => {
                    cursor = next;
                    guard.work = Some(owed(cursor));
                }
                None => {
                    guard.disarm();
                    return deleted;
                }
            }
        }
    }
}

enum Decoding<V> {
    Hit(Decoded<V>),
    /// A reservation or an expired entry.
    Unusable,
    Corrupt,
}
