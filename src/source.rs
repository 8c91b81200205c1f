//! The source of truth: the [`Loader`] trait, and loaders from closures.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};

use crate::error::BoxError;
use crate::key::CacheKey;

mod context;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;

pub(crate) use self::context::Answer;
pub use self::context::{LoadContext, Loaded};

/// How many keys the default [`Loader::load_many`] loads at once.
pub const DEFAULT_LOAD_MANY_CONCURRENCY: usize = 16;

/// Loads values the cache does not have: the L3 tier.
///
/// `Ok(None)` means the key has no value; the cache remembers that for its negative
/// TTL. An `Err` reaches every caller waiting on the load and is never cached.
///
/// The cache loads one key through [`load_with`](Loader::load_with), whose
/// default calls [`load`](Loader::load): override it to see the stale copy a
/// load replaces, to set the entry's TTLs from the value, or to answer "not
/// modified" (see [`LoadContext`] and [`Loaded`]).
///
/// ```
/// use std::collections::HashMap;
/// use tiered::{BoxError, Loader};
///
/// struct Squares;
///
/// impl Loader<u64, u64> for Squares {
///     async fn load(&self, key: &u64) -> Result<Option<u64>, BoxError> {
///         Ok(key.checked_mul(*key))
///     }
/// }
/// ```
pub trait Loader<K: CacheKey, V: Send + 'static>: Send + Sync + 'static {
    /// Loads one key.
    fn load(&self, key: &K) -> impl Future<Output = Result<Option<V>, BoxError>> + Send;

    /// Loads one key, told what the cache knows of it (`context`), answering
    /// with TTLs of its own or "not modified" if it wants to. The default
    /// ignores the context and calls [`load`](Loader::load).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tiered::{BoxError, LoadContext, Loaded, Loader};
    ///
    /// #[derive(Clone)]
    /// struct Doc {
    ///     etag: u64,
    ///     body: Arc<str>,
    /// }
    ///
    /// struct Docs;
    ///
    /// impl Docs {
    ///     /// The source's current version of a document (a cheap query).
    ///     async fn etag(&self, id: u64) -> Result<u64, BoxError> {
    ///         Ok(id)
    ///     }
    /// }
    ///
    /// impl Loader<u64, Doc> for Docs {
    ///     async fn load(&self, id: &u64) -> Result<Option<Doc>, BoxError> {
    ///         let etag = self.etag(*id).await?;
    ///         Ok(Some(Doc { etag, body: format!("document {id}").into() }))
    ///     }
    ///
    ///     async fn load_with(&self, id: &u64, context: LoadContext<Doc>) -> Result<Loaded<Doc>, BoxError> {
    ///         if let Some(stale) = context.stale_value() {
    ///             if self.etag(*id).await? == stale.etag {
    ///                 return Ok(Loaded::not_modified()); // the body is not fetched again
    ///             }
    ///         }
    ///         Ok(self.load(id).await?.into())
    ///     }
    /// }
    /// ```
    fn load_with(
        &self,
        key: &K,
        context: LoadContext<V>,
    ) -> impl Future<Output = Result<Loaded<V>, BoxError>> + Send {
        drop(context);
        self.load(key).map(|loaded| loaded.map(Loaded::from))
    }

    /// Loads several keys as [`load_many`](Loader::load_many) does, each
    /// answered with a [`Loaded`] (its TTLs, its tags; a key missing from the
    /// map, or answered [`Loaded::absent`], has no value, and only the latter
    /// carries tags to its cached absence): what
    /// [`get_many`](crate::TieredCache::get_many) and
    /// [`warm`](crate::TieredCache::warm) call. The default wraps
    /// `load_many`'s values (configured TTLs, no tags): a loader whose
    /// [`load_with`](Loader::load_with) sets TTLs or tags should override this
    /// too (the loader of [`loader_with_context_fn`] does, with one call per
    /// key), or its batch loads carry none. "Not modified" has no meaning here
    /// (a batch sees no stale copies) and fails the batch.
    fn load_many_with(
        &self,
        keys: &[K],
    ) -> impl Future<Output = Result<HashMap<K, Loaded<V>>, BoxError>> + Send {
        self.load_many(keys).map(|loaded| loaded.map(loaded_values))
    }

    /// Loads several keys; keys missing from the map have no value. The default
    /// calls [`load`](Loader::load) for up to [`DEFAULT_LOAD_MANY_CONCURRENCY`] keys
    /// at a time; override it when the source can answer a batch in one request.
    fn load_many(
        &self,
        keys: &[K],
    ) -> impl Future<Output = Result<HashMap<K, V>, BoxError>> + Send {
        futures_util::stream::iter(keys)
            .map(|key| self.load(key).map(move |loaded| loaded.map(|v| (key, v))))
            .buffer_unordered(DEFAULT_LOAD_MANY_CONCURRENCY)
            .try_filter_map(|(key, value)| async move { Ok(value.map(|v| (key.clone(), v))) })
            .try_collect()
    }
}

/// A [`Loader`] made from an async closure that takes the key by value.
///
/// ```
/// use tiered::{loader_fn, BoxError};
///
/// let loader = loader_fn(|id: u64| async move { Ok::<_, BoxError>(Some(format!("user {id}"))) });
/// # let _ = loader;
/// ```
pub fn loader_fn<K, V, E, F, Fut>(f: F) -> FnLoader<F>
where
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<V>, E>> + Send,
    E: Into<BoxError>,
{
    FnLoader(f)
}

/// The [`Loader`] of [`loader_fn`].
pub struct FnLoader<F>(F);

/// `f` as a loader, its bounds checked where it is used.
pub(crate) fn loader_fn_of<F>(f: F) -> FnLoader<F> {
    FnLoader(f)
}

impl<F> fmt::Debug for FnLoader<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnLoader")
    }
}

impl<K, V, E, F, Fut> Loader<K, V> for FnLoader<F>
where
    K: CacheKey,
    V: Send + 'static,
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<V>, E>> + Send,
    E: Into<BoxError>,
{
    fn load(&self, key: &K) -> impl Future<Output = Result<Option<V>, BoxError>> + Send {
        (self.0)(key.clone()).map(|loaded| loaded.map_err(Into::into))
    }
}

/// A [`Loader`] made from an async closure that takes the key by value and the
/// [`LoadContext`], and answers with a [`Loaded`] (TTLs of its own, "not
/// modified").
///
/// ```
/// use std::time::Duration;
/// use tiered::{loader_with_context_fn, BoxError, LoadContext, Loaded};
///
/// // Adaptive TTL: an order that is still open changes often; a shipped one
/// // never does.
/// let orders = loader_with_context_fn(|id: u64, _context: LoadContext<(u64, bool)>| async move {
///     let (total, shipped) = (id * 10, id % 2 == 0); // the query
///     let ttl = if shipped { Duration::from_secs(3600) } else { Duration::from_secs(10) };
///     Ok::<_, BoxError>(Loaded::value((total, shipped)).with_ttl(ttl))
/// });
/// # let _ = orders;
/// ```
pub fn loader_with_context_fn<K, V, E, F, Fut>(f: F) -> ContextFnLoader<F>
where
    F: Fn(K, LoadContext<V>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Loaded<V>, E>> + Send,
    E: Into<BoxError>,
{
    ContextFnLoader(f)
}

/// The [`Loader`] of [`loader_with_context_fn`].
pub struct ContextFnLoader<F>(F);

impl<F> fmt::Debug for ContextFnLoader<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContextFnLoader")
    }
}

impl<K, V, E, F, Fut> Loader<K, V> for ContextFnLoader<F>
where
    K: CacheKey,
    V: Send + 'static,
    F: Fn(K, LoadContext<V>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Loaded<V>, E>> + Send,
    E: Into<BoxError>,
{
    /// A load with an empty context; "not modified" is then an error.
    async fn load(&self, key: &K) -> Result<Option<V>, BoxError> {
        let loaded = (self.0)(key.clone(), LoadContext::empty())
            .await
            .map_err(Into::into)?;
        match loaded.answer {
            Answer::Value(value) => Ok(value),
            Answer::NotModified => Err(NOT_MODIFIED_WITHOUT_STALE.into()),
        }
    }

    fn load_with(
        &self,
        key: &K,
        context: LoadContext<V>,
    ) -> impl Future<Output = Result<Loaded<V>, BoxError>> + Send {
        (self.0)(key.clone(), context).map(|loaded| loaded.map_err(Into::into))
    }

    /// One call per key (up to [`DEFAULT_LOAD_MANY_CONCURRENCY`] at a time),
    /// with an empty context: the entries keep their TTLs and tags.
    fn load_many_with(
        &self,
        keys: &[K],
    ) -> impl Future<Output = Result<HashMap<K, Loaded<V>>, BoxError>> + Send {
        futures_util::stream::iter(keys)
            .map(|key| {
                (self.0)(key.clone(), LoadContext::empty()).map(move |loaded| {
                    let loaded = loaded.map_err(Into::into)?;
                    match loaded.answer {
                        // An absence too: it keeps its tags and TTLs.
                        Answer::Value(_) => Ok(Some((key.clone(), loaded))),
                        Answer::NotModified => Err(BoxError::from(NOT_MODIFIED_WITHOUT_STALE)),
                    }
                })
            })
            .buffer_unordered(DEFAULT_LOAD_MANY_CONCURRENCY)
            .try_filter_map(|found| async move { Ok(found) })
            .try_collect()
    }
}

/// A batch's values as [`Loaded`] answers (configured TTLs, no tags).
pub(crate) fn loaded_values<K: CacheKey, V>(values: HashMap<K, V>) -> HashMap<K, Loaded<V>> {
    (values.into_iter())
        .map(|(key, value)| (key, Loaded::value(value)))
        .collect()
}

/// The error of a "not modified" answer to a load with no stale copy.
pub(crate) const NOT_MODIFIED_WITHOUT_STALE: &str =
    "the loader answered \"not modified\" but the cache holds no stale copy of the key";

/// [`Loader`] with boxed futures, so the cache can hold any loader behind one type.
pub(crate) trait DynLoader<K, V>: Send + Sync {
    fn load<'a>(
        &'a self,
        key: &'a K,
        context: LoadContext<V>,
    ) -> BoxFuture<'a, Result<Loaded<V>, BoxError>>;
    fn load_many<'a>(
        &'a self,
        keys: &'a [K],
    ) -> BoxFuture<'a, Result<HashMap<K, Loaded<V>>, BoxError>>;
}

impl<K: CacheKey, V: Send + 'static, L: Loader<K, V>> DynLoader<K, V> for L {
    fn load<'a>(
        &'a self,
        key: &'a K,
        context: LoadContext<V>,
    ) -> BoxFuture<'a, Result<Loaded<V>, BoxError>> {
        Box::pin(Loader::load_with(self, key, context))
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [K],
    ) -> BoxFuture<'a, Result<HashMap<K, Loaded<V>>, BoxError>> {
        Box::pin(Loader::load_many_with(self, keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_load_many_skips_absent_keys_and_keeps_errors() {
        let loader = loader_fn(|k: u32| async move {
            match k {
                13 => Err("unlucky".to_owned()),
                k if k % 2 == 0 => Ok(Some(k * 10)),
                _ => Ok(None),
            }
        });
        let got = Loader::load_many(&loader, &[1, 2, 4])
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(got, HashMap::from([(2, 20), (4, 40)]));
        let err = Loader::load_many(&loader, &[2, 13]).now_or_never().unwrap();
        assert_eq!(err.unwrap_err().to_string(), "unlucky");
    }
}
