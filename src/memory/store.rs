//! [`MemoryStore`]: a [`RemoteStore`] in the process's memory, with Redis's
//! semantics (those of `RedisStore`'s commands and scripts) and faults on command.

use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::faults::{Admit, Faults, StoreOp};
use super::keyspace::{expiry, Keyspace};
use crate::clock::Clock;
use crate::error::BoxError;
use crate::pattern::Pattern;
use crate::remote::store::{new_identity, RemoteStore, ScanCursor, ScanStep};

/// A [`RemoteStore`] in memory: a shared tier for tests, with no server.
///
/// It keeps keys as Redis does for `RedisStore`: bytes with an optional expiry (in
/// whole milliseconds, on the store's [`Clock`]), the same atomic read-or-reserve,
/// compare-and-set, `SET NX PX` leases and token-checked release, and a
/// `delete_matching` walk with `SCAN`'s promise (every key that exists from the
/// walk's first step to its last is removed) and Redis's glob syntax. The crate's
/// conformance suite runs the same checks against it and against real Redis.
///
/// # Handles
///
/// Clones share everything: the data, and the fault state and call counts of
/// the handle. [`connect`](MemoryStore::connect) makes another handle to the same
/// data with faults and counts of its own, as another client of the same server:
/// give each cache instance its own handle, and partition one of them while the
/// others still reach the data.
///
/// ```
/// use std::time::Duration;
/// use tiered::{MemoryStore, RemoteStore, StoreOp};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// let other = store.connect(); // another client of the same data
/// store.set("k", b"v", Duration::from_secs(60)).await.unwrap();
/// assert_eq!(other.get("k").await.unwrap(), Some(b"v".to_vec()));
///
/// other.fail_next(StoreOp::Get, 1);
/// assert!(other.get("k").await.is_err());
/// assert!(store.get("k").await.is_ok(), "faults are per handle");
/// assert_eq!(other.calls(StoreOp::Get), 2);
/// # }
/// ```
///
/// With a [`ManualClock`](crate::ManualClock), keys expire when the clock is
/// advanced: give the same clock to the caches (`TieredCacheBuilder::clock`).
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    faults: Arc<Faults>,
    /// This handle's identity: caches on it (and its clones) share a breaker.
    identity: u64,
}

/// What every handle shares.
struct Shared {
    keys: Mutex<Keyspace>,
    clock: Clock,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("connected", &!self.faults.is_down())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store whose keys expire on the system's monotonic clock.
    pub fn new() -> Self {
        MemoryStore::with_clock(Clock::system())
    }

    /// An empty store whose keys expire on `clock` (a
    /// [`ManualClock`](crate::ManualClock), for tests of expiry that do not sleep).
    pub fn with_clock(clock: impl Into<Clock>) -> Self {
        MemoryStore {
            shared: Arc::new(Shared {
                keys: Mutex::new(Keyspace::default()),
                clock: clock.into(),
            }),
            faults: Arc::default(),
            identity: new_identity(),
        }
    }

    /// Another handle to the same data, with faults and call counts of its own
    /// (connected, with none set).
    pub fn connect(&self) -> Self {
        MemoryStore {
            shared: self.shared.clone(),
            faults: Arc::default(),
            identity: new_identity(),
        }
    }

    /// Makes the next `n` calls of `op` through this handle fail (in addition to
    /// any still to come), without touching the data.
    pub fn fail_next(&self, op: StoreOp, n: u32) {
        self.faults.fail_next(op, n);
    }

    /// Makes the next `n` calls of `op` through this handle never complete, without
    /// touching the data (as a request lost to a frozen server; the cache gives up
    /// on it at its L2 timeout). Hangs are used up before failures.
    pub fn hang_next(&self, op: StoreOp, n: u32) {
        self.faults.hang_next(op, n);
    }

    /// Makes every later call through this handle take `latency` on its way to
    /// the data before it takes effect (as a slow network or a busy server). A
    /// call given up on before then (the cache's L2 timeout) never takes effect.
    pub fn set_latency(&self, latency: Duration) {
        self.faults.set_latency(latency);
    }

    /// Takes this handle down: every call through it fails at once, until
    /// [`reconnect`](MemoryStore::reconnect). Failures and hangs set for later are
    /// kept for then.
    pub fn disconnect(&self) {
        self.faults.set_down(true);
    }

    /// Brings this handle up again.
    pub fn reconnect(&self) {
        self.faults.set_down(false);
    }

    /// Whether this handle is up.
    pub fn is_connected(&self) -> bool {
        !self.faults.is_down()
    }

    /// Brings this handle up and forgets the failures, hangs and latency still
    /// to come (call counts are kept).
    pub fn clear_faults(&self) {
        self.faults.clear();
    }

    /// How many calls of `op` were made through this handle (and its clones),
    /// whatever became of them. A call counts when its future is first polled.
    pub fn calls(&self, op: StoreOp) -> u64 {
        self.faults.calls(op)
    }

    /// Every live key, sorted (faults do not apply).
    pub fn keys(&self) -> Vec<String> {
        let now = self.now();
        self.lock().keys(now)
    }

    /// The bytes at `key`, if it is live (faults do not apply, nothing is counted).
    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.now();
        self.lock().get(key, now)
    }

    /// How long `key` has left: `None` if it is not live, `Some(None)` if it never
    /// expires.
    pub fn ttl(&self, key: &str) -> Option<Option<Duration>> {
        let now = self.now();
        self.lock().ttl(key, now)
    }

    /// Writes `bytes` at `key` for `ttl` (`None`: for ever), as another client would
    /// (`SET`): to plant corrupt or foreign values. Faults do not apply.
    pub fn insert_raw(&self, key: &str, bytes: &[u8], ttl: Option<Duration>) {
        let now = self.now();
        let expires = ttl.map(|ttl| expiry(now, ttl));
        self.lock().set(key, bytes, expires, now);
    }

    /// Removes `key`, as another client would; returns whether it was live.
    /// Faults do not apply.
    pub fn remove_raw(&self, key: &str) -> bool {
        let now = self.now();
        self.lock().remove(key, now)
    }

    fn now(&self) -> u64 {
        self.shared.clock.now()
    }

    fn lock(&self) -> MutexGuard<'_, Keyspace> {
        self.shared
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` as one atomic step on the data (as a Redis command or script),
    /// after this handle's faults had their say. Nothing happens before the
    /// future is polled, as with a request not yet sent.
    fn call<'a, T: Send + 'a>(
        &'a self,
        op: StoreOp,
        run: impl FnOnce(&mut Keyspace, u64) -> T + Send + 'a,
    ) -> BoxFuture<'a, Result<T, BoxError>> {
        Box::pin(async move {
            match self.faults.admit(op) {
                Admit::Run(latency) => {
                    if !latency.is_zero() {
                        tokio::time::sleep(latency).await;
                    }
                }
                Admit::Fail(error) => return Err(error),
                Admit::Hang => {
                    let never: Infallible = std::future::pending().await;
                    match never {}
                }
            }
            let now = self.now();
            Ok(run(&mut self.lock(), now))
        })
    }
}

impl RemoteStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        self.call(StoreOp::Get, move |keys, now| keys.get(key, now))
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, BoxError>> {
        self.call(StoreOp::GetMany, move |data, now| {
            keys.iter().map(|key| data.get(key, now)).collect()
        })
    }

    fn get_or_reserve<'a>(
        &'a self,
        key: &'a str,
        reservation: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        self.call(StoreOp::Reserve, move |keys, now| {
            let found = keys.get(key, now);
            if found.is_none() {
                keys.set(key, reservation, Some(expiry(now, ttl)), now);
            }
            found
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.call(StoreOp::Set, move |keys, now| {
            keys.set(key, value, Some(expiry(now, ttl)), now);
        })
    }

    fn replace<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        self.call(StoreOp::Replace, move |keys, now| {
            let holds = keys.holds(key, expected, now);
            if holds {
                keys.set(key, value, Some(expiry(now, ttl)), now);
            }
            holds
        })
    }

    fn lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        self.call(StoreOp::Lease, move |keys, now| {
            let free = keys.get(key, now).is_none();
            if free {
                keys.set(key, token, Some(expiry(now, ttl)), now);
            }
            free
        })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a [u8]) -> BoxFuture<'a, Result<(), BoxError>> {
        self.call(StoreOp::Release, move |keys, now| {
            if keys.holds(key, token, now) {
                keys.remove(key, now);
            }
        })
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), BoxError>> {
        self.call(StoreOp::Delete, move |data, now| {
            for key in keys {
                data.remove(key, now);
            }
        })
    }

    fn stamp_tags<'a>(
        &'a self,
        clock: &'a str,
        tags: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BoxError>> {
        let stamped = self.call(StoreOp::StampTags, move |keys, now| {
            // A clock that is not a number counts as 0, as in the script.
            let current = keys.get(clock, now).map_or(0, |bytes| {
                std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok())
                    .unwrap_or(0)
            });
            // The clock's microseconds, or one past the last stamp (as the
            // Redis script does with the server's time).
            let stamp = (now / 1_000).max(current.saturating_add(1));
            let text = stamp.to_string();
            keys.set(clock, text.as_bytes(), None, now);
            for tag in tags {
                keys.set(tag, text.as_bytes(), None, now);
            }
            stamp
        });
        Box::pin(stamped)
    }

    fn stamps_tags(&self) -> bool {
        true
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        self.call(StoreOp::Ping, |_, _| ())
    }

    /// Caches on one handle (or its clones) share a circuit breaker; another
    /// handle ([`connect`](MemoryStore::connect)) is another client, with its own.
    fn identity(&self) -> Option<u64> {
        Some(self.identity)
    }

    /// One step: up to 1000 keys, in the order they were created, from
    /// `cursor.position` (as for a standalone Redis).
    fn delete_matching<'a>(
        &'a self,
        pattern: &'a str,
        cursor: ScanCursor,
    ) -> BoxFuture<'a, Result<ScanStep, BoxError>> {
        self.call(StoreOp::Scan, move |keys, now| {
            let step = keys.scan_step(&Pattern::new(pattern), cursor.position, now);
            ScanStep {
                deleted: step.deleted,
                next: step.next.map(ScanCursor::at),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::clock::ManualClock;

    const MINUTE: Duration = Duration::from_secs(60);

    fn block_on<F: Future>(future: F) -> F::Output {
        futures_util::FutureExt::now_or_never(future).expect("a memory call completes at once")
    }

    /// Polls once; `None` while pending.
    fn poll_once<F: Future>(future: F) -> Option<F::Output> {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        }
    }

    #[test]
    fn expiry_follows_the_store_clock() {
        let clock = ManualClock::new();
        let store = MemoryStore::with_clock(clock.clone());
        block_on(store.set("k", b"v", Duration::from_secs(10))).unwrap();
        assert_eq!(store.ttl("k"), Some(Some(Duration::from_secs(10))));
        clock.advance(Duration::from_millis(9999));
        assert_eq!(block_on(store.get("k")).unwrap(), Some(b"v".to_vec()));
        clock.advance(Duration::from_millis(1));
        assert_eq!(block_on(store.get("k")).unwrap(), None);
        assert!(store.keys().is_empty());
        store.insert_raw("forever", b"x", None);
        clock.advance(crate::policy::Ttl::MAX);
        assert_eq!(store.raw("forever"), Some(b"x".to_vec()));
        assert_eq!(store.ttl("forever"), Some(None));
    }

    #[test]
    fn reservations_leases_and_replace_follow_the_scripts() {
        let clock = ManualClock::new();
        let store = MemoryStore::with_clock(clock.clone());
        let reserve = |token: &'static [u8]| block_on(store.get_or_reserve("k", token, MINUTE));
        assert_eq!(reserve(b"r1").unwrap(), None);
        assert_eq!(reserve(b"r2").unwrap(), Some(b"r1".to_vec()));
        assert!(!block_on(store.replace("k", b"r2", b"v", MINUTE)).unwrap());
        assert!(block_on(store.replace("k", b"r1", b"v", MINUTE)).unwrap());
        assert_eq!(store.raw("k"), Some(b"v".to_vec()));
        assert!(!block_on(store.replace("absent", b"", b"v", MINUTE)).unwrap());
        assert_eq!(store.raw("absent"), None);

        assert!(block_on(store.lease("l", b"a", MINUTE)).unwrap());
        assert!(!block_on(store.lease("l", b"b", MINUTE)).unwrap());
        block_on(store.release("l", b"b")).unwrap();
        assert_eq!(store.raw("l"), Some(b"a".to_vec()), "not b's to release");
        clock.advance(MINUTE);
        assert!(
            block_on(store.lease("l", b"b", MINUTE)).unwrap(),
            "a's expired"
        );
        block_on(store.release("l", b"a")).unwrap();
        assert_eq!(store.raw("l"), Some(b"b".to_vec()));
        block_on(store.release("l", b"b")).unwrap();
        assert_eq!(store.raw("l"), None);
    }

    #[test]
    fn handles_share_data_but_not_faults() {
        let a = MemoryStore::new();
        let a2 = a.clone();
        let b = a.connect();
        a.disconnect();
        assert!(!a2.is_connected(), "a clone is the same handle");
        assert!(b.is_connected());
        for op in StoreOp::ALL {
            let result = match op {
                StoreOp::Get => block_on(a.get("k")).map(drop),
                StoreOp::GetMany => block_on(a.get_many(&[])).map(drop),
                StoreOp::Reserve => block_on(a.get_or_reserve("k", b"r", MINUTE)).map(drop),
                StoreOp::Set => block_on(a.set("k", b"v", MINUTE)),
                StoreOp::Replace => block_on(a.replace("k", b"r", b"v", MINUTE)).map(drop),
                StoreOp::Lease => block_on(a.lease("k", b"t", MINUTE)).map(drop),
                StoreOp::Release => block_on(a.release("k", b"t")),
                StoreOp::Delete => block_on(a.delete(&["k".to_owned()])),
                StoreOp::Scan => block_on(a.delete_matching("*", ScanCursor::default())).map(drop),
                StoreOp::Ping => block_on(a.ping()),
                StoreOp::StampTags => block_on(a.stamp_tags("c", &["t".to_owned()])).map(drop),
            };
            assert!(result.is_err(), "{op} while down");
            assert_eq!(a.calls(op), 1, "{op}");
            assert_eq!(b.calls(op), 0, "{op}");
        }
        assert!(a.keys().is_empty(), "nothing reached the data");
        block_on(b.set("k", b"v", MINUTE)).unwrap();
        a.reconnect();
        assert_eq!(block_on(a.get("k")).unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn hung_calls_never_complete_and_do_nothing() {
        let store = MemoryStore::new();
        store.hang_next(StoreOp::Set, 1);
        assert!(poll_once(store.set("k", b"v", MINUTE)).is_none());
        assert_eq!(store.raw("k"), None);
        block_on(store.set("k", b"v", MINUTE)).unwrap();
        assert_eq!(store.raw("k"), Some(b"v".to_vec()));

        store.fail_next(StoreOp::Delete, 1);
        let error = block_on(store.delete(&["k".to_owned()])).unwrap_err();
        assert!(error.to_string().contains("injected"), "{error}");
        assert_eq!(
            store.raw("k"),
            Some(b"v".to_vec()),
            "a failed call did nothing"
        );
        assert_eq!(store.calls(StoreOp::Set), 2);
        assert_eq!(store.calls(StoreOp::Delete), 1);
    }

    #[test]
    fn unpolled_calls_are_not_counted() {
        let store = MemoryStore::new();
        drop(store.get("k"));
        assert_eq!(store.calls(StoreOp::Get), 0);
    }

    #[test]
    fn walks_resume_from_their_cursor() {
        let store = MemoryStore::new();
        for n in 0..2100 {
            store.insert_raw(&format!("user:{n}"), b"v", None);
        }
        store.insert_raw("team:1", b"v", None);
        let mut cursor = ScanCursor::default();
        let mut steps = Vec::new();
        loop {
            let step = block_on(store.delete_matching("user:*", cursor)).unwrap();
            steps.push(step.deleted);
            match step.next {
                Some(next) => {
                    assert_eq!(next.node, 0);
                    cursor = next;
                }
                None => break,
            }
        }
        assert_eq!(steps, [1000, 1000, 100]);
        assert_eq!(store.keys(), ["team:1"]);
        assert_eq!(store.calls(StoreOp::Scan), 3);
    }
}
