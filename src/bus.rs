//! The invalidation bus: how one instance's `insert` and `invalidate*` reach the L1
//! of every other instance of the same cache.
//!
//! A [`Backplane`] (Redis pub/sub through `RedisStore`, or your own) carries
//! versioned messages on one channel per cache namespace: a key, a pattern, or
//! everything, with the id of the instance that sent them (which ignores its own).
//! The engine's listener (`engine/listen.rs`) applies what arrives through the
//! cache's fence like a local invalidation, so it also stops a local load in
//! flight from caching what it read before. When a subscription was lost,
//! messages may have been missed: on every (re)subscription the instance clears
//! its L1, so no instance serves data older than the outage.
//!
//! [`Bus`] is one cache's end: what it publishes (kept and sent again when a
//! publish fails) and the state of its subscription.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::stream::BoxStream;

pub(crate) mod backplane;
pub(crate) mod message;

pub use self::backplane::{Backplane, Delivery};
pub(crate) use self::message::Message;

/// Publishes beyond this many are collapsed into one [`Message::All`].
const MAX_UNSENT: usize = 1000;

/// How long after a failed publish the next change only keeps its message.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One cache's end of the bus.
pub(crate) struct Bus {
    backplane: Arc<dyn Backplane>,
    channel: String,
    /// This instance's id, in every message it sends.
    origin: u128,
    timeout: Duration,
    /// Messages whose publish failed, sent again before the next one.
    unsent: Mutex<Vec<Message>>,
    has_unsent: AtomicBool,
    /// When a send last failed (then sends wait [`RETRY_AFTER`]).
    failed_at: Mutex<Option<std::time::Instant>>,
    /// The listener task, started on first use (`None` outside a tokio runtime);
    /// aborted with the cache.
    listener: OnceLock<Option<AbortOnDrop>>,
    /// Whether the first subscription is up.
    ready: AtomicBool,
    ready_notify: tokio::sync::Notify,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Bus {
    pub(crate) fn new(backplane: Arc<dyn Backplane>, channel: String, timeout: Duration) -> Self {
        Bus {
            backplane,
            channel,
            origin: (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..)),
            timeout,
            unsent: Mutex::new(Vec::new()),
            has_unsent: AtomicBool::new(false),
            failed_at: Mutex::new(None),
            listener: OnceLock::new(),
            ready: AtomicBool::new(false),
            ready_notify: tokio::sync::Notify::new(),
        }
    }

    /// What is published on this cache's channel from now on.
    pub(crate) fn subscribe(&self) -> BoxStream<'static, Delivery> {
        self.backplane.subscribe(&self.channel)
    }

    /// The message in `bytes`, unless it is this instance's own or unreadable
    /// (foreign bytes, another version: ignored, logged).
    pub(crate) fn receive(&self, bytes: &[u8]) -> Option<Message> {
        match Message::decode(bytes) {
            Some((origin, _)) if origin == self.origin => None,
            Some((_, message)) => Some(message),
            None => {
                tracing::debug!(channel = %self.channel, "unreadable bus message ignored");
                None
            }
        }
    }

    /// Whether the listener was started (or could not be, outside a runtime).
    pub(crate) fn is_listening(&self) -> bool {
        self.listener.get().is_some()
    }

    /// Starts the listener once (`start` spawns it and returns its task, or
    /// `None` outside a runtime). Returns whether the caller should wait for
    /// the first subscription: it started the listener, which is not up yet.
    pub(crate) fn start_listener(
        &self,
        start: impl FnOnce() -> Option<tokio::task::AbortHandle>,
    ) -> bool {
        if self.listener.get().is_some() {
            return false;
        }
        let mut started = false;
        let listening = self.listener.get_or_init(|| {
            started = true;
            start().map(AbortOnDrop)
        });
        started && listening.is_some() && !self.ready.load(Ordering::Acquire)
    }

    /// Waits (up to the timeout) for the first subscription, if the caller
    /// started the listener. `subscribed` must be taken before starting it.
    pub(crate) async fn wait_ready(&self, subscribed: tokio::sync::futures::Notified<'_>) {
        let _ = tokio::time::timeout(self.timeout, subscribed).await;
    }

    /// A future that completes when the first subscription is up (take it
    /// before [`start_listener`](Self::start_listener)).
    pub(crate) fn subscribed(&self) -> tokio::sync::futures::Notified<'_> {
        self.ready_notify.notified()
    }

    /// Whether a subscription was up before.
    pub(crate) fn is_subscribed(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The subscription is up (again).
    pub(crate) fn mark_subscribed(&self) {
        self.ready.store(true, Ordering::Release);
        self.ready_notify.notify_waiters();
    }

    /// Sends `message` (after any that could not be sent before). Returns whether
    /// everything was sent; what was not is kept for the next call. Within
    /// [`RETRY_AFTER`] of a failed send, nothing is tried (an unreachable Redis
    /// costs a change no timeout); the listener sends what is kept when its
    /// subscription comes back.
    pub(crate) async fn publish(&self, message: Message) -> bool {
        self.keep(message);
        let failed_at = *self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return false;
        }
        self.send_unsent().await
    }

    /// Sends what is kept. Returns whether nothing is left.
    pub(crate) async fn send_unsent(&self) -> bool {
        if !self.has_unsent.load(Ordering::Acquire) {
            return true;
        }
        let batch: Vec<Message> = self.lock_unsent().clone();
        let mut sent = 0;
        for message in &batch {
            let bytes = message.encode(self.origin);
            let publish = self.backplane.publish(&self.channel, &bytes);
            match tokio::time::timeout(self.timeout, publish).await {
                Ok(Ok(())) => sent += 1,
                Ok(Err(error)) => {
                    tracing::debug!(%error, channel = %self.channel, "bus publish failed");
                    break;
                }
                Err(_) => {
                    tracing::debug!(channel = %self.channel, "bus publish timed out");
                    break;
                }
            }
        }
        let mut unsent = self.lock_unsent();
        // Only what was sent leaves (others may have been added meanwhile).
        if unsent.len() >= sent && unsent[..sent] == batch[..sent] {
            unsent.drain(..sent);
        }
        let done = unsent.is_empty();
        self.has_unsent.store(!done, Ordering::Release);
        drop(unsent);
        *self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = (!done).then(std::time::Instant::now);
        done
    }

    fn keep(&self, message: Message) {
        let mut unsent = self.lock_unsent();
        if unsent.len() >= MAX_UNSENT || unsent.first() == Some(&Message::All) {
            unsent.clear();
            unsent.push(Message::All);
        } else {
            unsent.push(message);
        }
        self.has_unsent.store(true, Ordering::Release);
    }

    fn lock_unsent(&self) -> std::sync::MutexGuard<'_, Vec<Message>> {
        self.unsent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Aborts the listener task when the cache is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
