//! What a flight starts from ([`Job`], [`Fetched`]) and how it ends
//! ([`Flight`], [`Failure`]), and the one place that turns an ending into a
//! caller's answer (for the cache's methods and the macro runtime alike).

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::refresh::Fallback;
use crate::entry::{Entry, Tags};
use crate::error::{BoxError, Error, SharedError};
use crate::fence::Ticket;
use crate::key::CacheKey;
use crate::policy::Plan;
use crate::remote::L2Read;
use crate::source::{self, DynLoader, Loaded};

/// How one flight ended, as shared with every caller that waited on it.
#[derive(Clone)]
pub(crate) enum Flight<V> {
    Settled(Entry<V>),
    /// What a load returned that is not to be cached (`#[cached_tier]`'s `unless`,
    /// or an absence without `negative`): the answer for every caller of this
    /// flight, cached nowhere.
    Unkept(Option<V>, Option<Arc<Tags>>),
    /// Loaded, but invalidated each time before it could be cached, with nothing
    /// to load again with. Only the caller that ran the flight may take this value
    /// (its call overlapped the invalidation); waiters fly again.
    Superseded(Entry<V>),
    /// The load failed (or passed a timeout) and a stale copy is served instead.
    Stale(Entry<V>),
    Failed(Failure),
}

/// Why a load failed.
#[derive(Clone)]
pub(crate) enum Failure {
    Load(SharedError),
    Panicked(String),
    /// Past the hard timeout.
    TimedOut(Duration),
    /// The error of a `#[cached_tier]` function, returned as it is to its callers.
    Foreign {
        error: Arc<dyn Any + Send + Sync>,
        type_name: &'static str,
    },
}

/// A caller's answer from a flight's ending.
pub(crate) enum Answer<'a, V> {
    /// The value (or absence) to return.
    Value(Option<V>),
    /// The value (or absence) a load returned that is not cached: it answers
    /// every caller of the flight as it is.
    Unkept(Option<V>),
    Failed(&'a Failure),
}

impl<V: Clone> Flight<V> {
    /// What a caller of this flight gets.
    pub(crate) fn answer(&self) -> Answer<'_, V> {
        match self {
            Flight::Settled(entry) | Flight::Superseded(entry) | Flight::Stale(entry) => {
                Answer::Value(entry.value.clone())
            }
            Flight::Unkept(value, _) => Answer::Unkept(value.clone()),
            Flight::Failed(failure) => Answer::Failed(failure),
        }
    }

    /// The tags of the value this flight ended with, if any.
    pub(crate) fn tags(&self) -> Option<&Tags> {
        match self {
            Flight::Settled(entry) | Flight::Superseded(entry) | Flight::Stale(entry) => {
                entry.tags.as_deref()
            }
            Flight::Unkept(_, tags) => tags.as_deref(),
            Flight::Failed(_) => None,
        }
    }

    /// A caller's result: the value, or the failure as an [`Error`].
    pub(crate) fn to_result<K: CacheKey>(&self, key: &K) -> Result<Option<V>, Error> {
        match self.answer() {
            Answer::Value(value) | Answer::Unkept(value) => Ok(value),
            Answer::Failed(failure) => Err(failure.to_error(key)),
        }
    }
}

impl Failure {
    /// The failure as a caller of `get` sees it.
    pub(crate) fn to_error<K: CacheKey>(&self, key: &K) -> Error {
        let key = key.to_key_string();
        match self {
            Failure::TimedOut(after) => Error::LoadTimedOut { key, after: *after },
            Failure::Load(source) => Error::Load {
                key,
                source: Arc::clone(source),
            },
            Failure::Panicked(message) => Error::LoaderPanicked {
                key,
                message: message.clone(),
            },
            Failure::Foreign { type_name, .. } => Error::Load {
                key,
                source: Arc::new(ForeignError(type_name)),
            },
        }
    }
}

/// A loader's error, shared by every caller of its flight.
pub(crate) fn shared(error: BoxError) -> Failure {
    Failure::Load(Arc::from(error))
}

/// What a flight starts from, beyond its key and its own load.
pub(crate) struct Job<K, V> {
    /// The L2 read done ahead (by `get_many`).
    pub(crate) prepared: Option<Prepared<V>>,
    /// The load is one of its own, to time and count (false: a share of a batch
    /// that is counted once, by `get_many`).
    pub(crate) own_load: bool,
    /// A stale copy to serve if the load fails.
    pub(crate) fallback: Option<Fallback<V>>,
    /// A background refresh of an entry fresh until this instant: an L2 entry is
    /// taken instead of loading only if it is newer.
    pub(crate) refresh_after: Option<u64>,
    /// Whether the hard timeout applies (not to `#[cached_tier]` bodies, whose
    /// callers get their function's own error type).
    pub(crate) time_limit: bool,
    /// The loader of this flight and of the refreshes it starts, instead of
    /// the configured one (`get_or_load`'s).
    pub(crate) loader: Option<Arc<dyn DynLoader<K, V>>>,
    /// The tag clock read with the ticket of `prepared`.
    pub(crate) born: Option<u64>,
    /// The call's options over the cache's settings (`None`: the cache's).
    pub(crate) plan: Option<Arc<Plan>>,
    /// The span of the read (or refresh) this flight answers: where the
    /// flight records the tier it reached, and its spans' parent.
    pub(crate) span: tracing::Span,
}

impl<K, V> Default for Job<K, V> {
    fn default() -> Self {
        Job {
            prepared: None,
            own_load: true,
            fallback: None,
            refresh_after: None,
            time_limit: true,
            loader: None,
            born: None,
            plan: None,
            span: tracing::Span::none(),
        }
    }
}

/// A flight's L2 read done ahead (by `get_many`, in one round trip), with the
/// ticket taken before it.
pub(crate) type Prepared<V> = (Ticket, L2Read<V>);

/// What a flight's first load produced.
pub(crate) struct Fetched<V> {
    pub(crate) value: Option<V>,
    /// False: hand the value to the waiting callers, but cache nothing.
    pub(crate) keep: bool,
    /// A TTL for this entry in every tier, instead of the configured ones.
    pub(crate) ttl: Option<Duration>,
    /// A TTL for this entry in L1, instead of `ttl` or the configured one.
    pub(crate) l1_ttl: Option<Duration>,
    /// The tags the entry carries.
    pub(crate) tags: Option<Box<[Box<str>]>>,
    /// The tag clock at which the value was read, if earlier than the load's
    /// own start (a "not modified" answer keeps the stale copy's).
    pub(crate) born: Option<u64>,
}

impl<V> Fetched<V> {
    pub(crate) fn cached(value: Option<V>) -> Self {
        Fetched {
            value,
            keep: true,
            ttl: None,
            l1_ttl: None,
            tags: None,
            born: None,
        }
    }
}

impl<V: Clone> Fetched<V> {
    /// What a loader's answer comes to: "not modified" takes `stale`'s value,
    /// its tags (unless the loader set its own) and its birth on the tag clock;
    /// `None` without a stale copy.
    pub(crate) fn from_loaded(loaded: Loaded<V>, stale: Option<&Entry<V>>) -> Option<Self> {
        let (value, tags, born) = match loaded.answer {
            source::Answer::Value(value) => (value, loaded.tags, None),
            source::Answer::NotModified => {
                let stale = stale?;
                let stale_tags = stale.tags.as_deref();
                let tags = loaded.tags.or_else(|| stale_tags.map(|t| t.names.clone()));
                (stale.value.clone(), tags, Some(stale.born))
            }
        };
        Some(Fetched {
            value,
            keep: true,
            ttl: loaded.ttl,
            l1_ttl: loaded.l1_ttl,
            tags,
            born,
        })
    }
}

/// A `#[cached_tier]` function's error as seen by a plain `get` that shared its flight.
#[derive(Debug)]
struct ForeignError(&'static str);

impl fmt::Display for ForeignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the cached function failed with an error of type `{}`",
            self.0
        )
    }
}

impl std::error::Error for ForeignError {}
