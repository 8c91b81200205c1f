//! Per-call entry options ([`EntryOptions`]) and what a call runs with once
//! they are laid over the cache's settings ([`Plan`]).

use std::sync::Arc;
use std::time::Duration;

use super::{Freshness, Ttl, TtlPolicy};

/// Settings for one call, over the cache's own (which are the defaults for
/// everything left unset): TTLs, which tiers it reads and writes, fail-safe,
/// load timeouts, early refresh and tags. Pass them with
/// [`TieredCache::with_options`](crate::TieredCache::with_options).
///
/// What a call sets applies to what that call loads or writes, and to the
/// refreshes its reads start. Flights are per key: a call that joins a load of
/// its key already in flight gets that load's value, made under the options of
/// the call that started it.
///
/// ```
/// use std::time::Duration;
/// use tiered::{BoxError, EntryOptions, TieredCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tiered::BoxError> {
/// let prices = TieredCache::<u64, u64>::builder("prices")
///     .loader_fn(|id: u64| async move { Ok::<_, BoxError>(Some(id * 100)) })
///     .build()?;
/// // A volatile price: 5 s in every tier, and served stale for up to an hour
/// // if the database fails.
/// let volatile = EntryOptions::new()
///     .ttl(Duration::from_secs(5))
///     .fail_safe(Duration::from_secs(3600));
/// assert_eq!(prices.with_options(&volatile).get(&7).await?, Some(700));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntryOptions {
    ttl: Option<Duration>,
    l1_ttl: Option<Duration>,
    negative_ttl: Option<Duration>,
    skip: Skip,
    fail_safe: Option<Option<Duration>>,
    throttle: Option<Duration>,
    stale_while_revalidate: Option<Duration>,
    soft_timeout: Option<Option<Duration>>,
    hard_timeout: Option<Option<Duration>>,
    early_beta: Option<Option<f64>>,
    tags: Vec<Box<str>>,
}

/// Which tier reads and writes a call skips.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Skip {
    pub(crate) l1_reads: bool,
    pub(crate) l1_writes: bool,
    pub(crate) l2_reads: bool,
    pub(crate) l2_writes: bool,
}

impl EntryOptions {
    /// No options: the cache's settings.
    pub fn new() -> Self {
        EntryOptions::default()
    }

    /// The entry's TTL in every tier (no jitter), instead of the cache's L1
    /// and L2 TTLs; shortened to [`Ttl::MAX`]. A loader's own
    /// [`Loaded::with_ttl`](crate::Loaded::with_ttl) wins over it. A zero TTL
    /// caches nothing.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl.min(Ttl::MAX));
        self
    }

    /// The entry's TTL in L1 (no jitter; at most its L2 TTL), instead of
    /// [`ttl`](Self::ttl) or the cache's L1 TTL.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl.min(Ttl::MAX));
        self
    }

    /// How long an absence (a loader's `None`) is remembered, in every tier
    /// (no jitter), instead of the cache's negative TTL.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl.min(Ttl::MAX));
        self
    }

    /// Neither reads nor writes L1: [`skip_l1_reads`](Self::skip_l1_reads)
    /// and [`skip_l1_writes`](Self::skip_l1_writes).
    pub fn skip_l1(self) -> Self {
        self.skip_l1_reads().skip_l1_writes()
    }

    /// L1 answers nothing to this call: its value comes from L2 or a load
    /// (or a load of the key in flight).
    pub fn skip_l1_reads(mut self) -> Self {
        self.skip.l1_reads = true;
        self
    }

    /// What this call loads or writes is not put in this instance's L1 (an
    /// insert drops the key from L1 instead, so that L1 holds no older
    /// value than L2).
    pub fn skip_l1_writes(mut self) -> Self {
        self.skip.l1_writes = true;
        self
    }

    /// Neither reads nor writes L2: [`skip_l2_reads`](Self::skip_l2_reads) and
    /// [`skip_l2_writes`](Self::skip_l2_writes).
    pub fn skip_l2(self) -> Self {
        self.skip_l2_reads().skip_l2_writes()
    }

    /// L2's entry does not answer this call: its value comes from L1 or a
    /// load. (L2 is still read when the load's value is to be written there:
    /// its fill is a compare-and-set against what the read saw.)
    pub fn skip_l2_reads(mut self) -> Self {
        self.skip.l2_reads = true;
        self
    }

    /// What this call loads is not written to L2; an insert deletes the key's
    /// L2 entry instead (so that no instance reads an older value from L2),
    /// and tells the other instances to drop theirs, as usual.
    pub fn skip_l2_writes(mut self) -> Self {
        self.skip.l2_writes = true;
        self
    }

    /// Fail-safe for this call's entry, as
    /// [`TieredCacheBuilder::fail_safe`](crate::TieredCacheBuilder::fail_safe):
    /// kept until `window` after its write, and served stale if a load fails.
    pub fn fail_safe(mut self, window: Duration) -> Self {
        self.fail_safe = Some(Some(window.min(Ttl::MAX)));
        self
    }

    /// No fail-safe for this call: a failed load is the caller's error, even
    /// with a stale copy at hand (one kept for the cache's fail-safe or
    /// stale-while-revalidate), and its entry is not kept for fail-safe.
    pub fn no_fail_safe(mut self) -> Self {
        self.fail_safe = Some(None);
        self
    }

    /// How long a stale copy served by fail-safe is served before the loader
    /// is tried again.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.throttle = Some(throttle.min(Ttl::MAX));
        self
    }

    /// Stale-while-revalidate for this call's entry (zero: off), as
    /// [`TieredCacheBuilder::stale_while_revalidate`](crate::TieredCacheBuilder::stale_while_revalidate).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window.min(Ttl::MAX));
        self
    }

    /// The soft load timeout for this call, as
    /// [`TieredCacheBuilder::soft_timeout`](crate::TieredCacheBuilder::soft_timeout).
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(Some(timeout));
        self
    }

    /// No soft load timeout for this call.
    pub fn no_soft_timeout(mut self) -> Self {
        self.soft_timeout = Some(None);
        self
    }

    /// The hard load timeout for this call, as
    /// [`TieredCacheBuilder::hard_timeout`](crate::TieredCacheBuilder::hard_timeout).
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(Some(timeout));
        self
    }

    /// No hard load timeout for this call.
    pub fn no_hard_timeout(mut self) -> Self {
        self.hard_timeout = Some(None);
        self
    }

    /// Early refresh (XFetch) for this call's entry with this `beta`, as
    /// [`TieredCacheBuilder::early_refresh`](crate::TieredCacheBuilder::early_refresh);
    /// a `beta` that is not finite and greater than zero turns it off.
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_beta = Some((beta.is_finite() && beta > 0.0).then_some(beta));
        self
    }

    /// No early refresh for this call's entry.
    pub fn no_early_refresh(mut self) -> Self {
        self.early_beta = Some(None);
        self
    }

    /// Adds tags for what this call loads or inserts (with the loader's own,
    /// for a load); see [`TieredCache::invalidate_tag`](crate::TieredCache::invalidate_tag).
    /// A later refresh of the entry by a call without these options (a plain
    /// `get` whose hit starts one) does not carry them: tag what a key always
    /// needs in its loader ([`Loaded::with_tags`](crate::Loaded::with_tags)).
    pub fn tags<T: Into<String>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        for tag in tags {
            let tag = tag.into().into_boxed_str();
            if !self.tags.contains(&tag) {
                self.tags.push(tag);
            }
        }
        self
    }

    /// These options over the cache's `freshness` and `ttl`.
    pub(crate) fn plan(&self, freshness: &Freshness, ttl: &TtlPolicy) -> Arc<Plan> {
        let mut freshness = freshness.clone();
        if let Some(window) = self.fail_safe {
            freshness.fail_safe = window;
        }
        if let Some(throttle) = self.throttle {
            freshness.throttle = throttle;
        }
        if let Some(window) = self.stale_while_revalidate {
            freshness.stale_while_revalidate = window;
        }
        if let Some(timeout) = self.soft_timeout {
            freshness.soft_timeout = timeout;
        }
        if let Some(timeout) = self.hard_timeout {
            freshness.hard_timeout = timeout;
        }
        if let Some(beta) = self.early_beta {
            freshness.early_beta = beta;
        }
        let mut ttl = ttl.clone();
        if self.ttl.is_some() {
            // The call's TTL is exact (an L1 or negative TTL alone is
            // jittered as the cache's are).
            ttl.jitter = 0.0;
        }
        if let Some(l2) = self.ttl {
            (ttl.l1, ttl.l2) = (l2, l2);
        }
        if let Some(l1) = self.l1_ttl {
            ttl.l1 = l1;
        }
        ttl.l1 = ttl.l1.min(ttl.l2);
        if let Some(negative) = self.negative_ttl {
            ttl.negative = negative;
        }
        let tags = (!self.tags.is_empty()).then(|| self.tags.clone().into_boxed_slice());
        let mut plan = Plan::new(freshness, ttl, self.skip, tags);
        if self.fail_safe == Some(None) {
            if let Some(plan) = Arc::get_mut(&mut plan) {
                plan.serves_stale = false;
            }
        }
        plan
    }
}

/// What a call runs with: the cache's settings, with the call's options over
/// them. The cache keeps its own as the plan of calls without options.
#[derive(Debug)]
pub(crate) struct Plan {
    /// For entries a loader can refresh.
    pub(crate) freshness: Freshness,
    /// `freshness` without early refresh: for entries no loader can refresh.
    pub(crate) unrefreshed: Freshness,
    pub(crate) ttl: TtlPolicy,
    pub(crate) skip: Skip,
    /// Tags for every entry the call loads or writes.
    pub(crate) tags: Option<Box<[Box<str>]>>,
    /// Whether a failed load may answer with a stale copy (fail-safe); false
    /// for a call that turned fail-safe off.
    pub(crate) serves_stale: bool,
}

impl Plan {
    pub(crate) fn new(
        freshness: Freshness,
        ttl: TtlPolicy,
        skip: Skip,
        tags: Option<Box<[Box<str>]>>,
    ) -> Arc<Self> {
        Arc::new(Plan {
            unrefreshed: Freshness {
                early_beta: None,
                ..freshness.clone()
            },
            freshness,
            ttl,
            skip,
            tags,
            serves_stale: true,
        })
    }

    /// The freshness of an entry that a loader can refresh (`refreshable`:
    /// with an early-refresh window) or not.
    pub(crate) fn freshness(&self, refreshable: bool) -> &Freshness {
        if refreshable {
            &self.freshness
        } else {
            &self.unrefreshed
        }
    }

    /// `tags` (a loader's, or none) with the plan's.
    pub(crate) fn tags_with(&self, tags: Option<Box<[Box<str>]>>) -> Option<Box<[Box<str>]>> {
        match (tags, &self.tags) {
            (tags, None) => tags,
            (None, Some(own)) => Some(own.clone()),
            (Some(tags), Some(own)) => {
                let mut all = tags.into_vec();
                all.extend(
                    own.iter()
                        .filter(|t| !all.contains(t))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                Some(all.into_boxed_slice())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> (Freshness, TtlPolicy) {
        let ttl = TtlPolicy {
            l1: Ttl::SHORT,
            l2: Ttl::LONG,
            negative: Duration::from_secs(5),
            jitter: 0.1,
        };
        (Freshness::default(), ttl)
    }

    #[test]
    fn unset_options_are_the_cache_settings() {
        let (freshness, ttl) = defaults();
        let plan = EntryOptions::new().plan(&freshness, &ttl);
        assert_eq!(
            (plan.ttl.l1, plan.ttl.l2, plan.ttl.jitter),
            (ttl.l1, ttl.l2, ttl.jitter)
        );
        assert_eq!(plan.skip, Skip::default());
        assert!(plan.tags.is_none() && plan.freshness.fail_safe.is_none());
    }

    #[test]
    fn a_ttl_is_exact_in_both_tiers_and_l1_never_outlives_l2() {
        let (freshness, ttl) = defaults();
        let five = Duration::from_secs(5);
        let plan = EntryOptions::new().ttl(five).plan(&freshness, &ttl);
        assert_eq!(
            (plan.ttl.l1, plan.ttl.l2, plan.ttl.jitter),
            (five, five, 0.0)
        );
        let l1_only = EntryOptions::new().l1_ttl(five).plan(&freshness, &ttl);
        assert_eq!((l1_only.ttl.l1, l1_only.ttl.jitter), (five, ttl.jitter));
        let plan = EntryOptions::new()
            .l1_ttl(Ttl::VERY_LONG)
            .plan(&freshness, &ttl);
        assert_eq!(plan.ttl.l1, Ttl::LONG, "at most the L2 TTL");
        let huge = EntryOptions::new()
            .ttl(Duration::MAX)
            .plan(&freshness, &ttl);
        assert_eq!(huge.ttl.l2, Ttl::MAX);
    }

    #[test]
    fn freshness_options_replace_the_cache_settings_and_bad_betas_turn_it_off() {
        let (freshness, ttl) = defaults();
        let plan = EntryOptions::new()
            .fail_safe(Ttl::VERY_LONG)
            .hard_timeout(Duration::from_millis(5))
            .early_refresh(f64::NAN)
            .plan(&freshness, &ttl);
        assert_eq!(plan.freshness.fail_safe, Some(Ttl::VERY_LONG));
        assert_eq!(plan.freshness.hard_timeout, Some(Duration::from_millis(5)));
        assert_eq!(plan.freshness.early_beta, None);
        let on = EntryOptions::new()
            .early_refresh(2.0)
            .plan(&freshness, &ttl);
        assert_eq!(on.freshness(true).early_beta, Some(2.0));
        assert_eq!(on.freshness(false).early_beta, None);
    }

    #[test]
    fn a_call_tags_join_the_loader_tags_once() {
        let (freshness, ttl) = defaults();
        let plan = EntryOptions::new()
            .tags(["a"])
            .tags(["b", "a"])
            .plan(&freshness, &ttl);
        let loader: Box<[Box<str>]> = Box::new(["b".into(), "c".into()]);
        let all = plan.tags_with(Some(loader)).unwrap();
        assert_eq!(&*all, &["b".into(), "c".into(), "a".into()] as &[Box<str>]);
        assert_eq!(plan.tags_with(None).unwrap().len(), 2);
    }
}
