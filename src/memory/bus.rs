//! [`MemoryBus`]: a [`Backplane`] in the process's memory, with Redis pub/sub's
//! delivery rules (fire and forget: what is published while a subscriber is
//! disconnected is lost to it) and faults on command.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::bus::backplane::{Backplane, Delivery};
use crate::error::BoxError;

/// A [`Backplane`] in memory: the invalidation bus for tests, with no server.
///
/// Every handle of one bus (clones, and those made by
/// [`connect`](MemoryBus::connect)) publishes to the same subscribers: a message
/// published on a channel reaches every subscription of that channel, the
/// sender's own included (a cache ignores its own messages by their origin), in
/// the order published. A subscription yields [`Delivery::Subscribed`] first (at
/// once, if its handle is connected), then the messages published from then on.
/// (Redis confirms a subscription a round trip later, and what is published
/// before that is lost to it; here nothing published after `subscribe` returns
/// is.)
///
/// # Handles and faults
///
/// Clones are the same handle. [`connect`](MemoryBus::connect) makes another,
/// as another connection to the same server, with faults and counts of its own:
/// give each cache instance its own handle, and cut one off while the others
/// still hear each other.
///
/// ```
/// use futures_util::StreamExt;
/// use tiered::{Backplane, Delivery, MemoryBus};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let a = MemoryBus::new();
/// let b = a.connect();
/// let mut heard = b.subscribe("invalidations");
/// assert_eq!(heard.next().await, Some(Delivery::Subscribed));
///
/// b.disconnect();
/// assert_eq!(heard.next().await, Some(Delivery::Lost));
/// a.publish("invalidations", b"lost").await.unwrap(); // b misses it
/// b.reconnect();
/// assert_eq!(heard.next().await, Some(Delivery::Subscribed));
/// a.publish("invalidations", b"heard").await.unwrap();
/// assert_eq!(heard.next().await, Some(Delivery::Message(b"heard".to_vec())));
/// # }
/// ```
///
/// A subscription ends (yields `None`) once every handle of its bus is dropped,
/// and a dropped subscription is removed from the bus.
#[derive(Clone)]
pub struct MemoryBus {
    hub: Arc<Hub>,
    conn: Arc<ConnId>,
}

/// What every handle of one bus shares.
#[derive(Default)]
struct Hub {
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    /// Channel → its live subscriptions, in the order they were made.
    channels: HashMap<String, Vec<Sub>>,
    /// Every handle's state, by id.
    conns: HashMap<u64, Conn>,
    /// Ids of handles and subscriptions.
    next_id: u64,
    /// Messages still to be lost on their way to every subscriber.
    lose_published: u32,
}

struct Sub {
    id: u64,
    /// The handle it was made on.
    conn: u64,
    tx: UnboundedSender<Delivery>,
}

/// One handle's faults and counts.
#[derive(Default)]
struct Conn {
    down: bool,
    fail_publishes: u32,
    hang_publishes: u32,
    lose_received: u32,
    holding: bool,
    /// Messages held for this handle's subscriptions: (channel, subscription, bytes).
    held: Vec<(String, u64, Vec<u8>)>,
    published: u64,
    delivered: u64,
}

/// A handle's id; the last of its clones and subscriptions to go removes its
/// state from the hub.
struct ConnId {
    id: u64,
    hub: Weak<Hub>,
}

impl Drop for ConnId {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.lock().conns.remove(&self.id);
        }
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HubState {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn conn(&mut self, id: u64) -> &mut Conn {
        self.conns.entry(id).or_default()
    }

    /// Every subscription of handle `conn`.
    fn subs_of(&self, conn: u64) -> impl Iterator<Item = &Sub> {
        self.channels
            .values()
            .flatten()
            .filter(move |sub| sub.conn == conn)
    }

    fn publish(&mut self, from: u64, channel: &str, message: &[u8]) -> Result<(), BoxError> {
        let sender = self.conn(from);
        if sender.down {
            return Err("MemoryBus: publish: disconnected".into());
        }
        if sender.fail_publishes > 0 {
            sender.fail_publishes -= 1;
            return Err("MemoryBus: publish: injected failure".into());
        }
        sender.published += 1;
        if self.lose_published > 0 {
            self.lose_published -= 1;
            return Ok(());
        }
        let Some(subs) = self.channels.get(channel) else {
            return Ok(());
        };
        for sub in subs {
            let to = self.conns.entry(sub.conn).or_default();
            if to.down {
                continue;
            }
            if to.lose_received > 0 {
                to.lose_received -= 1;
            } else if to.holding {
                to.held.push((channel.to_owned(), sub.id, message.to_vec()));
            } else if sub.tx.send(Delivery::Message(message.to_vec())).is_ok() {
                to.delivered += 1;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBus")
            .field("handle", &self.conn.id)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new()
    }
}

impl MemoryBus {
    /// A bus with no subscribers, and its first handle.
    pub fn new() -> Self {
        MemoryBus::handle(Arc::default())
    }

    fn handle(hub: Arc<Hub>) -> Self {
        let id = {
            let mut state = hub.lock();
            let id = state.id();
            state.conns.insert(id, Conn::default());
            id
        };
        let conn = Arc::new(ConnId {
            id,
            hub: Arc::downgrade(&hub),
        });
        MemoryBus { hub, conn }
    }

    /// Another handle to the same bus, with faults and counts of its own
    /// (connected, with none set).
    pub fn connect(&self) -> Self {
        MemoryBus::handle(self.hub.clone())
    }

    fn with_conn<T>(&self, f: impl FnOnce(&mut Conn) -> T) -> T {
        f(self.hub.lock().conn(self.conn.id))
    }

    /// Cuts this handle off: each of its subscriptions yields
    /// [`Delivery::Lost`], then nothing (what is published meanwhile is lost to
    /// them, and so are held messages), and its publishes fail, until
    /// [`reconnect`](MemoryBus::reconnect).
    pub fn disconnect(&self) {
        let mut state = self.hub.lock();
        let conn = state.conn(self.conn.id);
        if conn.down {
            return;
        }
        conn.down = true;
        conn.held.clear();
        for sub in state.subs_of(self.conn.id) {
            let _ = sub.tx.send(Delivery::Lost);
        }
    }

    /// Connects this handle again: each of its subscriptions yields
    /// [`Delivery::Subscribed`], then what is published from now on. Does nothing
    /// if it is connected.
    pub fn reconnect(&self) {
        let mut state = self.hub.lock();
        let conn = state.conn(self.conn.id);
        if !conn.down {
            return;
        }
        conn.down = false;
        for sub in state.subs_of(self.conn.id) {
            let _ = sub.tx.send(Delivery::Subscribed);
        }
    }

    /// Whether this handle is connected.
    pub fn is_connected(&self) -> bool {
        self.with_conn(|conn| !conn.down)
    }

    /// Makes the next `n` publishes through this handle fail (nothing is sent).
    pub fn fail_next_publishes(&self, n: u32) {
        self.with_conn(|conn| conn.fail_publishes = conn.fail_publishes.saturating_add(n));
    }

    /// Makes the next `n` publishes through this handle hang: their futures never
    /// complete (the cache's own timeout gives up on them), and nothing is sent.
    pub fn hang_next_publishes(&self, n: u32) {
        self.with_conn(|conn| conn.hang_publishes = conn.hang_publishes.saturating_add(n));
    }

    /// Makes the next `n` messages published on this bus, through any handle, reach
    /// no subscriber, though their publishes succeed (as messages lost in transit).
    pub fn lose_next_published(&self, n: u32) {
        let mut state = self.hub.lock();
        state.lose_published = state.lose_published.saturating_add(n);
    }

    /// Makes the next `n` messages addressed to this handle's subscriptions get
    /// lost (one per subscription a message is for), while other handles receive
    /// them.
    pub fn lose_next_received(&self, n: u32) {
        self.with_conn(|conn| conn.lose_received = conn.lose_received.saturating_add(n));
    }

    /// Holds the messages for this handle's subscriptions, in order, until
    /// [`release_held`](MemoryBus::release_held) (a slow subscriber).
    pub fn hold_deliveries(&self) {
        self.with_conn(|conn| conn.holding = true);
    }

    /// Delivers the held messages (to the subscriptions still there) and stops
    /// holding. Returns how many were delivered.
    pub fn release_held(&self) -> usize {
        let mut state = self.hub.lock();
        let conn = state.conn(self.conn.id);
        conn.holding = false;
        let held = std::mem::take(&mut conn.held);
        let mut delivered = 0;
        for (channel, id, message) in held {
            let sub = state
                .channels
                .get(&channel)
                .and_then(|subs| subs.iter().find(|sub| sub.id == id));
            if sub.is_some_and(|sub| sub.tx.send(Delivery::Message(message)).is_ok()) {
                delivered += 1;
            }
        }
        state.conn(self.conn.id).delivered += delivered as u64;
        delivered
    }

    /// How many messages are held for this handle.
    pub fn held(&self) -> usize {
        self.with_conn(|conn| conn.held.len())
    }

    /// Brings this handle up (its subscriptions yield
    /// [`Delivery::Subscribed`] if it was down), delivers what it held, and
    /// forgets the faults still to come, this bus's lost messages included.
    pub fn clear_faults(&self) {
        self.reconnect();
        self.release_held();
        let mut state = self.hub.lock();
        state.lose_published = 0;
        let conn = state.conn(self.conn.id);
        conn.fail_publishes = 0;
        conn.hang_publishes = 0;
        conn.lose_received = 0;
    }

    /// How many publishes through this handle succeeded.
    pub fn published(&self) -> u64 {
        self.with_conn(|conn| conn.published)
    }

    /// How many messages this handle's subscriptions were handed.
    pub fn delivered(&self) -> u64 {
        self.with_conn(|conn| conn.delivered)
    }

    /// How many subscriptions of this handle are live (not dropped).
    pub fn subscriptions(&self) -> usize {
        self.hub.lock().subs_of(self.conn.id).count()
    }
}

impl Backplane for MemoryBus {
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        // As a request, it is sent when polled.
        Box::pin(async move {
            let hang = self.with_conn(|conn| {
                let hang = conn.hang_publishes > 0;
                conn.hang_publishes = conn.hang_publishes.saturating_sub(1);
                hang
            });
            if hang {
                return std::future::pending().await;
            }
            self.hub.lock().publish(self.conn.id, channel, message)
        })
    }

    fn subscribe(&self, channel: &str) -> BoxStream<'static, Delivery> {
        let (tx, rx) = unbounded_channel();
        let id = {
            let mut state = self.hub.lock();
            let id = state.id();
            if !state.conn(self.conn.id).down {
                let _ = tx.send(Delivery::Subscribed);
            }
            let sub = Sub {
                id,
                conn: self.conn.id,
                tx,
            };
            state
                .channels
                .entry(channel.to_owned())
                .or_default()
                .push(sub);
            id
        };
        Box::pin(Subscription {
            rx,
            hub: Arc::downgrade(&self.hub),
            channel: channel.to_owned(),
            id,
            conn: self.conn.clone(),
        })
    }
}

/// One subscription's stream. It does not keep the bus alive: once every handle
/// is gone, the senders go with the hub and the stream ends.
struct Subscription {
    rx: UnboundedReceiver<Delivery>,
    hub: Weak<Hub>,
    channel: String,
    id: u64,
    /// Keeps the handle's state (its faults) while the subscription lives.
    conn: Arc<ConnId>,
}

impl Stream for Subscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let mut state = hub.lock();
        if let Some(subs) = state.channels.get_mut(&self.channel) {
            subs.retain(|sub| sub.id != self.id);
            if subs.is_empty() {
                state.channels.remove(&self.channel);
            }
        }
        if let Some(conn) = state.conns.get_mut(&self.conn.id) {
            conn.held.retain(|(_, sub, _)| *sub != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{FutureExt, StreamExt};

    use super::*;

    fn message(bytes: &[u8]) -> Option<Delivery> {
        Some(Delivery::Message(bytes.to_vec()))
    }

    /// What the stream has ready, without waiting.
    fn ready(stream: &mut BoxStream<'static, Delivery>) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Some(Some(delivery)) = stream.next().now_or_never() {
            out.push(delivery);
        }
        out
    }

    fn publish(bus: &MemoryBus, channel: &str, bytes: &[u8]) -> Result<(), BoxError> {
        bus.publish(channel, bytes)
            .now_or_never()
            .expect("completes at once")
    }

    #[test]
    fn every_subscription_of_the_channel_hears_every_message_in_order() {
        let a = MemoryBus::new();
        let b = a.connect();
        let mut own = a.subscribe("c");
        let mut other = b.subscribe("c");
        let mut elsewhere = b.subscribe("d");
        publish(&a, "c", b"1").unwrap();
        publish(&b, "c", b"2").unwrap();
        for stream in [&mut own, &mut other] {
            assert_eq!(
                ready(stream),
                [
                    Delivery::Subscribed,
                    Delivery::Message(b"1".to_vec()),
                    Delivery::Message(b"2".to_vec())
                ]
            );
        }
        assert_eq!(ready(&mut elsewhere), [Delivery::Subscribed]);
        assert_eq!((a.published(), b.published()), (1, 1));
        assert_eq!((a.delivered(), b.delivered()), (2, 2));
    }

    #[test]
    fn a_disconnected_handle_misses_messages_and_resubscribes() {
        let a = MemoryBus::new();
        let b = a.connect();
        let mut heard = b.subscribe("c");
        let mut second = b.subscribe("other");
        assert_eq!(ready(&mut heard), [Delivery::Subscribed]);
        b.disconnect();
        assert!(!b.is_connected());
        let mut late = b.subscribe("c");
        publish(&a, "c", b"lost").unwrap();
        assert!(publish(&b, "c", b"from b").is_err());
        assert_eq!(ready(&mut heard), [Delivery::Lost]);
        assert!(
            ready(&mut late).is_empty(),
            "subscribed while down: nothing yet"
        );
        b.reconnect();
        b.reconnect(); // already connected: nothing more
        publish(&a, "c", b"heard").unwrap();
        for stream in [&mut heard, &mut late] {
            assert_eq!(
                ready(stream),
                [Delivery::Subscribed, Delivery::Message(b"heard".to_vec())]
            );
        }
        assert_eq!(
            ready(&mut second),
            [Delivery::Subscribed, Delivery::Lost, Delivery::Subscribed]
        );
    }

    #[test]
    fn injected_publish_failures_and_losses() {
        let a = MemoryBus::new();
        let b = a.connect();
        let c = a.connect();
        let (mut at_b, mut at_c) = (b.subscribe("ch"), c.subscribe("ch"));
        ready(&mut at_b);
        ready(&mut at_c);

        a.fail_next_publishes(1);
        assert!(publish(&a, "ch", b"1").is_err());
        assert!(publish(&b, "ch", b"2").is_ok(), "only a's publishes fail");

        a.lose_next_published(1);
        publish(&a, "ch", b"3").unwrap();

        c.lose_next_received(1);
        publish(&a, "ch", b"4").unwrap();

        assert_eq!(
            ready(&mut at_b),
            [
                Delivery::Message(b"2".to_vec()),
                Delivery::Message(b"4".to_vec())
            ]
        );
        assert_eq!(ready(&mut at_c), [Delivery::Message(b"2".to_vec())]);
        assert_eq!(a.published(), 2, "the failed one is not counted");
        assert_eq!((b.delivered(), c.delivered()), (2, 1));
    }

    #[test]
    fn held_messages_wait_for_release() {
        let a = MemoryBus::new();
        let b = a.connect();
        let mut heard = b.subscribe("c");
        let dropped = b.subscribe("c");
        ready(&mut heard);
        b.hold_deliveries();
        publish(&a, "c", b"1").unwrap();
        publish(&a, "c", b"2").unwrap();
        assert_eq!(b.held(), 4);
        assert!(ready(&mut heard).is_empty());
        drop(dropped);
        assert_eq!(b.held(), 2, "a dropped subscription's go with it");
        assert_eq!(b.release_held(), 2);
        publish(&a, "c", b"3").unwrap();
        assert_eq!(
            ready(&mut heard),
            [
                Delivery::Message(b"1".to_vec()),
                Delivery::Message(b"2".to_vec()),
                Delivery::Message(b"3".to_vec())
            ]
        );
        assert_eq!(b.delivered(), 3);

        b.hold_deliveries();
        publish(&a, "c", b"4").unwrap();
        b.disconnect();
        b.reconnect();
        assert_eq!(
            b.release_held(),
            0,
            "held messages are lost with the connection"
        );
        assert_eq!(ready(&mut heard), [Delivery::Lost, Delivery::Subscribed]);
    }

    #[test]
    fn clear_faults_restores_a_handle() {
        let a = MemoryBus::new();
        let mut heard = a.subscribe("c");
        a.hold_deliveries();
        publish(&a, "c", b"held").unwrap();
        a.fail_next_publishes(3);
        a.lose_next_received(3);
        a.lose_next_published(3);
        a.clear_faults();
        publish(&a, "c", b"after").unwrap();
        assert_eq!(
            ready(&mut heard),
            [
                Delivery::Subscribed,
                Delivery::Message(b"held".to_vec()),
                Delivery::Message(b"after".to_vec())
            ]
        );
    }

    #[test]
    fn dropped_streams_unsubscribe_and_streams_end_with_the_bus() {
        let bus = MemoryBus::new();
        let other = bus.connect();
        let first = bus.subscribe("c");
        let _second = bus.subscribe("d");
        assert_eq!(bus.subscriptions(), 2);
        drop(first);
        assert_eq!(bus.subscriptions(), 1);
        assert!(
            !bus.hub.lock().channels.contains_key("c"),
            "no empty channel left"
        );

        let mut stream = other.subscribe("c");
        publish(&bus, "c", b"last").unwrap();
        drop((bus, other, _second));
        assert_eq!(
            stream.next().now_or_never(),
            Some(Some(Delivery::Subscribed))
        );
        assert_eq!(stream.next().now_or_never(), Some(message(b"last")));
        assert_eq!(
            stream.next().now_or_never(),
            Some(None),
            "ended, not pending"
        );
        drop(stream);
    }

    #[test]
    fn handle_state_goes_with_its_last_handle_and_subscription() {
        let bus = MemoryBus::new();
        let other = bus.connect();
        let stream = other.subscribe("c");
        let id = other.conn.id;
        drop(other);
        assert!(
            bus.hub.lock().conns.contains_key(&id),
            "its subscription lives"
        );
        drop(stream);
        assert!(!bus.hub.lock().conns.contains_key(&id));
        assert_eq!(bus.hub.lock().conns.len(), 1);
    }
}
