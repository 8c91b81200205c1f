//! A real `RemoteStore` (Redis) with one operation held at a gate: the test decides
//! when a chosen call reaches the server, to line up races deterministically.
//! Every call still goes to the real server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tiered::{BoxError, RemoteStore, ScanCursor, ScanStep};
use tokio::sync::Notify;

/// Which call waits at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Delete,
    Set,
    Replace,
}

#[derive(Debug, Default)]
pub struct Gate {
    armed: AtomicBool,
    /// Notified when a call reached the gate.
    pub reached: Notify,
    open: Notify,
}

impl Gate {
    /// The next matching call waits until [`open`](Gate::open).
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn open(&self) {
        self.open.notify_one();
    }

    async fn pass(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.open.notified().await;
        }
    }
}

#[derive(Debug)]
pub struct Gated<S> {
    pub inner: S,
    pub op: Op,
    /// Only calls on store keys ending with this are held.
    pub key_suffix: String,
    pub gate: Arc<Gate>,
}

impl<S: RemoteStore> Gated<S> {
    async fn maybe_wait(&self, op: Op, key: &str) {
        if op == self.op && key.ends_with(&self.key_suffix) {
            self.gate.pass().await;
        }
    }
}

impl<S: RemoteStore> RemoteStore for Gated<S> {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        self.inner.get(key)
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, BoxError>> {
        self.inner.get_many(keys)
    }

    fn get_or_reserve<'a>(
        &'a self,
        key: &'a str,
        reservation: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        self.inner.get_or_reserve(key, reservation, ttl)
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            self.maybe_wait(Op::Set, key).await;
            self.inner.set(key, value, ttl).await
        }
        .boxed()
    }

    fn replace<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        async move {
            self.maybe_wait(Op::Replace, key).await;
            self.inner.replace(key, expected, value, ttl).await
        }
        .boxed()
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            if let Some(key) = keys.first() {
                self.maybe_wait(Op::Delete, key).await;
            }
            self.inner.delete(keys).await
        }
        .boxed()
    }

    fn delete_matching<'a>(
        &'a self,
        pattern: &'a str,
        cursor: ScanCursor,
    ) -> BoxFuture<'a, Result<ScanStep, BoxError>> {
        self.inner.delete_matching(pattern, cursor)
    }
}
