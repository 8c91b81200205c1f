//! The task that applies other instances' invalidations to this one.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use futures_util::StreamExt;

use crate::bus::{Delivery, Message};
use crate::cache::{CacheValue, Inner, TieredCache};
use crate::key::CacheKey;

/// Aborts the listener task when the cache is dropped.
#[derive(Debug)]
pub(crate) struct Handle(tokio::task::AbortHandle);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// Starts the bus listener on first use. The caller that starts it waits (up
    /// to the L2 timeout, once) for the subscription, so that what it reads is not
    /// cleared again when the subscription comes up; nobody else ever waits.
    pub(crate) async fn start_bus(&self) {
        let Some(bus) = &self.inner.bus else {
            return;
        };
        if bus.listener.get().is_some() {
            return;
        }
        let subscribed = bus.ready_notify.notified();
        let mut started = false;
        let listening = bus.listener.get_or_init(|| {
            started = true;
            start(self)
        });
        if started && listening.is_some() && !bus.ready.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(bus.timeout, subscribed).await;
        }
    }
}

/// Starts listening for `cache` (in the current tokio runtime).
fn start<K: CacheKey, V: CacheValue>(cache: &TieredCache<K, V>) -> Option<Handle> {
    let bus = cache.inner.bus.as_ref()?;
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let stream = bus.backplane().subscribe(&bus.channel);
    let weak = std::sync::Arc::downgrade(&cache.inner);
    let task = runtime.spawn(listen(weak, stream));
    Some(Handle(task.abort_handle()))
}

async fn listen<K: CacheKey, V: CacheValue>(
    cache: Weak<Inner<K, V>>,
    mut stream: futures_util::stream::BoxStream<'static, Delivery>,
) {
    while let Some(delivery) = stream.next().await {
        let Some(inner) = cache.upgrade() else {
            return;
        };
        let cache = TieredCache::from_arc(inner);
        let Some(bus) = cache.inner.bus.as_ref() else {
            return;
        };
        match delivery {
            Delivery::Subscribed => {
                let first = !bus.ready.load(Ordering::Acquire);
                cache.clear_l1_after_gap(!first).await;
                bus.ready.store(true, Ordering::Release);
                bus.ready_notify.notify_waiters();
                bus.send_unsent().await;
            }
            Delivery::Message(bytes) => match Message::decode(&bytes) {
                Some((origin, _)) if origin == bus.origin => {}
                Some((_, message)) => cache.apply_remote(message).await,
                None => tracing::debug!(channel = %bus.channel, "unreadable bus message ignored"),
            },
        }
    }
}
