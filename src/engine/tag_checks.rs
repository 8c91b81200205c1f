//! Whether an entry's tags, and the namespace epoch, still hold: what the tag
//! book knows, with the stamps it does not know (or no longer trusts) read
//! from L2 first; and keeping the book's view of the tag clock fresh enough
//! that the births it gives are not older than stamps it could know.

use crate::engine::Core;
use crate::entry::Tags;
use crate::key::{CacheKey, CacheValue};
use crate::namespace::ALL_TAG;
use crate::tags::Check;

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// Whether `tags` (if any) hold: none was invalidated after the entry's load
    /// began. Stamps this instance does not know are read from L2 first; if
    /// they cannot be, they do not hold (see [`tags_verdict`](Self::tags_verdict)).
    pub(crate) async fn tags_hold(&self, tags: Option<&Tags>) -> bool {
        self.tags_verdict(tags, false).await == Verdict::Hold
    }

    /// [`tags_hold`](Self::tags_hold) for an entry read from L2 (`tags`: its
    /// tag section), with the namespace's own tag (the epoch of
    /// `invalidate_all`), which every entry in L2 carries: an entry without a
    /// birth (written by a version without epochs) was born at 0. Without a
    /// bus, nothing tells this instance of other instances' stamps: those of
    /// the entry's named tags are read from L2 for every such entry (the
    /// epoch's is trusted as long as a stamp is, as L1 is).
    pub(crate) async fn l2_tags_hold(&self, tags: Option<&Tags>) -> bool {
        let named = tags.is_some_and(|tags| !tags.names.is_empty());
        let read_all = named && self.bus.is_none();
        if !self.epochs() {
            return self.tags_verdict(tags, read_all).await == Verdict::Hold;
        }
        let born = tags.map_or(0, |tags| tags.born);
        let names = tags.iter().flat_map(|tags| tags.names.iter().cloned());
        let names = names.chain([Box::from(ALL_TAG)]).collect();
        self.tags_verdict(Some(&Tags::new(names, born)), read_all)
            .await
            == Verdict::Hold
    }

    /// What `tags` (if any) come to: `read_all` reads every stamp from L2, not
    /// only those this instance does not know.
    pub(crate) async fn tags_verdict(&self, tags: Option<&Tags>, read_all: bool) -> Verdict {
        let Some(tags) = tags else {
            return Verdict::Hold;
        };
        let names = match self.tags.check(tags) {
            Check::Invalidated => return Verdict::Invalidated,
            Check::Pending => return Verdict::Unreadable,
            Check::Valid if !read_all => return Verdict::Hold,
            Check::Valid => tags.names.iter().map(|name| &**name).collect(),
            Check::Unknown if read_all => tags.names.iter().map(|name| &**name).collect(),
            Check::Unknown => self.tags.unknown(tags),
        };
        let Some(remote) = &self.remote else {
            return Verdict::Unreadable;
        };
        let epoch = self.tags.epoch();
        let Some(stamps) = remote.tag_stamps(&names).await else {
            return Verdict::Unreadable;
        };
        self.tags.read(names.into_iter().zip(stamps), epoch);
        match self.tags.check(tags) {
            Check::Valid => Verdict::Hold,
            Check::Invalidated => Verdict::Invalidated,
            Check::Pending | Check::Unknown => Verdict::Unreadable,
        }
    }

    /// Whether an entry of L1 born at `born` (a stale copy a flight may fall
    /// back on) predates what this instance knows of the namespace epoch,
    /// or of its `tags`: from the book alone (a copy is not dropped because
    /// L2 cannot be asked).
    pub(crate) fn known_invalidated(&self, born: u64, tags: Option<&Tags>) -> bool {
        (self.epochs() && self.tags.stamped_after(ALL_TAG, born))
            || tags.is_some_and(|tags| self.tags.check(tags) == Check::Invalidated)
    }

    /// Reads the tag clock (and the namespace epoch) from L2 when this
    /// instance's view of them is not trusted (never read, forgotten since,
    /// or read longer ago than a stamp is trusted): a birth taken after it is
    /// at least the clock as it stood then, so that a fresh instance, or one
    /// that lost messages, does not write entries born before invalidations
    /// it could have known (unreadable to every instance). One read at a
    /// time; the others wait for it. If it fails, births stay as they are
    /// (older: safe) until the next try, a second later.
    pub(crate) async fn sync_tag_clock(&self) {
        if !self.tags.needs_sync() || !self.epochs() {
            return;
        }
        let Some(remote) = &self.remote else {
            return;
        };
        let _one = self.syncing.lock().await;
        if !self.tags.needs_sync() {
            return;
        }
        let epoch = self.tags.epoch();
        let read = remote.tag_clock().await;
        if let Some((_, stamp)) = read {
            self.tags.read([(ALL_TAG, stamp)], epoch);
        }
        self.tags.synced(read.map(|(clock, _)| clock), epoch);
    }
}

/// What an entry's tags come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Hold,
    /// One was invalidated after the entry's load began.
    Invalidated,
    /// They cannot be checked now: a stamp cannot be read, or is pending here.
    Unreadable,
}
