//! What a load is told ([`LoadContext`]: the stale copy it refreshes) and what it
//! may answer besides a value ([`Loaded`]: the entry's TTLs, "not modified").

use std::fmt;
use std::time::Duration;

/// What the cache knows about a key it asks a [`Loader`](crate::Loader) to load:
/// the stale copy the load will replace, if the cache still holds one (an early
/// refresh, stale-while-revalidate, or an entry kept by fail-safe).
///
/// A loader that remembers a version or an ETag in its values can ask its source
/// "changed since?" and answer [`Loaded::not_modified`]; one that sees how
/// volatile a record is can set its TTL with [`Loaded::with_ttl`].
pub struct LoadContext<V> {
    stale: Option<Stale<V>>,
}

/// The stale copy of a [`LoadContext`].
struct Stale<V> {
    /// `None`: a remembered absence.
    value: Option<V>,
    /// How long ago it stopped being fresh (zero for an early refresh).
    stale_for: Duration,
}

impl<V> LoadContext<V> {
    /// A context with no stale copy (what a first load sees).
    pub fn empty() -> Self {
        LoadContext { stale: None }
    }

    /// A context with a stale copy, stale for `stale_for`.
    pub(crate) fn with_stale(value: Option<V>, stale_for: Duration) -> Self {
        LoadContext {
            stale: Some(Stale { value, stale_for }),
        }
    }

    /// Whether the cache holds a stale copy of the key (a value or a remembered
    /// absence): [`Loaded::not_modified`] is then a valid answer.
    pub fn has_stale(&self) -> bool {
        self.stale.is_some()
    }

    /// The stale value, if the cache holds one (`None` also when the stale copy
    /// is a remembered absence).
    pub fn stale_value(&self) -> Option<&V> {
        self.stale.as_ref().and_then(|stale| stale.value.as_ref())
    }

    /// How long ago the stale copy stopped being fresh: zero when it is still
    /// fresh (an early refresh), `None` without a stale copy. (A copy that
    /// fail-safe served again counts from the end of its throttle.)
    pub fn stale_for(&self) -> Option<Duration> {
        self.stale.as_ref().map(|stale| stale.stale_for)
    }
}

impl<V> fmt::Debug for LoadContext<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadContext")
            .field("has_stale", &self.has_stale())
            .field("stale_for", &self.stale_for())
            .finish()
    }
}

/// A [`Loader`](crate::Loader)'s answer through
/// [`load_with`](crate::Loader::load_with): a value, an absence, or "not
/// modified", with TTLs of its own if it sets them.
///
/// ```
/// use std::time::Duration;
/// use tiered::Loaded;
///
/// // A record edited a minute ago is volatile: cache it briefly.
/// let hot: Loaded<String> = Loaded::value("draft".to_owned()).with_ttl(Duration::from_secs(5));
/// // One untouched for a year is not.
/// let cold: Loaded<String> = Loaded::value("archived".to_owned()).with_ttl(Duration::from_secs(3600));
/// # let _ = (hot, cold);
/// ```
#[derive(Clone)]
pub struct Loaded<V> {
    pub(crate) answer: Answer<V>,
    /// This entry's TTL in every tier.
    pub(crate) ttl: Option<Duration>,
    /// This entry's L1 TTL (at most `ttl`'s or the configured L2 one).
    pub(crate) l1_ttl: Option<Duration>,
    /// The tags the entry carries.
    pub(crate) tags: Option<Box<[Box<str>]>>,
}

/// What a [`Loaded`] says about the value.
#[derive(Clone)]
pub(crate) enum Answer<V> {
    /// `None`: the key has no value (remembered for the negative TTL).
    Value(Option<V>),
    /// The stale copy is still current.
    NotModified,
}

impl<V> Loaded<V> {
    /// The key's value.
    pub fn value(value: V) -> Self {
        Self::from(Some(value))
    }

    /// The key has no value (remembered for the negative TTL, as a loader's
    /// `Ok(None)` is).
    pub fn absent() -> Self {
        Self::from(None)
    }

    /// The stale copy in the [`LoadContext`] is still current: it is cached
    /// again as fresh (for the TTLs set here, else the configured ones), and
    /// the loader never builds the value. Valid only when the context
    /// [has a stale copy](LoadContext::has_stale); otherwise the load fails with
    /// an error saying so.
    pub fn not_modified() -> Self {
        Loaded {
            answer: Answer::NotModified,
            ttl: None,
            l1_ttl: None,
            tags: None,
        }
    }

    /// This entry's TTL in every tier, instead of the configured ones (and
    /// without their jitter). A zero TTL hands the value to the callers of this
    /// load and caches it nowhere; a TTL past [`Ttl::MAX`](crate::Ttl::MAX) is
    /// shortened to it.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The tags this entry carries (at most 64, each under 64 KiB):
    /// [`TieredCache::invalidate_tag`](crate::TieredCache::invalidate_tag) of
    /// any of them makes it unreadable everywhere. With "not modified" and no
    /// tags set, the entry keeps the stale copy's tags. A [`Loader`](crate::Loader)
    /// that tags in [`load_with`](crate::Loader::load_with) must tag in
    /// [`load_many_with`](crate::Loader::load_many_with) too, or the entries
    /// `get_many` and `warm` load carry no tags.
    ///
    /// ```
    /// use tiered::Loaded;
    ///
    /// let order: Loaded<u64> = Loaded::value(99).with_tags(["user:7", "orders"]);
    /// # let _ = order;
    /// ```
    #[must_use]
    pub fn with_tags<T: Into<String>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        self.tags = Some(
            tags.into_iter()
                .map(|t| t.into().into_boxed_str())
                .collect(),
        );
        self
    }

    /// This entry's TTL in L1 only (L2 keeps [`with_ttl`](Self::with_ttl)'s, or
    /// the configured one). Other instances that read the entry from L2 take
    /// their configured L1 TTL, at most the entry's remaining L2 life.
    #[must_use]
    pub fn with_l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }
}

impl<V> From<Option<V>> for Loaded<V> {
    fn from(value: Option<V>) -> Self {
        Loaded {
            answer: Answer::Value(value),
            ttl: None,
            l1_ttl: None,
            tags: None,
        }
    }
}

impl<V> fmt::Debug for Loaded<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let answer = match &self.answer {
            Answer::Value(Some(_)) => "value",
            Answer::Value(None) => "absent",
            Answer::NotModified => "not modified",
        };
        f.debug_struct("Loaded")
            .field("answer", &answer)
            .field("ttl", &self.ttl)
            .field("l1_ttl", &self.l1_ttl)
            .field("tags", &self.tags)
            .finish()
    }
}
