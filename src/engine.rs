//! The engine: [`Core`] owns a cache's state (its tiers, fence, flights, report)
//! and runs its reads and writes. The public [`TieredCache`](crate::TieredCache)
//! is a handle to one `Core`.
//!
//! - `lookup.rs`: the L1 read, and what a hit late in its entry's life starts.
//! - `flight.rs` + `flight/`: one flight per missing key: joining it
//!   (`coalesce`), running it (`run`: L2, lease, load, fill, commit), what it
//!   ends with (`outcome`), the fleet-wide lease wait (`lease`).
//! - `batch.rs`: `get_many`, one L2 round trip and one batch load for many keys.
//! - `refresh.rs`: background refreshes and the stale copies flights fall back on.
//! - `write.rs`: inserts and invalidations, here and on the other instances.
//! - `listen.rs`: applying the other instances' invalidations.
//! - `tag_checks.rs`: whether tags and the namespace epoch still hold.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::Handle;

use crate::bus::{Backplane, Bus};
use crate::clock::Clock;
use crate::entry::{Entry, Tags};
use crate::fence::Fence;
use crate::key::{CacheKey, CacheValue};
use crate::local::{L1Capacity, L1};
use crate::observe::{trace, Health, Observer, Report, Stats};
use crate::policy::{Freshness, L1Eviction, Plan, Skip, TtlPolicy};
use crate::remote::{Announce, Remote, RemoteParts};
use crate::source::DynLoader;
use crate::tags::TagBook;

mod batch;
pub(crate) mod flight;
mod listen;
pub(crate) mod lookup;
mod peek;
pub(crate) mod refresh;
mod tag_checks;
mod write;

use self::flight::coalesce::Flights;
pub(crate) use self::flight::outcome::{shared, Answer, Failure, Fetched, Job};
pub(crate) use self::lookup::{Configured, Given, Lookup, Source};

/// Everything a cache is made from, as the builder validated it.
pub(crate) struct Settings<K, V> {
    pub(crate) name: String,
    pub(crate) capacity: L1Capacity<K, V>,
    pub(crate) eviction: L1Eviction,
    pub(crate) ttl: TtlPolicy,
    pub(crate) loader: Option<Arc<dyn DynLoader<K, V>>>,
    pub(crate) clock: Clock,
    pub(crate) observers: Vec<Arc<dyn Observer>>,
    pub(crate) remote: Option<RemoteParts>,
    /// The bus's backplane and channel, and its time limit per publish.
    pub(crate) bus: Option<(Arc<dyn Backplane>, String, Duration)>,
    pub(crate) freshness: Freshness,
    /// The life of a fleet-wide lease, if leases are on.
    pub(crate) lease: Option<Duration>,
    /// Whether spans record keys.
    pub(crate) trace_keys: bool,
}

/// The state of one cache, and the engine that runs it.
pub(crate) struct Core<K, V> {
    name: String,
    l1: L1<K, V>,
    remote: Option<Arc<Remote>>,
    bus: Option<Arc<Bus>>,
    loader: Option<Arc<dyn DynLoader<K, V>>>,
    clock: Clock,
    fence: Arc<Fence>,
    /// What this instance knows of tags' invalidations.
    tags: TagBook,
    /// Held while the tag clock is read (see `sync_tag_clock`).
    syncing: tokio::sync::Mutex<()>,
    report: Arc<Report>,
    flights: Flights<K, V>,
    /// TTLs, early refresh, stale-while-revalidate, fail-safe, loader
    /// timeouts: the plan of calls without options of their own.
    plan: Arc<Plan>,
    lease: Option<Duration>,
    trace_keys: bool,
}

/// Warns, when dropped armed, that a dropped cache's queued changes were not
/// all sent.
struct WarnUnsent(Option<String>);

impl Drop for WarnUnsent {
    fn drop(&mut self) {
        if let Some(cache) = self.0.take() {
            tracing::warn!(%cache, "a dropped cache's queued changes were not all sent");
        }
    }
}

/// How long the last handle's drop goes on sending what was left waiting.
const DROP_FLUSH: Duration = Duration::from_secs(10);

/// The last handle gone with changes still waiting (owed to Redis, or
/// messages unsent): they are sent in the background for up to
/// [`DROP_FLUSH`], if a tokio runtime is there to run that (and lives that
/// long); otherwise they are lost, and a warning says so. `flush` before the
/// end is the sure way.
impl<K, V> Drop for Core<K, V> {
    fn drop(&mut self) {
        let (remote, bus) = (self.remote.clone(), self.bus.clone());
        let waiting = write::waiting_in(remote.as_ref(), bus.as_ref());
        if waiting.is_applied() {
            return;
        }
        let name = std::mem::take(&mut self.name);
        match Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    // Warns unless the flush ran to its end (a runtime that
                    // shuts down cancels it).
                    let mut unsent = WarnUnsent(Some(name));
                    let left = write::flush_parts(remote.as_ref(), bus.as_ref(), DROP_FLUSH).await;
                    if left.is_applied() {
                        unsent.0 = None;
                    }
                });
            }
            Err(_) => {
                tracing::warn!(cache = %name, ?waiting, "a cache dropped outside a tokio runtime with changes queued: they are lost (call flush first)");
            }
        }
    }
}

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// Makes each part from its settings.
    pub(crate) fn new(settings: Settings<K, V>) -> Arc<Self> {
        Arc::new_cyclic(|this| Self::with(settings, this.clone()))
    }

    fn with(settings: Settings<K, V>, this: Weak<Self>) -> Self {
        let report = Arc::new(Report::new(settings.observers));
        let fence = Arc::new(Fence::new());
        let bus = settings
            .bus
            .map(|(backplane, channel, timeout)| Arc::new(Bus::new(backplane, channel, timeout)));
        // Owed work that lands later is published then (the other instances
        // must drop what they re-read from L2 meanwhile), and dropped from this
        // instance's L1 too (a cancelled write never reached it).
        let announce_on = bus.as_ref().map(Arc::downgrade);
        let announce: Announce = Box::new(move |landed| {
            if let Some(bus) = announce_on.as_ref().and_then(Weak::upgrade) {
                bus.enqueue(write::message(&landed));
            }
            if let (Some(core), Ok(runtime)) = (this.upgrade(), Handle::try_current()) {
                runtime.spawn(async move { core.drop_landed(landed).await });
            }
        });
        // With an L2, stamps are read again after the L1 TTL: a lost message
        // costs at most about two L1 TTLs of old reads (see docs/GUIDE.md).
        let tags = TagBook::new(
            settings.remote.is_none(),
            settings.clock.clone(),
            settings.ttl.l1,
        );
        Core {
            tags,
            syncing: tokio::sync::Mutex::new(()),
            l1: L1::new(
                &settings.name,
                settings.capacity,
                settings.eviction,
                &fence,
                &report,
            ),
            remote: settings
                .remote
                .map(|parts| Remote::new(parts, Arc::clone(&report), announce)),
            bus,
            name: settings.name,
            loader: settings.loader,
            clock: settings.clock,
            fence,
            report,
            flights: Flights::default(),
            plan: Plan::new(settings.freshness, settings.ttl, Skip::default(), None),
            lease: settings.lease,
            trace_keys: settings.trace_keys,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The key's string form for a span, if spans record keys.
    #[inline]
    pub(crate) fn traced_key<Q>(&self, key: &Q) -> Option<String>
    where
        K: std::borrow::Borrow<Q>,
        Q: ToOwned<Owned = K> + ?Sized,
    {
        self.trace_keys.then(|| key.to_owned().to_key_string())
    }

    /// A read's span (see `observe/trace.rs`), with its key if spans record
    /// keys.
    pub(crate) fn read_span(&self, op: &'static str, key: &K) -> tracing::Span {
        let span = trace::read(&self.name, op);
        if self.trace_keys {
            trace::key(&span, || key.to_key_string());
        }
        span
    }

    /// A write's span (see `observe/trace.rs`).
    pub(crate) fn write_span(&self, op: &'static str) -> tracing::Span {
        trace::write(&self.name, op)
    }

    pub(crate) fn ttl(&self) -> &TtlPolicy {
        &self.plan.ttl
    }

    /// The cache's own plan (its settings), for calls without options.
    pub(crate) fn defaults(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// What a call runs with: its own `plan`, else the cache's.
    pub(crate) fn plan<'a>(&'a self, plan: Option<&'a Arc<Plan>>) -> &'a Plan {
        plan.unwrap_or(&self.plan)
    }

    /// Whether this cache keeps a namespace epoch: its L2 store stamps tags.
    /// Then every entry in L2 carries its birth, and is unreadable once the
    /// namespace's own tag ([`ALL_TAG`](crate::namespace::ALL_TAG)) is stamped later.
    pub(crate) fn epochs(&self) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|remote| remote.stamps_tags())
    }

    /// The tag section `entry` is written to L2 with: its tags, or, untagged,
    /// only its birth (for the namespace epoch).
    pub(crate) fn l2_tags(&self, entry: &Entry<V>) -> Option<Arc<Tags>> {
        match &entry.tags {
            Some(tags) => Some(Arc::clone(tags)),
            None => self.epochs().then(|| Tags::new(Box::default(), entry.born)),
        }
    }

    /// Where this cache reports.
    pub(crate) fn report(&self) -> &Report {
        &self.report
    }

    /// The L2 key of `key`, if the cache has an L2.
    pub(crate) fn l2_key(&self, key: &K) -> Option<String> {
        self.remote.as_ref().map(|remote| remote.key(key))
    }

    /// A snapshot of the cache's counters.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.report.stats(self.l1.entry_count(), self.l1.policy());
        if let Some(remote) = &self.remote {
            (stats.breaker, stats.breaker_opened) = remote.breaker();
        }
        stats
    }

    /// The cache's health now (see [`Health`]).
    pub(crate) fn health(&self) -> Health {
        Health {
            cache: self.name.clone(),
            l2: self.remote.as_ref().map(|remote| remote.health()),
            bus: self.bus.as_ref().map(|bus| bus.health()),
        }
    }

    pub(crate) async fn run_pending_tasks(&self) {
        self.l1.run_pending_tasks().await;
    }
}
