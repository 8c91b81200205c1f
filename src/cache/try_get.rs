//! [`TieredCache::try_get_with`]: cache-aside that gives the caller its own
//! error type back, and the one path behind it and `#[cached_tier]`.

use std::borrow::Borrow;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::Instrument;

use crate::cache::TieredCache;
use crate::engine::{Answer, Failure, Fetched, Job, Lookup};
use crate::key::{CacheKey, CacheValue};
use crate::observe::trace;
use crate::policy::Plan;

/// How a caller's own load is cached: what `try_get_with` and a
/// `#[cached_tier]` function differ in.
pub(crate) struct OwnLoad<'a, U> {
    /// The call's options over the cache's settings (`None`: the cache's).
    pub(crate) plan: Option<&'a Arc<Plan>>,
    /// An absence (found in the cache, or loaded) is an answer, and is cached.
    /// Otherwise an absence found in the cache runs the load (uncached).
    pub(crate) absence_answers: bool,
    /// The caller can return an absence at all (false for a `#[cached_tier]`
    /// function returning `Result<T, E>` or `T`): otherwise an absence
    /// another caller's load answered is not this caller's answer, and its
    /// own load runs.
    pub(crate) absence_possible: bool,
    /// Values for which this returns true are returned but not cached.
    pub(crate) unless: U,
    /// The method, for the read's span.
    pub(crate) op: &'static str,
}

impl<'a, V> OwnLoad<'a, fn(&V) -> bool> {
    /// `try_get_with`'s: absences are answers, every value is kept.
    pub(crate) fn try_get_with(plan: Option<&'a Arc<Plan>>) -> Self {
        OwnLoad {
            plan,
            absence_answers: true,
            absence_possible: true,
            unless: |_| false,
            op: "try_get_with",
        }
    }
}

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// Cache-aside that keeps the caller's error type: the value of `key` from
    /// L1 or L2, or else from `load` (polled only on a miss, and only by one of
    /// the callers asking at once), whose error comes back to every caller that
    /// waited on it as `Arc<E>` (the error is shared, as moka's `try_get_with`
    /// shares it; `E` need not be `Clone`). `Ok(None)` is an absence, which is
    /// cached for the negative TTL. Errors are never cached.
    ///
    /// A caller joins a concurrent read of the same key (of this function or
    /// any other) and takes its value. If that read failed with an error that
    /// is not an `E` (the configured loader's, another call's), or panicked,
    /// this caller runs its own `load` instead, uncached: it only ever gets its
    /// own `E` back. A panic in this caller's own `load` is raised again in
    /// this caller (a panic with the same message).
    ///
    /// Like [`get_with`](Self::get_with), the load runs in this call (it may
    /// borrow from the caller; dropping the call drops it) and has no hard
    /// timeout (there is no `E` to report one with): wrap the call in
    /// `tokio::time::timeout` for that. On a cache without a configured
    /// loader, the entries it writes open no early-refresh window (a later hit
    /// has no `load` to refresh them with); with one, a hit late in such an
    /// entry's life refreshes it with the configured loader.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tiered::TieredCache;
    ///
    /// #[derive(Debug, PartialEq)]
    /// enum DbError {
    ///     Unreachable,
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let users = TieredCache::<String, String>::builder("users").build().unwrap();
    /// let down = users
    ///     .try_get_with("alice", async { Err::<Option<String>, _>(DbError::Unreachable) })
    ///     .await;
    /// assert_eq!(down, Err(Arc::new(DbError::Unreachable))); // the caller's own type
    /// let found = users
    ///     .try_get_with("alice", async { Ok::<_, DbError>(Some("Alice".to_owned())) })
    ///     .await;
    /// assert_eq!(found.unwrap().as_deref(), Some("Alice"));
    /// # }
    /// ```
    pub async fn try_get_with<Q, F, E>(&self, key: &Q, load: F) -> Result<Option<V>, Arc<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Future<Output = Result<Option<V>, E>>,
        E: Send + Sync + 'static,
    {
        self.own_load(key, &OwnLoad::try_get_with(None), load).await
    }

    /// The value of `key` from the cache, or from `body` run as the key's one
    /// flight, with `body`'s own error type: [`try_get_with`](Self::try_get_with)
    /// and the `#[cached_tier]` runtime.
    pub(crate) async fn own_load<Q, E, U, F>(
        &self,
        key: &Q,
        how: &OwnLoad<'_, U>,
        body: F,
    ) -> Result<Option<V>, Arc<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        E: Send + Sync + 'static,
        U: Fn(&V) -> bool,
        F: Future<Output = Result<Option<V>, E>>,
    {
        let core = self.core();
        // A hit late in its entry's life is refreshed with the configured
        // loader, if the cache has one (never with `body`, which belongs to
        // this call), under the call's plan.
        let lookup = core
            .lookup_from(key, crate::engine::Configured, how.plan)
            .await;
        let fallback = match lookup {
            Lookup::Hit(entry) if entry.value.is_some() || how.absence_answers => {
                core.read_hit(how.op, key);
                return Ok(entry.value);
            }
            Lookup::Stale(fallback) => Some(fallback),
            _ => None,
        };
        let key = key.to_owned();
        let span = core.read_span(how.op, &key);
        let slot = Mutex::new(Some(body));
        let take = || slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let first = async {
            let body = take().expect("a flight runs its body once");
            match body.await {
                Ok(value) => {
                    let keep = match &value {
                        Some(v) => !(how.unless)(v),
                        None => how.absence_answers,
                    };
                    Ok(Fetched {
                        keep,
                        ..Fetched::cached(value)
                    })
                }
                Err(error) => Err(Failure::Foreign {
                    error: Arc::new(error),
                    type_name: std::any::type_name::<E>(),
                }),
            }
        };
        // The body's own error type comes back to callers: no hard timeout.
        let job = Job {
            fallback,
            time_limit: false,
            plan: how.plan.cloned(),
            span: span.clone(),
            ..Job::default()
        };
        let flight = core
            .fly_raw(&key, Some(first), job)
            .instrument(span.clone());
        let outcome = Box::pin(flight).await;
        let ran = slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        // `answered`: a run of a body said so (its value, or its absence),
        // which every caller of the flight takes.
        let (shared, answered) = match outcome {
            Ok(entry) => (Some(entry.value), false),
            Err(flight) => match flight.answer() {
                Answer::Value(value) => (Some(value), false),
                Answer::Unkept(value) => (Some(value), true),
                Answer::Failed(Failure::Foreign { error, .. }) => {
                    match Arc::clone(error).downcast::<E>() {
                        Ok(error) => {
                            trace::failed(&span, "load");
                            return Err(error);
                        }
                        Err(_) => (None, false),
                    }
                }
                // This caller's own body panicked: the panic is its own.
                Answer::Failed(Failure::Panicked(message)) if ran => {
                    panic!("the cached function panicked: {message}")
                }
                Answer::Failed(_) => (None, false),
            },
        };
        match (shared, take()) {
            // The flight gave nothing this caller can return (another
            // caller's failure, of another type; an absence cached by another
            // writer that this caller does not take) and this caller's body
            // has not run: run it, uncached.
            (None, Some(body)) => {
                trace::tier(&span, "loader", false);
                body.instrument(span).await.map_err(Arc::new)
            }
            (Some(None), Some(body))
                if !how.absence_possible || (!how.absence_answers && !answered) =>
            {
                trace::tier(&span, "loader", false);
                body.instrument(span).await.map_err(Arc::new)
            }
            (shared, _) => Ok(shared.flatten()),
        }
    }
}
