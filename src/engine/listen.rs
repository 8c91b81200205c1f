//! The task that applies other instances' invalidations to this one.
//!
//! The task knows the engine only through [`Subscriber`], which [`Core`]
//! implements: it holds it weakly, and ends when the cache is dropped (its
//! handle in the bus also aborts it).

use std::sync::{Arc, Weak};

use std::panic::AssertUnwindSafe;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use crate::bus::{Bus, Delivery, Message};
use crate::engine::Core;
use crate::key::{CacheKey, CacheValue};

/// What the listener needs of a cache.
pub(crate) trait Subscriber: Send + Sync + 'static {
    /// The cache's end of the bus.
    fn bus(&self) -> &Arc<Bus>;
    /// Applies an invalidation another instance sent.
    fn apply(&self, message: Message) -> BoxFuture<'_, ()>;
    /// The subscription is up; `again`: it was up before, and messages may have
    /// been missed since.
    fn subscribed(&self, again: bool) -> BoxFuture<'_, ()>;
    /// Applying a message panicked: what it would have removed is unknown.
    fn apply_failed(&self) -> BoxFuture<'_, ()>;
}

impl<K: CacheKey, V: CacheValue> Subscriber for Core<K, V> {
    fn bus(&self) -> &Arc<Bus> {
        self.bus
            .as_ref()
            .expect("a cache with a listener has a bus")
    }

    fn apply(&self, message: Message) -> BoxFuture<'_, ()> {
        Box::pin(self.apply_remote(message))
    }

    fn subscribed(&self, again: bool) -> BoxFuture<'_, ()> {
        Box::pin(self.clear_l1_after_gap(again))
    }

    fn apply_failed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.clear_l1_after_failed_apply())
    }
}

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// Starts the bus listener on first use. Until its first subscription is up
    /// (and for at most one L2 timeout after it started), readers wait for it: a
    /// flight that began before would be overtaken by the L1 clear that the
    /// subscription brings, and its callers would load again. Writers
    /// (`wait` false) do not: they read nothing, and a write cancelled while it
    /// waited would not have begun its L2 change.
    pub(crate) async fn start_bus(self: &Arc<Self>, wait: bool) {
        let Some(bus) = self.bus.as_ref().filter(|bus| !bus.is_subscribed()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no listener outside a runtime (the next call in one starts it)
        };
        let subscribed = bus.subscribed();
        if bus.is_subscribed() {
            return;
        }
        let weak: Weak<dyn Subscriber> = Arc::downgrade(self) as Weak<dyn Subscriber>;
        bus.start_listener(|| {
            let stream = bus.subscribe();
            runtime.spawn(listen(weak, stream)).abort_handle()
        });
        if let Some(left) = bus.startup_left().filter(|_| wait) {
            let _ = tokio::time::timeout(left, subscribed).await;
        }
    }
}

async fn listen(
    cache: Weak<dyn Subscriber>,
    mut stream: futures_util::stream::BoxStream<'static, Delivery>,
) {
    // A stream that ends hears nothing more: it is lost for good (health
    // says so).
    let _lost = MarkLost(cache.clone());
    while let Some(delivery) = stream.next().await {
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let bus = cache.bus();
        match delivery {
            Delivery::Subscribed => {
                cache.subscribed(bus.is_subscribed()).await;
                bus.mark_subscribed();
                // What was kept goes out now, in the background: the listener
                // goes on applying what arrives.
                bus.keep_sending();
            }
            Delivery::Lost => bus.mark_lost(),
            Delivery::Message(bytes) => {
                let Some(message) = bus.receive(&bytes) else {
                    continue;
                };
                // A panic (in a user's `CacheKey::from_key_str`, say) must not end
                // the listener: this instance would stop hearing invalidations.
                if AssertUnwindSafe(cache.apply(message))
                    .catch_unwind()
                    .await
                    .is_err()
                {
                    cache.apply_failed().await;
                }
            }
        }
    }
}

/// Marks the bus lost when the listener ends (its stream ended, or it was
/// dropped with the cache).
struct MarkLost(Weak<dyn Subscriber>);

impl Drop for MarkLost {
    fn drop(&mut self) {
        if let Some(cache) = self.0.upgrade() {
            cache.bus().mark_lost();
        }
    }
}
