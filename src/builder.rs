//! [`TieredCacheBuilder`]: the one way to build a [`TieredCache`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::breaker::BreakerSettings;
use crate::bus::Backplane;
use crate::cache::TieredCache;
use crate::clock::Clock;
use crate::codec::{fingerprint, Codec, Wire, DEFAULT_L2_MAX_VALUE_BYTES};
use crate::engine::{Core, Settings};
use crate::error::{BoxError, ConfigError};
use crate::key::{CacheKey, CacheValue};
use crate::local::{self, L1Capacity, Weigher};
use crate::namespace::Namespace;
use crate::observe::Observer;
use crate::policy::{Freshness, L1Eviction, Ttl, TtlPolicy, DEFAULT_EARLY_REFRESH_BETA};
use crate::remote::{RemoteParts, RemoteStore};
use crate::source::{loader_fn, DynLoader, Loader};

mod freshness;

/// The default number of L1 entries.
pub const DEFAULT_L1_MAX_ENTRIES: u64 = 10_000;
/// The default TTL of L1 entries.
pub const DEFAULT_L1_TTL: Duration = Ttl::MEDIUM;
/// The default TTL of a remembered absence.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// The default jitter: TTLs are shortened by a random part of up to 10%.
pub const DEFAULT_JITTER: f64 = 0.1;
/// The default TTL of L2 entries.
pub const DEFAULT_L2_TTL: Duration = Ttl::LONG;
/// The default time limit of every L2 call.
pub const DEFAULT_L2_TIMEOUT: Duration = Duration::from_millis(100);
/// The default number of consecutive L2 failures that open the circuit breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// The default cap of the circuit breaker's probe backoff (and, outside a tokio
/// runtime, the time it stays open before a read probes): Redis is probed at
/// least this often while the breaker is open.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(5);
/// The longest `l2_timeout` the builder accepts.
const MAX_L2_TIMEOUT: Duration = Duration::from_secs(60);
/// The default delay of the circuit breaker's first background probe.
pub const DEFAULT_BREAKER_PROBE_DELAY: Duration = Duration::from_millis(500);
/// The default life of a fill reservation: a load slower than this does not fill L2.
pub const DEFAULT_L2_FILL_WINDOW: Duration = Duration::from_secs(30);

enum Capacity {
    Entries(u64),
    Bytes(u64),
}

/// Configures and builds a [`TieredCache`]; made by [`TieredCache::builder`].
#[must_use = "a builder does nothing until .build() is called"]
pub struct TieredCacheBuilder<K, V> {
    name: String,
    capacity: Capacity,
    weigher: Option<Weigher<K, V>>,
    ttl: TtlPolicy,
    loader: Option<Arc<dyn DynLoader<K, V>>>,
    clock: Clock,
    observers: Vec<Arc<dyn Observer>>,
    l2: Option<Result<Arc<dyn RemoteStore>, ConfigError>>,
    bus: Option<Result<Arc<dyn Backplane>, ConfigError>>,
    /// Where the bus came from: a store that brought it (`redis`, `l2_redis`,
    /// `.l2(RedisStore)`), `bus(...)`, or `no_bus()`.
    bus_from: BusFrom,
    /// `None`: the executable's name.
    l2_prefix: Option<String>,
    l2_compress_from: Option<usize>,
    l2_max_value_bytes: usize,
    #[cfg(feature = "encryption")]
    l2_encryption: Option<crate::codec::Encryption>,
    l2_fill_window: Duration,
    l2_timeout: Duration,
    breaker: BreakerSettings,
    /// Whether `l2_probe_delay` was set (else it is kept within the cool-down).
    probe_delay_set: bool,
    codec: Codec,
    schema_version: u32,
    freshness: Freshness,
    lease: Option<Duration>,
    eviction: L1Eviction,
    /// Whether spans record keys.
    trace_keys: bool,
}

impl<K, V> fmt::Debug for TieredCacheBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCacheBuilder")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("has_loader", &self.loader.is_some())
            .finish_non_exhaustive()
    }
}

impl<K: CacheKey, V: CacheValue> TieredCache<K, V> {
    /// Starts building a cache named `name` (1 to 64 characters of
    /// `[A-Za-z0-9_.-]`; it namespaces the cache's shared-tier keys and metrics).
    pub fn builder(name: impl Into<String>) -> TieredCacheBuilder<K, V> {
        TieredCacheBuilder::new(name)
    }
}

impl<K: CacheKey, V: CacheValue> TieredCacheBuilder<K, V> {
    fn new(name: impl Into<String>) -> Self {
        TieredCacheBuilder {
            name: name.into(),
            capacity: Capacity::Entries(DEFAULT_L1_MAX_ENTRIES),
            weigher: None,
            ttl: TtlPolicy {
                l1: DEFAULT_L1_TTL,
                l2: DEFAULT_L2_TTL,
                negative: DEFAULT_NEGATIVE_TTL,
                jitter: DEFAULT_JITTER,
            },
            loader: None,
            clock: Clock::system(),
            observers: Vec::new(),
            l2: None,
            bus: None,
            bus_from: BusFrom::Store,
            l2_prefix: None,
            l2_compress_from: None,
            l2_max_value_bytes: DEFAULT_L2_MAX_VALUE_BYTES,
            #[cfg(feature = "encryption")]
            l2_encryption: None,
            l2_fill_window: DEFAULT_L2_FILL_WINDOW,
            l2_timeout: DEFAULT_L2_TIMEOUT,
            breaker: BreakerSettings {
                failures: DEFAULT_BREAKER_FAILURES,
                cooldown: DEFAULT_BREAKER_COOLDOWN,
                probe_delay: DEFAULT_BREAKER_PROBE_DELAY,
            },
            probe_delay_set: false,
            codec: Codec::default(),
            schema_version: 1,
            freshness: Freshness {
                early_beta: Some(DEFAULT_EARLY_REFRESH_BETA),
                ..Freshness::default()
            },
            lease: None,
            eviction: L1Eviction::default(),
            trace_keys: false,
        }
    }

    /// A standalone Redis server as the L2 tier and the invalidation bus
    /// (`redis://[user:password@]host:port[/db]`). A malformed URL fails
    /// [`build`](Self::build); an unreachable server or wrong credentials are L2
    /// failures (see [`RedisStore`](crate::RedisStore)). To share one connection
    /// between caches, build a `RedisStore` once and use [`redis`](Self::redis).
    #[cfg(feature = "redis")]
    pub fn l2_redis(self, url: &str) -> Self {
        self.redis_store(crate::redis_store::RedisStore::standalone(url))
    }

    /// A Redis Cluster as the L2 tier and the invalidation bus, from the URLs of
    /// some of its nodes.
    #[cfg(feature = "redis")]
    pub fn l2_redis_cluster<S: AsRef<str>>(self, urls: &[S]) -> Self {
        self.redis_store(crate::redis_store::RedisStore::cluster(urls))
    }

    /// `store` (shared with its clones: one connection, one subscription) as the
    /// L2 tier and the invalidation bus.
    #[cfg(feature = "redis")]
    pub fn redis(self, store: crate::redis_store::RedisStore) -> Self {
        self.redis_store(Ok(store))
    }

    #[cfg(feature = "redis")]
    fn redis_store(mut self, store: Result<crate::redis_store::RedisStore, ConfigError>) -> Self {
        if self.bus_from == BusFrom::Store {
            self.bus = Some(store.clone().map(|s| Arc::new(s) as Arc<dyn Backplane>));
        }
        self.l2 = Some(store.map(|s| Arc::new(s) as Arc<dyn RemoteStore>));
        self
    }

    /// Any [`RemoteStore`] as the L2 tier (with no bus unless [`bus`](Self::bus)
    /// sets one). A `RedisStore` is as with `redis(...)`: it brings its bus
    /// (its pub/sub) too, unless [`bus`](Self::bus) or
    /// [`no_bus`](Self::no_bus) said otherwise; another store given after it
    /// takes its bus away with it.
    pub fn l2(mut self, store: impl RemoteStore) -> Self {
        if self.bus_from == BusFrom::Store {
            self.bus = None;
            #[cfg(feature = "redis")]
            if let Some(redis) =
                (&store as &dyn std::any::Any).downcast_ref::<crate::redis_store::RedisStore>()
            {
                self.bus = Some(Ok(Arc::new(redis.clone())));
            }
        }
        self.l2 = Some(Ok(Arc::new(store)));
        self
    }

    /// No invalidation bus, even with a `RedisStore` (for a Redis whose ACLs or
    /// proxy forbid pub/sub): other instances keep their L1 copies until their
    /// L1 TTL, and `invalidate_all` walks the namespace.
    pub fn no_bus(mut self) -> Self {
        self.bus = None;
        self.bus_from = BusFrom::Nowhere;
        self
    }

    /// Any [`Backplane`] as the invalidation bus: `insert` and `invalidate*` on one
    /// instance then reach the L1 of every other. Without a bus, other instances
    /// keep their L1 copies until their L1 TTL.
    pub fn bus(mut self, backplane: impl Backplane) -> Self {
        self.bus = Some(Ok(Arc::new(backplane)));
        self.bus_from = BusFrom::Given;
        self
    }

    /// How long a reader's fill reservation lasts in L2: a load slower than this
    /// does not fill L2 (its value still goes to L1). Default:
    /// [`DEFAULT_L2_FILL_WINDOW`].
    pub fn l2_fill_window(mut self, window: Duration) -> Self {
        self.l2_fill_window = window;
        self
    }

    /// How long loaded values stay in L2. Default: [`DEFAULT_L2_TTL`].
    pub fn l2_ttl(mut self, ttl: Duration) -> Self {
        self.ttl.l2 = ttl;
        self
    }

    /// The namespace of the service that owns this cache, first in every L2 key
    /// (`{prefix}:{name}:{schema version}:{key}`) and in the bus channel: caches of
    /// the same name in services with other prefixes never read, overwrite or
    /// invalidate each other's entries. Up to 128 characters of
    /// `[A-Za-z0-9_.:-]`; `""` for none (`{name}:{schema version}:{key}`).
    /// Default: the executable's file name (so one binary's instances share, and
    /// other binaries are kept apart); set it explicitly when several binaries
    /// (an API and its worker) share a cache, or for keys that outlive a rename.
    pub fn l2_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.l2_prefix = Some(prefix.into());
        self
    }

    /// Records each operation's key (its string form) as the `cache.key`
    /// attribute of its tracing span. Off by default: keys may be personal
    /// data, and a hit's span then costs the key's string form.
    pub fn trace_keys(mut self, on: bool) -> Self {
        self.trace_keys = on;
        self
    }

    /// The time limit of every L2 call (at most 60 s); a call that takes longer
    /// is a failure and the read goes on without L2. Default:
    /// [`DEFAULT_L2_TIMEOUT`].
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.l2_timeout = timeout;
        self
    }

    /// The circuit breaker: open after `failures` consecutive L2 failures (at
    /// least 1); while open, the store is probed in the background (`PING`),
    /// with backoff from the probe delay doubling up to `cooldown`, and the first
    /// success closes it. Defaults: [`DEFAULT_BREAKER_FAILURES`],
    /// [`DEFAULT_BREAKER_COOLDOWN`]. Caches sharing a `RedisStore` share its
    /// breaker, made with the settings of the first cache built on it.
    pub fn l2_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker.failures = failures;
        self.breaker.cooldown = cooldown;
        self
    }

    /// The delay before the breaker's first background probe once it opened
    /// (then the delay doubles, up to the cool-down): how soon reads use Redis
    /// again after it comes back, against how often a dead Redis is probed.
    /// Default: [`DEFAULT_BREAKER_PROBE_DELAY`], or the cool-down if that is
    /// shorter. Longer than the cool-down is a build error.
    pub fn l2_probe_delay(mut self, delay: Duration) -> Self {
        self.breaker.probe_delay = delay;
        self.probe_delay_set = true;
        self
    }

    /// LZ4-compresses L2 payloads of at least `from_bytes` bytes (kept only when
    /// smaller), flagged in each entry's header. Default: off.
    pub fn l2_compression(mut self, from_bytes: usize) -> Self {
        self.l2_compress_from = Some(from_bytes);
        self
    }

    /// The largest value in L2, as encoded by the codec (before compression):
    /// larger values are not written to L2 (they stay in L1, counted in
    /// [`Stats::l2_oversized`](crate::Stats)), and larger entries read from L2
    /// (or decompressing to more) are counted misses. At least 1 KiB. Default:
    /// [`DEFAULT_L2_MAX_VALUE_BYTES`] (16 MiB).
    pub fn l2_max_value_bytes(mut self, max: usize) -> Self {
        self.l2_max_value_bytes = max;
        self
    }

    /// Encrypts L2 values at rest (AES-256-GCM; see [`Encryption`](crate::Encryption)
    /// for key rotation). Entries that do not open, and unencrypted ones, are
    /// counted misses. Default: off.
    #[cfg(feature = "encryption")]
    pub fn l2_encryption(mut self, keys: crate::codec::Encryption) -> Self {
        self.l2_encryption = Some(keys);
        self
    }

    /// The serde format of L2 values. Default: [`Codec::Bincode`].
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The schema version of `V`: bump it when the value type changes shape, so that
    /// entries written by other versions are neither read nor overwritten (it is part
    /// of every L2 key and of the entries' fingerprint). Default: 1.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Bounds L1 to `max` entries. Default: [`DEFAULT_L1_MAX_ENTRIES`]. `0` turns
    /// L1 off (every read goes to L2; concurrent misses still share one flight).
    pub fn l1_max_entries(mut self, max: u64) -> Self {
        self.capacity = Capacity::Entries(max);
        self
    }

    /// L1's eviction policy (default [`L1Eviction::TinyLfu`]); docs/BENCHMARKS.md
    /// ("Hit ratio") compares them with the optimum on several workloads.
    pub fn l1_eviction(mut self, policy: L1Eviction) -> Self {
        self.eviction = policy;
        self
    }

    /// Bounds L1 to about `max` bytes. Each entry weighs its envelope plus its
    /// value's encoded length, or what [`l1_weigher`](Self::l1_weigher) says. A value
    /// heavier than the whole capacity is returned to its caller but not kept.
    pub fn l1_max_bytes(mut self, max: u64) -> Self {
        self.capacity = Capacity::Bytes(max);
        self
    }

    /// Weighs L1 entries with `weigher` (in the unit of
    /// [`l1_max_bytes`](Self::l1_max_bytes)) instead of encoding each value.
    pub fn l1_weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// How long a loaded or inserted value stays in L1. Default: [`DEFAULT_L1_TTL`].
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.ttl.l1 = ttl;
        self
    }

    /// How long a loader's `None` is remembered; `Duration::ZERO` turns negative
    /// caching off. Default: [`DEFAULT_NEGATIVE_TTL`].
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.ttl.negative = ttl;
        self
    }

    /// Shortens each default TTL by a random part of up to `fraction` (in `[0, 1)`),
    /// so that entries loaded together do not expire together. Explicit TTLs of
    /// [`insert_with_ttl`](TieredCache::insert_with_ttl) are kept exact.
    /// Default: [`DEFAULT_JITTER`].
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.ttl.jitter = fraction;
        self
    }

    /// The loader that [`get`](TieredCache::get) and
    /// [`get_many`](TieredCache::get_many) call on a miss. Without one, they only
    /// read the cache tiers.
    pub fn loader(mut self, loader: impl Loader<K, V>) -> Self {
        self.loader = Some(Arc::new(loader));
        self
    }

    /// A loader from an async closure taking the key by value (see [`loader_fn`]).
    pub fn loader_fn<E, F, Fut>(self, f: F) -> Self
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.loader(loader_fn(f))
    }

    /// The clock expiry is measured with. Default: [`Clock::system`]; tests pass a
    /// [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Reports hits, misses, loads and invalidations to `observer`, in addition to
    /// [`stats`](TieredCache::stats) and to the observers given before (each is
    /// called, in the order given; [`metrics`](Self::metrics) is one of them).
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Reports to the `metrics` facade under this cache's name (see
    /// [`MetricsObserver`](crate::MetricsObserver)).
    #[cfg(feature = "metrics")]
    pub fn metrics(self) -> Self {
        let observer = crate::observe::metrics::MetricsObserver::new(&self.name);
        self.observer(observer)
    }

    /// Builds the cache, or says which setting is wrong.
    pub fn build(self) -> Result<TieredCache<K, V>, ConfigError> {
        validate_name(&self.name)?;
        if !(0.0..1.0).contains(&self.ttl.jitter) {
            return Err(ConfigError::new(format!(
                "jitter must be in [0, 1), got {}",
                self.ttl.jitter
            )));
        }
        if self.ttl.l1.is_zero() {
            return Err(ConfigError::new("l1_ttl must be greater than zero"));
        }
        for (setting, ttl) in [
            ("l1_ttl", self.ttl.l1),
            ("l2_ttl", self.ttl.l2),
            ("negative_ttl", self.ttl.negative),
            ("l2_fill_window", self.l2_fill_window),
            ("l2_breaker cool-down", self.breaker.cooldown),
        ] {
            if ttl > Ttl::MAX {
                return Err(ConfigError::new(format!(
                    "{setting} must be at most Ttl::MAX (10 years), got {ttl:?}"
                )));
            }
        }
        freshness::validate(&self.freshness, &self.ttl, self.l2.is_some(), self.lease)?;
        let freshness = self.freshness;
        if self.eviction == L1Eviction::Adaptive && matches!(self.capacity, Capacity::Bytes(_)) {
            return Err(ConfigError::new(
                "L1Eviction::Adaptive needs an entry-bounded L1 (l1_max_entries): its \
                 simulation counts keys, not bytes",
            ));
        }
        let capacity = match self.capacity {
            Capacity::Entries(max) => L1Capacity::Entries(max),
            Capacity::Bytes(max) => L1Capacity::Weight {
                max,
                weigher: self
                    .weigher
                    .unwrap_or_else(local::serialized_size_weigher::<K, V>),
            },
        };
        if self.l2_timeout.is_zero() || self.l2_timeout > MAX_L2_TIMEOUT {
            return Err(ConfigError::new(format!(
                "l2_timeout must be greater than zero and at most {MAX_L2_TIMEOUT:?} (a read \
                 may wait this long for Redis), got {:?}",
                self.l2_timeout
            )));
        }
        if self.l2_max_value_bytes < 1024 {
            return Err(ConfigError::new(format!(
                "l2_max_value_bytes must be at least 1024, got {}",
                self.l2_max_value_bytes
            )));
        }
        if self.l2_fill_window.is_zero() {
            return Err(ConfigError::new("l2_fill_window must be greater than zero"));
        }
        let mut breaker = self.breaker;
        if !self.probe_delay_set {
            breaker.probe_delay = breaker.probe_delay.min(breaker.cooldown);
        }
        if breaker.failures == 0 {
            return Err(ConfigError::new("l2_breaker: failures must be at least 1"));
        }
        if breaker.cooldown.is_zero() {
            return Err(ConfigError::new(
                "l2_breaker: the cool-down must be greater than zero",
            ));
        }
        if breaker.probe_delay.is_zero() || breaker.probe_delay > breaker.cooldown {
            return Err(ConfigError::new(format!(
                "l2_probe_delay must be greater than zero and at most the cool-down \
                 ({:?}), got {:?}",
                breaker.cooldown, breaker.probe_delay
            )));
        }
        let prefix = match self.l2_prefix {
            Some(prefix) => validate_prefix(prefix)?,
            None => executable_prefix(),
        };
        let namespace = Namespace::new(&prefix, &self.name, self.schema_version);
        let bus = match self.bus {
            None => None,
            Some(backplane) => Some((backplane?, namespace.channel(), self.l2_timeout)),
        };
        let remote = match self.l2 {
            None => None,
            Some(store) => Some(RemoteParts {
                store: store?,
                breaker,
                clock: self.clock.clone(),
                timeout: self.l2_timeout,
                reservation_ttl: self.l2_fill_window,
                namespace,
                wire: Wire {
                    codec: self.codec,
                    fingerprint: fingerprint::<V>(self.schema_version),
                    compress_from: self.l2_compress_from,
                    max_value_bytes: self.l2_max_value_bytes,
                    #[cfg(feature = "encryption")]
                    encryption: self.l2_encryption,
                },
            }),
        };
        Ok(TieredCache::from_core(Core::new(Settings {
            trace_keys: self.trace_keys,
            name: self.name,
            capacity,
            eviction: self.eviction,
            ttl: self.ttl,
            loader: self.loader,
            clock: self.clock,
            observers: self.observers,
            remote,
            bus,
            freshness,
            lease: self.lease,
        })))
    }
}

/// Prefixes may hold `:` (`svc:prod`): the name and the schema version after them
/// have none, so a namespace still splits one way only.
fn validate_prefix(prefix: String) -> Result<String, ConfigError> {
    let valid = prefix.len() <= 128
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if valid {
        Ok(prefix)
    } else {
        Err(ConfigError::new(format!(
            "l2_prefix {prefix:?} must be up to 128 characters of [A-Za-z0-9_.:-]"
        )))
    }
}

/// The default prefix: the executable's file name, reduced to `[A-Za-z0-9_.-]`.
fn executable_prefix() -> String {
    let name = std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "tiered".to_owned()
    } else {
        name
    }
}

/// Names become part of every L2 key (`{prefix}{name}:{schema}:{key}`), so they are
/// kept to characters that cannot be confused with the separator or a glob.
fn validate_name(name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "cache name {name:?} must be 1 to 64 characters of [A-Za-z0-9_.-]"
        )))
    }
}

/// Where a builder's bus comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BusFrom {
    /// The L2 store's own (a `RedisStore`'s pub/sub), if it has one.
    Store,
    /// `bus(...)`.
    Given,
    /// `no_bus()`.
    Nowhere,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "a:b", "a*", "sp ace", &"x".repeat(65)] {
            assert!(
                matches!(validate_name(bad), Err(ConfigError { .. })),
                "{bad:?}"
            );
        }
        for good in ["users", "user-profiles.v2", "A_1"] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn bad_settings_are_errors_not_panics() {
        let jitter = TieredCache::<u64, u64>::builder("t").jitter(1.5).build();
        assert!(matches!(jitter, Err(e) if e.message().contains("jitter")));
        let nan = TieredCache::<u64, u64>::builder("t")
            .jitter(f64::NAN)
            .build();
        assert!(nan.is_err());
        let ttl = TieredCache::<u64, u64>::builder("t")
            .l1_ttl(Duration::ZERO)
            .build();
        assert!(matches!(ttl, Err(e) if e.message().contains("l1_ttl")));
    }

    #[test]
    fn prefixes_are_checked_and_default_to_the_executable() {
        for bad in ["a b", "a*", "x?", "[y]", "é", &"p".repeat(129)] {
            assert!(validate_prefix(bad.to_owned()).is_err(), "{bad:?}");
        }
        for good in ["", "svc", "svc:prod", "users-api.v2"] {
            assert!(validate_prefix(good.to_owned()).is_ok(), "{good:?}");
        }
        let default = executable_prefix();
        assert!(!default.is_empty());
        assert!(validate_prefix(default).is_ok());
    }

    #[test]
    fn huge_durations_are_errors_not_panics() {
        let build = |f: fn(TieredCacheBuilder<u64, u64>) -> TieredCacheBuilder<u64, u64>| {
            f(TieredCache::builder("t")).build().map(|_| ())
        };
        for bad in [
            build(|b| b.l1_ttl(Duration::MAX)),
            build(|b| b.l2_ttl(Duration::MAX)),
            build(|b| b.negative_ttl(Duration::MAX)),
            build(|b| b.l2_fill_window(Duration::MAX)),
            build(|b| b.l2_breaker(5, Duration::MAX)),
            build(|b| b.l2_timeout(Duration::MAX)),
        ] {
            assert!(matches!(bad, Err(ConfigError { .. })), "{bad:?}");
        }
        assert!(build(|b| b.l2_ttl(Ttl::MAX).l1_ttl(Ttl::MAX)).is_ok());
    }

    #[test]
    fn breaker_settings_are_checked() {
        let build = |f: fn(TieredCacheBuilder<u64, u64>) -> TieredCacheBuilder<u64, u64>| {
            f(TieredCache::builder("t")).build().map(|_| ())
        };
        assert!(build(|b| b.l2_breaker(0, Duration::from_secs(1))).is_err());
        assert!(build(|b| b.l2_breaker(5, Duration::ZERO)).is_err());
        assert!(build(|b| b.l2_probe_delay(Duration::ZERO)).is_err());
        assert!(build(|b| b.l2_probe_delay(Duration::from_secs(60))).is_err());
        // An unset probe delay follows a short cool-down.
        assert!(build(|b| b.l2_breaker(5, Duration::from_millis(100))).is_ok());
        assert!(build(|b| b
            .l2_breaker(5, Duration::from_secs(60))
            .l2_probe_delay(Duration::from_secs(60)))
        .is_ok());
    }
}
