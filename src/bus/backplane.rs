//! The bus's port: [`Backplane`], a publish/subscribe transport for invalidation
//! messages, implemented by the Redis adapter (`redis_store/pubsub.rs`), the in-memory
//! double (`memory/`) and users' own transports.

use std::fmt;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::error::BoxError;

/// A publish/subscribe transport for invalidation messages, apart from the
/// `RemoteStore` so that either can be replaced alone.
pub trait Backplane: Send + Sync + fmt::Debug + 'static {
    /// Publishes `message` on `channel` to every subscriber (of every process).
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// What is published on `channel` from now on, until the stream is dropped.
    /// The backplane keeps the subscription up by itself (reconnecting with
    /// backoff) and yields [`Delivery::Subscribed`] each time it is established,
    /// since messages published while it was down are lost.
    /// It should yield [`Delivery::Lost`] when the subscription drops (what
    /// [`TieredCache::health`](crate::TieredCache::health) reports). A stream
    /// that ends is taken as lost for good.
    fn subscribe(&self, channel: &str) -> BoxStream<'static, Delivery>;
}

/// What a [`Backplane`] subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// The subscription is (again) established; anything published before may
    /// have been missed.
    Subscribed,
    /// A message.
    Message(Vec<u8>),
    /// The subscription was lost (it is being re-established: a
    /// [`Subscribed`](Self::Subscribed) follows when it is back). What is
    /// published meanwhile is missed.
    Lost,
}
