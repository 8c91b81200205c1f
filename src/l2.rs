//! The shared tier: the [`RemoteStore`] trait (bytes in, bytes out) and the tier
//! around it (keys, wire format, timeouts, circuit breaker, deferred invalidations).

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::breaker::Breaker;
use crate::codec::{Decoded, Wire};
use crate::error::BoxError;
use crate::key::CacheKey;
use crate::observe::{Counter, Report, Tier};

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;

/// A shared key-value store for the L2 tier, at the level of bytes.
///
/// Futures are boxed so that a cache can hold any store as `Arc<dyn RemoteStore>`.
/// Implementations report failures as errors; the cache wraps every call in its own
/// timeout and circuit breaker and never lets a store error fail a read.
pub trait RemoteStore: Send + Sync + fmt::Debug + 'static {
    /// The bytes at `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>>;

    /// The bytes at each of `keys`, in order (one round trip where the store can).
    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, BoxError>>;

    /// Stores `value` at `key` for `ttl`.
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Removes `keys`.
    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Removes every key matching the Redis glob `pattern` (incrementally, never
    /// blocking the store); returns how many were removed.
    fn delete_matching<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64, BoxError>>;

    /// Publishes `message` on `channel` (for the invalidation bus).
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// The messages published on `channel` from now on (for the invalidation bus).
    /// The stream ends when the subscription is lost.
    fn subscribe<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Vec<u8>>, BoxError>>;
}

/// What a read of the shared tier found.
pub(crate) enum L2Read<V> {
    Hit(Decoded<V>),
    Miss,
    /// The call was skipped (breaker open) or failed: writing back after the load
    /// would most likely fail too, and make the read wait a second timeout.
    Unavailable,
}

/// Keys whose deletion could not reach the store, replayed before the next read
/// once it is reachable again. Past this many, the whole namespace is cleared
/// instead.
const MAX_PENDING: usize = 10_000;

#[derive(Default)]
struct Pending {
    keys: HashSet<String>,
    clear_all: bool,
}

/// The L2 tier of one cache.
pub(crate) struct L2 {
    store: Arc<dyn RemoteStore>,
    pub(crate) breaker: Breaker,
    timeout: Duration,
    namespace: String,
    /// The glob matching every key of `namespace`.
    namespace_glob: String,
    wire: Wire,
    pending: Mutex<Pending>,
    has_pending: AtomicBool,
    flushing: futures_util::lock::Mutex<()>,
}

/// Settings of the L2 tier, from the builder.
pub(crate) struct L2Config {
    pub(crate) store: Arc<dyn RemoteStore>,
    pub(crate) breaker: Breaker,
    pub(crate) timeout: Duration,
    /// `{prefix}{cache name}:{schema version}:`
    pub(crate) namespace: String,
    pub(crate) wire: Wire,
}

impl L2 {
    pub(crate) fn new(config: L2Config) -> Self {
        L2 {
            store: config.store,
            breaker: config.breaker,
            timeout: config.timeout,
            namespace_glob: format!("{}*", escape_glob(&config.namespace)),
            namespace: config.namespace,
            wire: config.wire,
            pending: Mutex::new(Pending::default()),
            has_pending: AtomicBool::new(false),
            flushing: futures_util::lock::Mutex::new(()),
        }
    }

    /// The store key of a cache key.
    pub(crate) fn key<K: CacheKey>(&self, key: &K) -> String {
        let mut out = String::with_capacity(self.namespace.len() + 16);
        out.push_str(&self.namespace);
        key.write_key(&mut out);
        out
    }

    /// Runs one store call through the breaker and the timeout. `None` when the
    /// breaker is open, or the call failed or timed out (counted).
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
        let (permit, transition) = self.breaker.permit();
        report.breaker(transition);
        let permit = permit?;
        let span = tracing::debug_span!("tiered.l2", op);
        let result =
            tracing::Instrument::instrument(tokio::time::timeout(self.timeout, call), span).await;
        match result {
            Ok(Ok(value)) => {
                report.breaker(permit.success());
                Some(value)
            }
            Ok(Err(error)) => {
                tracing::debug!(op, %error, "L2 call failed");
                report.l2_error();
                report.breaker(permit.failure());
                None
            }
            Err(_elapsed) => {
                tracing::debug!(op, timeout = ?self.timeout, "L2 call timed out");
                report.l2_error();
                report.breaker(permit.failure());
                None
            }
        }
    }

    /// Replays deletions that could not reach the store. Returns whether none are
    /// left (reads of the store must wait until then: they could see a deleted value).
    async fn flush_pending(&self, report: &Report) -> bool {
        let Some(_flushing) = self.flushing.try_lock() else {
            return false; // another caller is flushing; this read skips L2
        };
        let (keys, clear_all) = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let taken = std::mem::take(&mut *pending);
            self.has_pending.store(false, Ordering::Release);
            (taken.keys.into_iter().collect::<Vec<_>>(), taken.clear_all)
        };
        let done = if clear_all {
            let cleared = self
                .guarded(
                    report,
                    "clear",
                    self.store.delete_matching(&self.namespace_glob),
                )
                .await;
            if cleared.is_some() {
                report.count(Counter::L2NamespaceClears);
            }
            cleared.is_some()
        } else {
            self.guarded(report, "delete", self.store.delete(&keys))
                .await
                .is_some()
        };
        if !done {
            self.defer(keys, clear_all);
        }
        done
    }

    fn defer(&self, keys: Vec<String>, clear_all: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.clear_all |= clear_all;
        pending.keys.extend(keys);
        if pending.keys.len() > MAX_PENDING {
            pending.keys.clear();
            pending.clear_all = true;
        }
        if pending.clear_all {
            pending.keys.clear();
        }
        self.has_pending.store(true, Ordering::Release);
    }

    /// Reads and decodes one entry. Undecodable bytes are a counted miss, and the
    /// key is deleted.
    pub(crate) async fn get<V: DeserializeOwned>(&self, report: &Report, key: &str) -> L2Read<V> {
        match self.call(report, "get", self.store.get(key)).await {
            Some(bytes) => self.accept(report, key, bytes).await,
            None => {
                report.tier(Tier::L2, false);
                L2Read::Unavailable
            }
        }
    }

    /// Reads and decodes several entries with one call.
    pub(crate) async fn get_many<V: DeserializeOwned>(
        &self,
        report: &Report,
        keys: &[String],
    ) -> Vec<L2Read<V>> {
        let found = self
            .call(report, "get_many", self.store.get_many(keys))
            .await
            .filter(|values| values.len() == keys.len());
        let mut out = Vec::with_capacity(keys.len());
        match found {
            Some(values) => {
                for (key, bytes) in keys.iter().zip(values) {
                    out.push(self.accept(report, key, bytes).await);
                }
            }
            None => {
                for _ in keys {
                    report.tier(Tier::L2, false);
                    out.push(L2Read::Unavailable);
                }
            }
        }
        out
    }

    async fn accept<V: DeserializeOwned>(
        &self,
        report: &Report,
        key: &str,
        bytes: Option<Vec<u8>>,
    ) -> L2Read<V> {
        let decoded = match bytes.map(|b| self.wire.decode::<V>(&b)) {
            Some(Ok(decoded)) if !decoded.remaining.is_zero() => Some(decoded),
            Some(Ok(_expired)) => None,
            Some(Err(error)) => {
                tracing::warn!(key, %error, "undecodable L2 entry: deleted, reloading");
                report.count(Counter::L2Corrupt);
                let keys = [key.to_owned()];
                self.guarded(report, "delete", self.store.delete(&keys))
                    .await;
                None
            }
            None => None,
        };
        report.tier(Tier::L2, decoded.is_some());
        decoded.map_or(L2Read::Miss, L2Read::Hit)
    }

    /// Writes an entry (a value or an absence) for `ttl`.
    pub(crate) async fn set<V: Serialize>(
        &self,
        report: &Report,
        key: &str,
        value: Option<&V>,
        ttl: Duration,
    ) {
        match self.wire.encode(value, ttl) {
            Ok(bytes) => {
                self.call(report, "set", self.store.set(key, &bytes, ttl))
                    .await;
            }
            Err(error) => {
                tracing::warn!(key, %error, "value does not encode: not written to L2");
                report.l2_error();
            }
        }
    }

    /// Deletes `key`; if the store cannot be reached, the deletion is kept and
    /// replayed before the next read of the store.
    pub(crate) async fn delete(&self, report: &Report, key: String) {
        let keys = [key];
        if self
            .call(report, "delete", self.store.delete(&keys))
            .await
            .is_none()
        {
            let [key] = keys;
            self.defer(vec![key], false);
        }
    }

    /// Deletes every key of this cache's namespace, or keeps that for later.
    pub(crate) async fn clear(&self, report: &Report) {
        if self
            .call(
                report,
                "clear",
                self.store.delete_matching(&self.namespace_glob),
            )
            .await
            .is_none()
        {
            self.defer(Vec::new(), true);
        }
    }
}

/// Escapes Redis glob characters so that `s` matches only itself.
pub(crate) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_glob;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("app:users:1:"), "app:users:1:");
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
