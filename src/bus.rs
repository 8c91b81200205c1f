//! The invalidation bus: how one instance's `insert` and `invalidate*` reach the L1
//! of every other instance of the same cache.
//!
//! A [`Backplane`] (Redis pub/sub through `RedisStore`, or your own) carries
//! versioned messages on one channel per cache namespace: a key, a pattern, or
//! everything, with the id of the instance that sent them (which ignores its own).
//! A received message goes through the cache's fence like a local invalidation, so
//! it also stops a local load in flight from caching what it read before. When a
//! subscription was lost, messages may have been missed: on every
//! (re)subscription the instance clears its L1 (counted in
//! [`Stats::bus_resubscribes`](crate::Stats::bus_resubscribes)), so no instance
//! serves data older than the outage.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::error::BoxError;

pub(crate) mod listener;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub(crate) use self::redis::RedisHub;

/// A publish/subscribe transport for invalidation messages, apart from the
/// [`RemoteStore`](crate::RemoteStore) so that either can be replaced alone.
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
}

/// An invalidation, as sent between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// One key, in its string form (an invalidation or an overwrite).
    Key(String),
    /// A glob over keys' string forms.
    Pattern(String),
    /// Everything.
    All,
}

const MAGIC: [u8; 2] = *b"TB";
const VERSION: u8 = 1;
/// magic, version, kind, origin.
const HEADER_LEN: usize = 2 + 1 + 1 + 16;

impl Message {
    pub(crate) fn encode(&self, origin: u128) -> Vec<u8> {
        let (kind, text) = match self {
            Message::Key(key) => (0, key.as_str()),
            Message::Pattern(glob) => (1, glob.as_str()),
            Message::All => (2, ""),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + text.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&origin.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// The sender and the message, or `None` for bytes this version does not read.
    pub(crate) fn decode(bytes: &[u8]) -> Option<(u128, Message)> {
        if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC || bytes[2] != VERSION {
            return None;
        }
        let origin = u128::from_le_bytes(bytes[4..HEADER_LEN].try_into().ok()?);
        let text = std::str::from_utf8(&bytes[HEADER_LEN..]).ok()?;
        let message = match bytes[3] {
            0 => Message::Key(text.to_owned()),
            1 => Message::Pattern(text.to_owned()),
            2 if text.is_empty() => Message::All,
            _ => return None,
        };
        Some((origin, message))
    }
}

/// Publishes beyond this many are collapsed into one [`Message::All`].
const MAX_UNSENT: usize = 1000;

/// How long after a failed publish the next change only keeps its message.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One cache's end of the bus.
pub(crate) struct Bus {
    backplane: std::sync::Arc<dyn Backplane>,
    pub(crate) channel: String,
    /// This instance's id, in every message it sends.
    pub(crate) origin: u128,
    pub(crate) timeout: Duration,
    /// Messages whose publish failed, sent again before the next one.
    unsent: Mutex<Vec<Message>>,
    has_unsent: AtomicBool,
    /// When a send last failed (then sends wait [`RETRY_AFTER`]).
    failed_at: Mutex<Option<std::time::Instant>>,
    /// The listener task, started on first use (`None` outside a tokio runtime);
    /// aborted with the cache.
    pub(crate) listener: OnceLock<Option<listener::Handle>>,
    /// Whether the first subscription is up.
    pub(crate) ready: AtomicBool,
    pub(crate) ready_notify: tokio::sync::Notify,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Bus {
    pub(crate) fn new(
        backplane: std::sync::Arc<dyn Backplane>,
        channel: String,
        timeout: Duration,
    ) -> Self {
        Bus {
            backplane,
            channel,
            origin: u128::from(fastrand::u64(..)) << 64 | u128::from(fastrand::u64(..)),
            timeout,
            unsent: Mutex::new(Vec::new()),
            has_unsent: AtomicBool::new(false),
            failed_at: Mutex::new(None),
            listener: OnceLock::new(),
            ready: AtomicBool::new(false),
            ready_notify: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn backplane(&self) -> &dyn Backplane {
        &*self.backplane
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_foreign_bytes_are_ignored() {
        let origin = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
        for message in [
            Message::Key("user:1".into()),
            Message::Key(String::new()),
            Message::Pattern("user:[0-9]*é".into()),
            Message::All,
        ] {
            let bytes = message.encode(origin);
            assert_eq!(Message::decode(&bytes), Some((origin, message)));
        }
        assert_eq!(Message::decode(b""), None);
        assert_eq!(Message::decode(b"TB\x02"), None);
        let mut future = Message::All.encode(origin);
        future[2] = 9;
        assert_eq!(Message::decode(&future), None, "another version");
        let mut kind = Message::All.encode(origin);
        kind[3] = 7;
        assert_eq!(Message::decode(&kind), None);
        let mut bad_utf8 = Message::Key("k".into()).encode(origin);
        bad_utf8.push(0xff);
        assert_eq!(Message::decode(&bad_utf8), None);
    }
}
