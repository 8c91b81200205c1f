//! [`Backplane`] on Redis pub/sub: one subscriber connection per [`RedisStore`]
//! (shared by its clones and every cache on them), kept up by a task that
//! reconnects with backoff and resubscribes every channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use redis::aio::PubSubSink;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::{RedisStore, Shared};
use crate::backoff::Backoff;
use crate::bus::backplane::{Backplane, Delivery};
use crate::error::BoxError;

/// How long connecting and subscribing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff: first delay and cap (each with up to 50% jitter).
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How often an idle subscription is checked with `PING` (a half-open connection
/// would otherwise lose messages unnoticed).
const HEALTH_CHECK: Duration = Duration::from_secs(5);

/// The subscribers of one store's pub/sub connection.
#[derive(Default)]
pub(super) struct RedisHub {
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    subscribers: HashMap<String, Vec<UnboundedSender<Delivery>>>,
    /// The live connection's sink, to subscribe channels added while it is up.
    sink: Option<PubSubSink>,
    /// Whether the connection task runs.
    running: bool,
}

impl RedisHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backplane for RedisStore {
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            let publish = redis::cmd("PUBLISH").arg(channel).arg(message).clone();
            self.query::<()>(&publish).await
        }
        .boxed()
    }

    fn subscribe(&self, channel: &str) -> BoxStream<'static, Delivery> {
        let (tx, mut rx) = unbounded_channel();
        let (sink, start) = {
            let mut state = self.shared.hub.lock();
            state
                .subscribers
                .entry(channel.to_owned())
                .or_default()
                .push(tx.clone());
            let start = !state.running;
            state.running = true;
            (state.sink.clone(), start)
        };
        if start {
            tokio::spawn(run(Arc::downgrade(&self.shared)));
        } else if let Some(mut sink) = sink {
            let channel = channel.to_owned();
            tokio::spawn(async move {
                let subscribed = tokio::time::timeout(CONNECT_TIMEOUT, sink.subscribe(&channel));
                if let Ok(Ok(())) = subscribed.await {
                    let _ = tx.send(Delivery::Subscribed);
                }
                // Otherwise the connection is failing: the task reconnects and
                // subscribes every channel, this one included.
            });
        }
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }
}

/// Keeps the subscription of `shared`'s channels up while anyone listens.
async fn run(shared: Weak<Shared>) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_CAP, 0.5);
    let mut node = 0usize;
    loop {
        let Some(store) = shared.upgrade() else {
            return;
        };
        let Some(channels) = live_channels(&store) else {
            return;
        };
        let client = store.pubsub[node % store.pubsub.len()].clone();
        match connect(&client, &channels).await {
            Ok((mut sink, stream)) => {
                // Channels registered while connecting saw no sink: subscribe them
                // here (those registered from now on subscribe through the sink).
                let missing: Vec<String> = {
                    let mut state = store.hub.lock();
                    state.sink = Some(sink.clone());
                    let registered = state.subscribers.keys();
                    registered
                        .filter(|c| !channels.contains(c))
                        .cloned()
                        .collect()
                };
                if !missing.is_empty() {
                    let subscribe = tokio::time::timeout(CONNECT_TIMEOUT, sink.subscribe(&missing));
                    if !matches!(subscribe.await, Ok(Ok(()))) {
                        store.hub.lock().sink = None;
                        drop(store);
                        backoff.wait().await;
                        continue;
                    }
                }
                backoff.reset();
                for subscriber in store.hub.lock().subscribers.values().flatten() {
                    let _ = subscriber.send(Delivery::Subscribed);
                }
                drop(store);
                let ended = relay(&shared, sink, stream).await;
                let Some(store) = shared.upgrade() else {
                    return;
                };
                store.hub.lock().sink = None;
                if ended == Relay::NoListeners {
                    return;
                }
                tracing::info!("invalidation bus subscription lost: reconnecting");
                for subscriber in store.hub.lock().subscribers.values().flatten() {
                    let _ = subscriber.send(Delivery::Lost);
                }
            }
            Err(error) => {
                tracing::debug!(%error, "invalidation bus: subscribing failed");
                node += 1;
                drop(store);
            }
        }
        backoff.wait().await;
    }
}

/// The channels someone listens on (closed listeners dropped); `None` when there
/// are none left, after which the task ends (the next `subscribe` starts another).
fn live_channels(store: &Shared) -> Option<Vec<String>> {
    let mut state = store.hub.lock();
    state.subscribers.retain(|_, senders| {
        senders.retain(|s| !s.is_closed());
        !senders.is_empty()
    });
    if state.subscribers.is_empty() {
        state.running = false;
        state.sink = None;
        return None;
    }
    Some(state.subscribers.keys().cloned().collect())
}

async fn connect(
    client: &redis::Client,
    channels: &[String],
) -> Result<(PubSubSink, redis::aio::PubSubStream), BoxError> {
    super::tls::ready_for(client)?;
    let connect = async {
        let pubsub = client.get_async_pubsub().await?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(channels).await?;
        Ok::<_, redis::RedisError>((sink, stream))
    };
    Ok(tokio::time::timeout(CONNECT_TIMEOUT, connect).await??)
}

#[derive(Debug, PartialEq, Eq)]
enum Relay {
    Lost,
    NoListeners,
}

/// Hands messages to their channel's listeners until the connection is lost or
/// nobody listens any more.
async fn relay(
    shared: &Weak<Shared>,
    mut sink: PubSubSink,
    mut stream: redis::aio::PubSubStream,
) -> Relay {
    loop {
        match tokio::time::timeout(HEALTH_CHECK, stream.next()).await {
            Ok(Some(message)) => {
                let Some(store) = shared.upgrade() else {
                    return Relay::NoListeners;
                };
                let state = store.hub.lock();
                if let Some(senders) = state.subscribers.get(message.get_channel_name()) {
                    for sender in senders {
                        let _ =
                            sender.send(Delivery::Message(message.get_payload_bytes().to_vec()));
                    }
                }
            }
            Ok(None) => return Relay::Lost,
            Err(_idle) => {
                let Some(store) = shared.upgrade() else {
                    return Relay::NoListeners;
                };
                if live_channels(&store).is_none() {
                    return Relay::NoListeners;
                }
                drop(store);
                let ping = tokio::time::timeout(CONNECT_TIMEOUT, sink.ping::<redis::Value>());
                if !matches!(ping.await, Ok(Ok(_))) {
                    return Relay::Lost;
                }
            }
        }
    }
}
