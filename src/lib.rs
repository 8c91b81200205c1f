//! `tiered`: a three-tier async cache for services.
//!
//! A [`TieredCache`] puts an in-process L1 ([moka]) and an optional shared L2 (any
//! [`RemoteStore`]; Redis through `RedisStore`, behind a circuit breaker) in front of
//! a [`Loader`] (the L3: Postgres through `PgLoader`, or any async function), with one flight per
//! key: however many callers miss the same key at once, it is loaded once and all of
//! them get the result, value or error. A loader's `None` is remembered for a short
//! TTL (negative caching); errors are never cached. An invalidation that races a
//! load in flight wins: the load's (old) value is not written back.
//!
//! ```
//! use tiered::{BoxError, TieredCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tiered::BoxError> {
//! let cache = TieredCache::<String, u64>::builder("lengths")
//!     .loader_fn(|key: String| async move { Ok::<_, BoxError>(Some(key.len() as u64)) })
//!     .build()?;
//! assert_eq!(cache.get("hello").await?, Some(5));
//! cache.invalidate("hello").await;
//! # Ok(()) }
//! ```
//!
//! See the README for all three tiers, and `docs/` for the design and benchmarks.
//!
//! # Features
//! - `redis` (default): `RedisStore`, Redis standalone or Cluster as L2.
//! - `macros` (default): the `#[cached_tier]` attribute.
//! - `postgres`: `PgLoader`, on deadpool-postgres.
//! - `tls`: `rediss://` URLs (rustls; the application installs the crypto
//!   provider, `tiered` never does). `tls-ring`: with ring enabled.
//! - `metrics`: `MetricsObserver`, reporting to the `metrics` facade.
//! - `encryption`: `Encryption`, AES-256-GCM at rest for L2 values.
//! - `uuid`: `CacheKey` for `uuid::Uuid`.
//! - `testing`: `MemoryStore` and `MemoryBus`, an in-memory L2 and bus with
//!   Redis's semantics and fault injection, to run several instances of a cache
//!   in one test process with no server.
//!
//! [moka]: https://docs.rs/moka

// On docs.rs (all features): each item says which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]

// The layers, top to bottom; a module imports only from layers below its own
// (scripts/check-layers checks it; docs/DESIGN.md draws it).
//
// facade
#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
mod builder;
mod cache;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
// engine
mod engine;
// tiers
mod bus;
mod local;
mod remote;
// adapters (and the ports they implement: remote/store.rs, bus/backplane.rs, source.rs)
#[cfg(feature = "testing")]
mod memory;
#[cfg(feature = "redis")]
mod redis_store;
mod source;
// mechanisms
mod backoff;
mod breaker;
mod codec;
mod fence;
mod tags;
// values
mod entry;
mod observe;
mod policy;
// vocabulary
mod clock;
mod error;
mod key;
mod namespace;
mod pattern;

pub use builder::TieredCacheBuilder;

/// The settings a cache has unless its builder says otherwise.
pub mod defaults {
    pub use crate::builder::{
        DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES, DEFAULT_BREAKER_PROBE_DELAY,
        DEFAULT_JITTER, DEFAULT_L1_MAX_ENTRIES, DEFAULT_L1_TTL, DEFAULT_L2_FILL_WINDOW,
        DEFAULT_L2_TIMEOUT, DEFAULT_L2_TTL, DEFAULT_NEGATIVE_TTL,
    };
    pub use crate::codec::DEFAULT_L2_MAX_VALUE_BYTES;
    pub use crate::policy::{
        DEFAULT_EARLY_REFRESH_BETA, DEFAULT_FAIL_SAFE_THROTTLE, DEFAULT_LEASE_TTL,
    };
    pub use crate::source::DEFAULT_LOAD_MANY_CONCURRENCY;
}
pub use bus::{Backplane, Delivery};
pub use cache::{Peeked, TieredCache, Warmed, WithOptions};
pub use clock::{Clock, ManualClock};
pub use codec::Codec;
#[cfg(feature = "encryption")]
pub use codec::Encryption;
pub use error::{BoxError, ConfigError, DecodeError, Error, SharedError};
pub use key::{CacheKey, CacheValue};
#[cfg(feature = "testing")]
pub use memory::{MemoryBus, MemoryStore, StoreOp};
#[cfg(feature = "metrics")]
pub use observe::metrics::MetricsObserver;
pub use observe::{
    BreakerState, BusHealth, Health, L2Error, L2Health, LoadOutcome, Observer, Stats, Tier,
    TierStats, Written,
};
pub use pattern::{escape_glob, Pattern};
pub use policy::{EntryOptions, L1Eviction, Ttl};
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;

/// The `redis` crate this version builds on (for `redis::Client`, given to
/// [`RedisStore::from_client`], without a version of your own to keep in step).
#[cfg(feature = "redis")]
pub use ::redis;

/// The `deadpool-postgres` crate [`PgLoader`] takes a pool of.
#[cfg(feature = "postgres")]
pub use ::deadpool_postgres;

/// The `tokio-postgres` crate [`PgLoader`]'s rows come from.
#[cfg(feature = "postgres")]
pub use ::tokio_postgres;
pub use remote::{RemoteStore, ScanCursor, ScanStep};
#[cfg(feature = "postgres")]
pub use source::postgres::PgLoader;
pub use source::{
    loader_fn, loader_with_context_fn, ContextFnLoader, FnLoader, LoadContext, Loaded, Loader,
};
/// Caches an `async fn` through a [`TieredCache<String, V>`].
///
/// Calls with the same key share one flight: the body runs once, and every caller
/// gets its result. What is cached depends on the return type:
/// `Result<T, E>` caches `Ok(T)` and gives every waiting caller the function's own
/// `E` (which must be `Clone + Send + Sync + 'static`); `Option<T>` caches `Some(T)`
/// (and `None` as absence with `negative = true`); any other `T` is cached as it is.
/// A `Result` behind an alias (`io::Result<T>`) is a compile error: spell out
/// `Result<T, E>` so that errors are never cached.
///
/// Options: `cache = EXPR` (required; a `&TieredCache<String, V>`, a `LazyLock`, or
/// a call returning one), `key = "user:{id}"` (a format string over the arguments;
/// default: the function's path (crate, modules, an inherent method's type) and
/// every argument's `Display` form, escaped),
/// `skip(pool, self)` (arguments left out of the default key; `self` must be
/// skipped or named in `key`), `ttl = "30s"` (`ms`, `s`, `m`, `h`, `d`),
/// `negative = true`, `unless = |v| ...` (values for which it returns `true` are
/// returned but not cached), `tags = ["user:{id}", "users"]` (format strings over
/// the arguments, as `key`; the entry's tags, for
/// [`TieredCache::invalidate_tag`]).
///
/// ```
/// use std::sync::LazyLock;
/// use tiered::{cached_tier, TieredCache};
///
/// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct User { id: u64, name: String }
///
/// #[derive(Debug, Clone)]
/// struct DbError(String);
///
/// static USERS: LazyLock<TieredCache<String, User>> =
///     LazyLock::new(|| TieredCache::builder("users").build().expect("valid settings"));
///
/// struct Db;
///
/// #[cached_tier(cache = USERS, key = "user:{id}", skip(db), ttl = "5m", tags = ["team:{id}"])]
/// async fn user(db: &Db, id: u64) -> Result<User, DbError> {
///     let _ = db; // a query would go here
///     if id == 0 { return Err(DbError("no user 0".into())); }
///     Ok(User { id, name: format!("user {id}") })
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(user(&Db, 7).await.unwrap().name, "user 7");   // runs the body
/// assert_eq!(user(&Db, 7).await.unwrap().name, "user 7");   // from the cache
/// assert!(user(&Db, 0).await.is_err());                     // errors are not cached
/// USERS.invalidate("user:7").await;
/// USERS.invalidate_tag("team:7").await;                     // by tag
/// # }
/// ```
///
/// Every rule, with the compile errors, is in `docs/MACRO.md`.
#[cfg(feature = "macros")]
#[doc(inline)]
pub use tiered_macros::cached_tier;

/// The README's examples, compiled and run as doctests (its first needs
/// `postgres`).
#[cfg(all(doctest, feature = "postgres", feature = "redis", feature = "macros"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The guide's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/GUIDE.md")]
pub struct GuideDoctests;
