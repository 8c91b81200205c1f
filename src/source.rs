//! The source of truth: the [`Loader`] trait, and loaders from closures.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};

use crate::error::BoxError;
use crate::key::CacheKey;

#[cfg(feature = "postgres")]
pub(crate) mod postgres;

/// How many keys the default [`Loader::load_many`] loads at once.
pub const DEFAULT_LOAD_MANY_CONCURRENCY: usize = 16;

/// Loads values the cache does not have: the L3 tier.
///
/// `Ok(None)` means the key has no value; the cache remembers that for its negative
/// TTL. An `Err` reaches every caller waiting on the load and is never cached.
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

/// [`Loader`] with boxed futures, so the cache can hold any loader behind one type.
pub(crate) trait DynLoader<K, V>: Send + Sync {
    fn load<'a>(&'a self, key: &'a K) -> BoxFuture<'a, Result<Option<V>, BoxError>>;
    fn load_many<'a>(&'a self, keys: &'a [K]) -> BoxFuture<'a, Result<HashMap<K, V>, BoxError>>;
}

impl<K: CacheKey, V: Send + 'static, L: Loader<K, V>> DynLoader<K, V> for L {
    fn load<'a>(&'a self, key: &'a K) -> BoxFuture<'a, Result<Option<V>, BoxError>> {
        Box::pin(Loader::load(self, key))
    }

    fn load_many<'a>(&'a self, keys: &'a [K]) -> BoxFuture<'a, Result<HashMap<K, V>, BoxError>> {
        Box::pin(Loader::load_many(self, keys))
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
