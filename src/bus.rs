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

use crate::backoff::Backoff;
use crate::observe::BusHealth;

pub(crate) mod backplane;
pub(crate) mod message;

pub use self::backplane::{Backplane, Delivery};
pub(crate) use self::message::Message;

/// Publishes beyond this many are collapsed into one [`Message::All`].
const MAX_UNSENT: usize = 1000;

/// How long after a failed publish the next change only keeps its message.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The background sender's backoff: first delay and cap.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_CAP: Duration = Duration::from_secs(5);

/// One cache's end of the bus.
pub(crate) struct Bus {
    backplane: Arc<dyn Backplane>,
    channel: String,
    /// This instance's id, in every message it sends.
    origin: u128,
    timeout: Duration,
    /// Messages kept to be sent (in order, numbered).
    unsent: Mutex<Unsent>,
    has_unsent: AtomicBool,
    /// When a send last failed (then sends wait [`RETRY_AFTER`]).
    failed_at: Mutex<Option<tokio::time::Instant>>,
    /// Held by the one caller sending kept messages.
    send_lock: futures_util::lock::Mutex<()>,
    /// Whether the background sender runs.
    sending: AtomicBool,
    /// The listener task, started on first use in a tokio runtime; aborted with
    /// the cache.
    listener: OnceLock<AbortOnDrop>,
    /// When the listener was started (tokio's clock, as the waits it bounds).
    started_at: OnceLock<tokio::time::Instant>,
    /// Whether the first subscription is up.
    ready: AtomicBool,
    ready_notify: tokio::sync::Notify,
    /// Whether the subscription is up now, and since when (for health).
    up: Mutex<(bool, Option<std::time::Instant>)>,
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
            unsent: Mutex::new(Unsent::default()),
            has_unsent: AtomicBool::new(false),
            failed_at: Mutex::new(None),
            send_lock: futures_util::lock::Mutex::new(()),
            sending: AtomicBool::new(false),
            listener: OnceLock::new(),
            started_at: OnceLock::new(),
            ready: AtomicBool::new(false),
            ready_notify: tokio::sync::Notify::new(),
            up: Mutex::new((false, None)),
        }
    }

    /// The bus's part of the cache's health.
    pub(crate) fn health(&self) -> BusHealth {
        let (subscribed, since) = *self.up.lock().unwrap_or_else(PoisonError::into_inner);
        let since = since
            .or_else(|| self.started_at.get().map(|t| t.into_std()))
            .map(|at| at.elapsed());
        let unsent = self
            .unsent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kept
            .len();
        let publish_failing = self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        BusHealth {
            listening: self.started_at.get().is_some(),
            subscribed,
            since,
            unsent,
            publish_failing,
        }
    }

    /// The subscription was lost (it is being re-established).
    pub(crate) fn mark_lost(&self) {
        let mut up = self.up.lock().unwrap_or_else(PoisonError::into_inner);
        // Down since it went down (or since the listener started, if it never
        // came up), not since it was last told.
        if up.0 {
            *up = (false, Some(std::time::Instant::now()));
        }
    }

    /// What is published on this cache's channel from now on.
    pub(crate) fn subscribe(&self) -> BoxStream<'static, Delivery> {
        self.backplane.subscribe(&self.channel)
    }

    /// The message in `bytes`, unless it is this instance's own or foreign bytes
    /// (ignored, logged). A message of this crate that this version cannot read
    /// (a newer version's, or damaged) is taken as "everything": it was an
    /// invalidation of something.
    pub(crate) fn receive(&self, bytes: &[u8]) -> Option<Message> {
        match Message::decode(bytes) {
            Some((origin, _)) if origin == self.origin => None,
            Some((_, message)) => Some(message),
            None if Message::is_ours(bytes) => {
                tracing::debug!(channel = %self.channel, "unreadable bus message: L1 cleared");
                Some(Message::All)
            }
            None => {
                tracing::debug!(channel = %self.channel, "foreign bus message ignored");
                None
            }
        }
    }

    /// Starts the listener once (`start` spawns it and returns its task).
    pub(crate) fn start_listener(&self, start: impl FnOnce() -> tokio::task::AbortHandle) {
        self.listener.get_or_init(|| {
            let _ = self.started_at.set(tokio::time::Instant::now());
            AbortOnDrop(start())
        });
    }

    /// How long a caller may still wait for the first subscription: within one
    /// timeout of the listener's start, while it is not up. (Past that, nobody
    /// waits: a Redis that is down at start-up costs each read nothing.)
    pub(crate) fn startup_left(&self) -> Option<Duration> {
        let started = self.started_at.get()?;
        self.timeout.checked_sub(started.elapsed())
    }

    /// A future that completes when the first subscription is up (take it
    /// before checking [`is_subscribed`](Self::is_subscribed), so that the
    /// notification cannot fall between the two).
    pub(crate) fn subscribed(&self) -> tokio::sync::futures::Notified<'_> {
        self.ready_notify.notified()
    }

    /// Whether the subscription has been up (it may be down now: then it
    /// yields a new subscription, and L1 is cleared, when it is back).
    pub(crate) fn is_subscribed(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The subscription is up (again).
    pub(crate) fn mark_subscribed(&self) {
        *self.up.lock().unwrap_or_else(PoisonError::into_inner) =
            (true, Some(std::time::Instant::now()));
        self.ready.store(true, Ordering::Release);
        self.ready_notify.notify_waiters();
    }

    /// Keeps `message` to be sent (after any that could not be sent before),
    /// at once: once a change has landed, its message must go out even if the
    /// caller is cancelled from here on. The returned [`Announcement`] sends it;
    /// dropped unsent (a cancelled caller, a failed send), it leaves it to the
    /// background sender.
    pub(crate) fn announce(self: &Arc<Self>, message: Message) -> Announcement<'_> {
        self.keep(message);
        Announcement { bus: self }
    }

    /// Keeps `message` and has it sent in the background (for callers that
    /// cannot wait: owed work that landed during a read).
    pub(crate) fn enqueue(self: &Arc<Self>, message: Message) {
        self.keep(message);
        self.keep_sending();
    }

    /// Starts the background sender of kept messages, unless it runs. It tries
    /// at once, then backs off (50 ms doubling to 5 s) until nothing is kept or
    /// the cache is dropped. Needs a tokio runtime (else the next publish or
    /// resubscription sends what is kept).
    pub(crate) fn keep_sending(self: &Arc<Self>) {
        if self.sending.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sending.store(false, Ordering::SeqCst);
            return;
        };
        let bus = Arc::downgrade(self);
        // Dropped with the task (polled or not: its runtime shut down) rather
        // than done, it lets the next change start another.
        let mut running = ClearOnDrop(Some(bus.clone()));
        runtime.spawn(async move {
            let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP, 0.25);
            loop {
                let Some(bus) = bus.upgrade() else {
                    return;
                };
                if bus.send_unsent().await {
                    backoff.reset();
                    if bus.has_unsent() {
                        continue; // kept meanwhile: send it too
                    }
                    running.disarm();
                    bus.sending.store(false, Ordering::SeqCst);
                    // Kept again meanwhile, with nobody to send it: go on.
                    if !bus.has_unsent() || bus.sending.swap(true, Ordering::SeqCst) {
                        return;
                    }
                    running.arm(&bus);
                    continue;
                }
                drop(bus);
                backoff.wait().await;
            }
        });
    }

    /// Sends what is kept. Returns whether every publish it tried went
    /// through (messages kept meanwhile may be left: see `has_unsent`).
    pub(crate) async fn send_unsent(&self) -> bool {
        if !self.has_unsent.load(Ordering::SeqCst) {
            return true;
        }
        // One sender at a time, so that a message is not sent twice by two.
        let _sending = self.send_lock.lock().await;
        if !self.has_unsent.load(Ordering::SeqCst) {
            return true;
        }
        let batch: Vec<(u64, Message)> = self.lock_unsent().kept.clone();
        let mut sent = 0;
        let mut failed = false;
        for (_, message) in &batch {
            let bytes = message.encode(self.origin);
            let publish = self.backplane.publish(&self.channel, &bytes);
            match tokio::time::timeout(self.timeout, publish).await {
                Ok(Ok(())) => sent += 1,
                Ok(Err(error)) => {
                    tracing::debug!(%error, channel = %self.channel, "bus publish failed");
                    failed = true;
                    break;
                }
                Err(_) => {
                    tracing::debug!(channel = %self.channel, "bus publish timed out");
                    failed = true;
                    break;
                }
            }
        }
        let mut unsent = self.lock_unsent();
        // Only what was sent leaves: by number, so that a message kept (or
        // folded into "everything") meanwhile stays.
        let sent: Vec<u64> = batch[..sent].iter().map(|(number, _)| *number).collect();
        unsent.kept.retain(|(number, _)| !sent.contains(number));
        self.has_unsent
            .store(!unsent.kept.is_empty(), Ordering::SeqCst);
        drop(unsent);
        *self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = failed.then(tokio::time::Instant::now);
        !failed
    }

    /// Whether messages are kept, unsent.
    fn has_unsent(&self) -> bool {
        self.has_unsent.load(Ordering::SeqCst)
    }

    fn keep(&self, message: Message) {
        let mut unsent = self.lock_unsent();
        unsent.next += 1;
        let number = unsent.next;
        if unsent.kept.len() >= MAX_UNSENT || unsent.kept.iter().any(|(_, m)| *m == Message::All) {
            // Everything, under a new number: one being sent now does not count.
            unsent.kept.clear();
            unsent.kept.push((number, Message::All));
        } else {
            unsent.kept.push((number, message));
        }
        self.has_unsent.store(true, Ordering::SeqCst);
    }

    fn lock_unsent(&self) -> std::sync::MutexGuard<'_, Unsent> {
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

/// Messages kept to be sent, each with a number.
#[derive(Default)]
struct Unsent {
    kept: Vec<(u64, Message)>,
    next: u64,
}

/// A kept message being sent by the caller whose change it announces.
pub(crate) struct Announcement<'a> {
    bus: &'a Arc<Bus>,
}

impl Announcement<'_> {
    /// Sends what is kept, this message included. Returns whether everything
    /// was sent; what was not is sent by the background sender (with backoff).
    /// Within [`RETRY_AFTER`] of a failed send, nothing is tried here (an
    /// unreachable Redis costs a change no timeout).
    pub(crate) async fn send(self) -> bool {
        let failed_at = *self
            .bus
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return false; // the drop hands it to the background sender
        }
        let sent = self.bus.send_unsent().await;
        if sent && !self.bus.has_unsent() {
            std::mem::forget(self); // nothing left for the background sender
        }
        sent
    }
}

impl Drop for Announcement<'_> {
    fn drop(&mut self) {
        self.bus.keep_sending();
    }
}

/// Marks the background sender stopped if its task is dropped while it holds
/// the flag (its runtime shut down).
struct ClearOnDrop(Option<std::sync::Weak<Bus>>);

impl ClearOnDrop {
    /// The task gave the flag up.
    fn disarm(&mut self) {
        self.0 = None;
    }

    /// The task holds the flag again.
    fn arm(&mut self, bus: &Arc<Bus>) {
        self.0 = Some(Arc::downgrade(bus));
    }
}

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        if let Some(bus) = self.0.take().and_then(|bus| bus.upgrade()) {
            bus.sending.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use futures_util::FutureExt;
    use tokio::sync::Semaphore;

    /// A backplane whose publishes wait for a permit each, and are recorded.
    #[derive(Debug)]
    struct Gated {
        permits: Arc<Semaphore>,
        sent: Mutex<Vec<Vec<u8>>>,
    }

    impl Backplane for Gated {
        fn publish<'a>(
            &'a self,
            _: &'a str,
            message: &'a [u8],
        ) -> BoxFuture<'a, Result<(), crate::error::BoxError>> {
            Box::pin(async move {
                self.permits.acquire().await.expect("open").forget();
                self.sent.lock().unwrap().push(message.to_vec());
                Ok(())
            })
        }

        fn subscribe(&self, _: &str) -> BoxStream<'static, Delivery> {
            Box::pin(futures_util::stream::pending())
        }
    }

    fn bus() -> (Arc<Bus>, Arc<Gated>) {
        let backplane = Arc::new(Gated {
            permits: Arc::new(Semaphore::new(0)),
            sent: Mutex::default(),
        });
        let bus = Bus::new(backplane.clone(), "c".into(), Duration::from_secs(60));
        (Arc::new(bus), backplane)
    }

    #[test]
    fn a_message_of_a_newer_version_clears_l1_and_foreign_bytes_do_nothing() {
        let (bus, _) = bus();
        let mut newer = Message::Key("k".into()).encode(7);
        newer[2] += 1;
        assert_eq!(bus.receive(&newer), Some(Message::All));
        let mut unknown_kind = Message::Key("k".into()).encode(7);
        unknown_kind[3] = 200;
        assert_eq!(bus.receive(&unknown_kind), Some(Message::All));
        assert_eq!(bus.receive(b"hello"), None);
        let key = Message::Key("k".into());
        assert_eq!(bus.receive(&key.encode(7)), Some(key.clone()));
        assert_eq!(bus.receive(&key.encode(bus.origin)), None, "its own");
    }

    #[tokio::test]
    async fn a_message_folded_into_everything_while_it_is_sent_is_sent_again() {
        let (bus, gated) = bus();
        bus.keep(Message::All);
        let mut sending = Box::pin(bus.send_unsent());
        assert!((&mut sending).now_or_never().is_none(), "the publish waits");
        bus.keep(Message::Key("k".into())); // folded into a new "everything"
        gated.permits.add_permits(1);
        assert!(sending.await, "the publish went through");
        assert!(bus.has_unsent(), "the new 'everything' is still to be sent");
        gated.permits.add_permits(1);
        assert!(bus.send_unsent().await);
        assert!(!bus.has_unsent());
        assert_eq!(gated.sent.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn messages_kept_while_a_batch_is_sent_are_not_a_failure() {
        let (bus, gated) = bus();
        bus.keep(Message::Key("a".into()));
        let mut sending = Box::pin(bus.send_unsent());
        assert!((&mut sending).now_or_never().is_none());
        bus.keep(Message::Key("b".into()));
        gated.permits.add_permits(1);
        assert!(sending.await, "every publish tried went through");
        assert!(bus.failed_at.lock().unwrap().is_none(), "nothing failed");
        assert!(bus.has_unsent(), "b is left for the next send");
    }
}
