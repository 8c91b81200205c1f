//! The tag book: what this instance knows of each tag's last invalidation, on
//! the tag clock.
//!
//! The tag clock is, in Redis, one number per namespace that moves forward to
//! the server's time in microseconds at each invalidation (or one past its last
//! value), so it keeps moving forward even when the server loses its data;
//! without an L2, it is this book's own counter. Invalidating tags moves it and
//! stamps each tag with its new value; an entry records the clock as its load
//! began (`born`), and is readable only while none of its tags is stamped
//! later. An instance learns stamps from its own invalidations, from the bus,
//! and by reading them from Redis; `clock` is the highest it has seen, a lower
//! bound of the real clock, which is what loads take as their `born` (older is
//! safe: at worst an entry is taken for older than it is, and loaded again).
//!
//! Without an L2 the book is the truth: a tag it does not know was never
//! invalidated. With one, a tag it does not know must be read from Redis
//! before an entry carrying it is trusted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::entry::Tags;

/// How many tags a book remembers before it forgets them all (they are read
/// again from Redis as entries need them).
const MAX_KNOWN: usize = 1 << 20;

/// What the book knows of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Its last invalidation's stamp (0: never invalidated).
    Stamp(u64),
    /// Invalidated here, in an L2 change that has not landed yet: every entry
    /// carrying it is unreadable until it lands and its stamp is known.
    Pending,
}

/// Whether an entry's tags hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Valid,
    /// A tag was invalidated after the entry's load began (or is pending).
    Invalidated,
    /// A tag's stamp is not known here: read it from Redis first.
    Unknown,
}

/// One cache's tag book.
#[derive(Debug)]
pub(crate) struct TagBook {
    known: RwLock<HashMap<Box<str>, Known>>,
    /// The highest stamp seen: a lower bound of the tag clock.
    clock: AtomicU64,
    /// Moves whenever a tag's stamp rises or the book forgets: an entry that
    /// passed a check at the current sequence passes again.
    seq: AtomicU64,
    /// No L2: a tag the book does not know was never invalidated.
    authoritative: bool,
}

impl TagBook {
    pub(crate) fn new(authoritative: bool) -> Self {
        TagBook {
            known: RwLock::default(),
            clock: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            authoritative,
        }
    }

    /// The `born` of a load that begins now.
    pub(crate) fn clock(&self) -> u64 {
        self.clock.load(Ordering::Acquire)
    }

    /// An L1 hit's check: `tags` passed at the current sequence, or pass now.
    #[inline]
    pub(crate) fn holds(&self, tags: &Tags) -> bool {
        let seq = self.seq.load(Ordering::Acquire);
        if tags.checked.load(Ordering::Relaxed) == seq {
            return true;
        }
        let valid = self.check(tags) == Check::Valid;
        if valid {
            tags.checked.store(seq, Ordering::Relaxed);
        }
        valid
    }

    /// Whether `tags` hold, against what the book knows now.
    pub(crate) fn check(&self, tags: &Tags) -> Check {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        let mut check = Check::Valid;
        for name in &*tags.names {
            match known.get(name) {
                Some(Known::Stamp(stamp)) if *stamp <= tags.born => {}
                Some(_) => return Check::Invalidated,
                None if self.authoritative => {}
                None => check = Check::Unknown,
            }
        }
        check
    }

    /// The names of `tags` whose stamps the book does not know.
    pub(crate) fn unknown<'a>(&self, tags: &'a Tags) -> Vec<&'a str> {
        if self.authoritative {
            return Vec::new();
        }
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        (tags.names.iter())
            .filter(|name| !known.contains_key(&***name))
            .map(|name| &**name)
            .collect()
    }

    /// Stamps read from Redis (0 for a tag never invalidated).
    pub(crate) fn read(&self, stamps: impl IntoIterator<Item = (impl Into<Box<str>>, u64)>) {
        self.learn(stamps, false);
    }

    /// Tags invalidated at `stamp` (here or on another instance). `landed`: this
    /// instance's own invalidation, pending until now.
    pub(crate) fn invalidated<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        stamp: u64,
        landed: bool,
    ) {
        self.learn(names.into_iter().map(|name| (name, stamp)), landed);
    }

    /// Tags invalidated here whose L2 change did not land: pending.
    pub(crate) fn pending<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut known = self.write();
        for name in names {
            known.insert(name.into(), Known::Pending);
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// Tags invalidated without an L2: the clock moves on by one.
    pub(crate) fn invalidate_here<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let stamp = self.clock.fetch_add(1, Ordering::AcqRel) + 1;
        self.invalidated(names, stamp, true);
    }

    /// Forgets every stamp (after bus messages may have been lost; L1 is
    /// cleared with it). Without an L2 the book is the truth and keeps them.
    pub(crate) fn forget(&self) {
        if self.authoritative {
            return;
        }
        self.write().clear();
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    fn learn(&self, stamps: impl IntoIterator<Item = (impl Into<Box<str>>, u64)>, landed: bool) {
        let mut known = self.write();
        let mut raised = false;
        let mut highest = 0;
        for (name, stamp) in stamps {
            highest = highest.max(stamp);
            let slot = known.entry(name.into()).or_insert(Known::Stamp(0));
            match *slot {
                Known::Stamp(old) if old < stamp => {
                    *slot = Known::Stamp(stamp);
                    raised = true;
                }
                Known::Pending if landed => {
                    *slot = Known::Stamp(stamp);
                    raised = true;
                }
                _ => {}
            }
        }
        self.clock.fetch_max(highest, Ordering::AcqRel);
        if known.len() > MAX_KNOWN && !self.authoritative {
            known.retain(|_, k| *k == Known::Pending);
            raised = true;
        }
        if raised {
            self.seq.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, Known>> {
        self.known.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(names: &[&str], born: u64) -> std::sync::Arc<Tags> {
        Tags::new(names.iter().map(|n| (*n).into()).collect(), born)
    }

    #[test]
    fn an_entry_holds_until_a_tag_is_stamped_after_its_birth() {
        let book = TagBook::new(false);
        let entry = tags(&["user:7", "orders"], 5);
        assert_eq!(book.check(&entry), Check::Unknown);
        assert!(!book.holds(&entry), "unknown is not trusted");
        book.read([("user:7", 3), ("orders", 0)]);
        assert_eq!(book.clock(), 3);
        assert!(book.holds(&entry));
        book.invalidated(["orders"], 5, false);
        assert!(
            book.holds(&entry),
            "stamped at its birth: the load began after"
        );
        book.invalidated(["orders"], 6, false);
        assert!(!book.holds(&entry));
        assert_eq!(book.clock(), 6);
        book.read([("orders", 4)]);
        assert!(!book.holds(&entry), "a stale read does not lower a stamp");
        assert!(book.holds(&tags(&["user:7", "orders"], 6)));
    }

    #[test]
    fn pending_tags_hold_nothing_until_their_stamp_lands() {
        let book = TagBook::new(false);
        book.read([("t", 1)]);
        book.pending(["t"]);
        assert_eq!(book.check(&tags(&["t"], 99)), Check::Invalidated);
        book.invalidated(["t"], 50, false);
        assert_eq!(
            book.check(&tags(&["t"], 99)),
            Check::Invalidated,
            "not ours"
        );
        book.invalidated(["t"], 7, true);
        assert_eq!(book.check(&tags(&["t"], 7)), Check::Valid);
        assert_eq!(book.check(&tags(&["t"], 6)), Check::Invalidated);
    }

    #[test]
    fn without_an_l2_the_book_is_the_truth() {
        let book = TagBook::new(true);
        let entry = tags(&["a"], book.clock());
        assert!(book.holds(&entry), "never invalidated");
        book.invalidate_here(["a"]);
        assert!(!book.holds(&entry));
        assert!(book.holds(&tags(&["a"], book.clock())));
        book.forget();
        assert!(!book.holds(&entry), "kept");
    }

    #[test]
    fn forgetting_makes_every_tag_unknown_again() {
        let book = TagBook::new(false);
        book.read([("a", 2)]);
        let entry = tags(&["a"], 2);
        assert!(book.holds(&entry));
        book.forget();
        assert!(!book.holds(&entry));
        assert_eq!(book.unknown(&entry), ["a"]);
        assert_eq!(book.clock(), 2, "the clock stays a lower bound");
    }
}
