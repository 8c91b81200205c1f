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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock::{saturating_nanos, Clock};
use crate::entry::Tags;

/// How many tags a book remembers before it forgets them all (they are read
/// again from Redis as entries need them).
const MAX_KNOWN: usize = 1 << 20;

/// How far past this machine's clock a stamp may be and still be learned as
/// the tag clock (stamps are the store's time in microseconds): a stamp past
/// it (a corrupted clock key, a hostile message) still invalidates its tags,
/// but later loads do not take it as their birth.
const PLAUSIBLE_AHEAD: Duration = Duration::from_secs(3600);

/// How soon a failed read of the tag clock is tried again (until it
/// succeeds, births are older than they could be).
const SYNC_RETRY: Duration = Duration::from_secs(1);

/// What the book knows of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Its last invalidation's stamp (0: never invalidated), and when the book
    /// learned it from the store (the cache clock's nanoseconds; [`UNTRUSTED`]
    /// for a stamp only a message told, a lower bound): with an L2, it is
    /// trusted for the L1 TTL, then read again (a lost message costs at most
    /// that, and one more L1 TTL of an entry read from L2 meanwhile).
    Stamp(u64, u64),
    /// Invalidated here, in an L2 change that has not landed yet: every entry
    /// carrying it is unreadable until it lands and its stamp is known.
    Pending {
        /// The call's number: only the landing of that call, or of a replay
        /// that covers it, makes it a stamp.
        call: u64,
        /// The highest stamp messages told meanwhile.
        told: u64,
        /// The book forgot meanwhile: the landed stamp is a lower bound only.
        forgot: bool,
    },
}

/// The learning time of a stamp not learned from the store.
const UNTRUSTED: u64 = u64::MAX;

/// Whether an entry's tags hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Valid,
    /// A tag was invalidated after the entry's load began.
    Invalidated,
    /// A tag's invalidation by this instance has not landed: nothing carrying
    /// it can be checked until it does.
    Pending,
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
    /// No L2: a tag the book does not know was never invalidated (since
    /// `floor`).
    authoritative: bool,
    /// Without an L2, the clock when the book last forgot its stamps (past
    /// [`MAX_KNOWN`]): a tag it does not know counts as stamped then.
    floor: AtomicU64,
    /// Moves whenever the book forgets: stamps read from L2 before it are
    /// not learned after it.
    epoch: AtomicU64,
    /// The number of the next pending call.
    calls: AtomicU64,
    /// The cache's clock, and how long (nanoseconds) a stamp learned is trusted.
    time: Clock,
    trust: u64,
    /// Until when `clock`, as last read from the store, is trusted (the cache
    /// clock's nanoseconds; 0: never read, or the book forgot since).
    synced_until: AtomicU64,
}

impl TagBook {
    /// A book; with an L2 (not `authoritative`), stamps are trusted for
    /// `trust` on `time`, then read again.
    pub(crate) fn new(authoritative: bool, time: Clock, trust: Duration) -> Self {
        TagBook {
            known: RwLock::default(),
            clock: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            authoritative,
            floor: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            time,
            trust: saturating_nanos(trust),
            synced_until: AtomicU64::new(0),
        }
    }

    /// Whether the clock should be read from the store before a birth is
    /// taken: never read, forgotten since, or read longer ago than a stamp is
    /// trusted. Never without an L2 (the book is the clock).
    pub(crate) fn needs_sync(&self) -> bool {
        !self.authoritative && self.time.now() >= self.synced_until.load(Ordering::Acquire)
    }

    /// The clock read from the store (`None`: the read failed), by a read
    /// that began at `epoch`. The clock is learned whatever happened since (a
    /// value it had before a load began is a birth no later than the load's);
    /// it is trusted for a trust period unless the book forgot since. A failed
    /// read is tried again after [`SYNC_RETRY`].
    pub(crate) fn synced(&self, clock: Option<u64>, epoch: u64) {
        let _known = self.write();
        let now = self.time.now();
        let until = match clock {
            Some(clock) => {
                self.clock.fetch_max(clock, Ordering::AcqRel);
                now.saturating_add(self.trust)
            }
            None => now.saturating_add(saturating_nanos(SYNC_RETRY)),
        };
        if epoch == self.epoch.load(Ordering::Acquire) {
            self.synced_until.store(until, Ordering::Release);
        }
    }

    /// Whether `name` was invalidated after `born`, or is pending here, as
    /// far as the book knows (a stamp it does not know is not read).
    pub(crate) fn stamped_after(&self, name: &str, born: u64) -> bool {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        match known.get(name) {
            Some(Known::Stamp(stamp, _)) => *stamp > born,
            Some(Known::Pending { .. }) => true,
            None => self.authoritative && self.floor.load(Ordering::Acquire) > born,
        }
    }

    /// Where the book is in its forgetting: pass it back with stamps read
    /// from L2 (see [`read`](Self::read)).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
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
        let now = self.time.now();
        let mut check = Check::Valid;
        for name in &*tags.names {
            match known.get(name) {
                // Invalidated since, whether or not the stamp is trusted (a
                // later one can only be later still).
                Some(Known::Stamp(stamp, _)) if *stamp > tags.born => return Check::Invalidated,
                Some(Known::Stamp(_, at)) if !self.trusted(*at, now) => check = Check::Unknown,
                Some(Known::Stamp(..)) => {}
                Some(Known::Pending { .. }) => return Check::Pending,
                None if self.authoritative => {
                    if self.floor.load(Ordering::Acquire) > tags.born {
                        return Check::Invalidated;
                    }
                }
                None => check = Check::Unknown,
            }
        }
        check
    }

    /// Whether a stamp learned at `at` is still trusted at `now`.
    fn trusted(&self, at: u64, now: u64) -> bool {
        self.authoritative || (at != UNTRUSTED && now.saturating_sub(at) <= self.trust)
    }

    /// The names of `tags` whose stamps the book does not know (or no longer
    /// trusts).
    pub(crate) fn unknown<'a>(&self, tags: &'a Tags) -> Vec<&'a str> {
        if self.authoritative {
            return Vec::new();
        }
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        let now = self.time.now();
        (tags.names.iter())
            .filter(|name| match known.get(&***name) {
                Some(Known::Stamp(_, at)) => !self.trusted(*at, now),
                Some(Known::Pending { .. }) => false,
                None => true,
            })
            .map(|name| &**name)
            .collect()
    }

    /// Stamps read from Redis (0 for a tag never invalidated), by a read that
    /// began at `epoch`: dropped if the book forgot since (they may predate
    /// what it forgot).
    pub(crate) fn read(
        &self,
        stamps: impl IntoIterator<Item = (impl Into<Box<str>>, u64)>,
        epoch: u64,
    ) {
        self.learn(stamps, None, Some(epoch));
    }

    /// Tags invalidated at `stamp`, by another instance (`call` is `None`: a
    /// message, which raises what the book knows as a lower bound, not
    /// trusted as the whole truth: a later stamp's message may have been lost
    /// before the book last forgot, and only Redis has it), or (`call`) by this
    /// instance's pending call of that number or, for a replay, of any number
    /// up to it.
    pub(crate) fn invalidated<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        stamp: u64,
        call: Option<u64>,
    ) {
        self.learn(names.into_iter().map(|name| (name, stamp)), call, None);
    }

    /// Tags invalidated here, whose stamp is on its way: pending until it lands.
    /// Returns the call's number.
    pub(crate) fn pending<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> u64 {
        let call = self.calls.fetch_add(1, Ordering::AcqRel) + 1;
        let mut known = self.write();
        for name in names {
            let told = match known.get(name) {
                Some(Known::Stamp(stamp, _)) => *stamp,
                Some(Known::Pending { told, .. }) => *told,
                None => 0,
            };
            let forgot = false;
            known.insert(name.into(), Known::Pending { call, told, forgot });
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
        call
    }

    /// Tags invalidated without an L2: the clock moves on by one.
    pub(crate) fn invalidate_here<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let stamp = self.clock.fetch_add(1, Ordering::AcqRel) + 1;
        self.learn(names.into_iter().map(|name| (name, stamp)), None, None);
    }

    /// Forgets every stamp but this instance's pending ones (after bus messages
    /// may have been lost; L1 is cleared with it). Without an L2 the book is
    /// the truth and keeps them.
    pub(crate) fn forget(&self) {
        if self.authoritative {
            return;
        }
        let mut known = self.write();
        forget_all_but_pending(&mut known);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.synced_until.store(0, Ordering::Release);
    }

    fn learn(
        &self,
        stamps: impl IntoIterator<Item = (impl Into<Box<str>>, u64)>,
        call: Option<u64>,
        epoch: Option<u64>,
    ) {
        let mut known = self.write();
        if epoch.is_some_and(|e| e != self.epoch.load(Ordering::Acquire)) {
            return;
        }
        let plausible = plausible_stamps();
        let now = self.time.now();
        // A message (another instance's stamp): a lower bound of the tag's
        // stamp, never trusted as the whole truth (a later stamp's message may
        // have been lost); one past what is plausible is not believed at all.
        let told = call.is_none() && epoch.is_none() && !self.authoritative;
        let mut raised = false;
        let mut highest = 0;
        // Only a read from the store makes a stamp trusted anew; a message, or
        // this instance's own landing on a tag no longer pending (the book
        // forgot meanwhile), raises it as a lower bound.
        let read = epoch.is_some() || self.authoritative;
        for (name, stamp) in stamps {
            let slot = known
                .entry(name.into())
                .or_insert(Known::Stamp(0, UNTRUSTED));
            if told && stamp > plausible {
                // Not believed: the tag's stamp is read from Redis next time.
                if let Known::Stamp(old, _) = *slot {
                    *slot = Known::Stamp(old, UNTRUSTED);
                    raised = true;
                }
                continue;
            }
            highest = highest.max(stamp);
            match *slot {
                Known::Stamp(old, at) if old < stamp => {
                    *slot = Known::Stamp(stamp, if read { now } else { at });
                    raised = true;
                }
                Known::Stamp(old, _) if read => *slot = Known::Stamp(old, now),
                Known::Stamp(..) => {}
                Known::Pending {
                    call: pending,
                    told: lower,
                    forgot,
                } if call.is_some_and(|c| pending <= c) => {
                    let at = if forgot { UNTRUSTED } else { now };
                    *slot = Known::Stamp(stamp.max(lower), at);
                    raised = true;
                }
                Known::Pending {
                    call,
                    told: lower,
                    forgot,
                } => {
                    *slot = Known::Pending {
                        call,
                        told: lower.max(stamp),
                        forgot,
                    };
                }
            }
        }
        self.clock.fetch_max(highest, Ordering::AcqRel);
        if known.len() > MAX_KNOWN {
            forget_all_but_pending(&mut known);
            if self.authoritative {
                self.floor.store(self.clock(), Ordering::Release);
            }
            self.epoch.fetch_add(1, Ordering::AcqRel);
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

/// Forgets every stamp; pending tags stay pending, marked as having seen
/// the book forget.
fn forget_all_but_pending(known: &mut HashMap<Box<str>, Known>) {
    known.retain(|_, k| match k {
        Known::Pending { forgot, .. } => {
            *forgot = true;
            true
        }
        Known::Stamp(..) => false,
    });
}

/// The highest stamp a message may move the tag clock to: this machine's time in
/// microseconds, and [`PLAUSIBLE_AHEAD`] more.
fn plausible_stamps() -> u64 {
    let ahead = SystemTime::now() + PLAUSIBLE_AHEAD;
    let micros = ahead
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    u64::try_from(micros).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn with_an_l2_a_stamp_is_trusted_for_a_while_then_read_again() {
        let time = ManualClock::new();
        let book = TagBook::new(false, Clock::from(time.clone()), Duration::from_secs(60));
        let entry = tags(&["t"], 5);
        book.read([("t", 3)], book.epoch());
        assert!(book.holds(&entry));
        time.advance(Duration::from_secs(61));
        assert_eq!(
            book.check(&entry),
            Check::Unknown,
            "a message may have been lost"
        );
        assert_eq!(book.unknown(&entry), ["t"]);
        book.read([("t", 3)], book.epoch());
        assert_eq!(book.check(&entry), Check::Valid, "read again");
    }

    fn tags(names: &[&str], born: u64) -> std::sync::Arc<Tags> {
        Tags::new(names.iter().map(|n| (*n).into()).collect(), born)
    }

    #[test]
    fn an_entry_holds_until_a_tag_is_stamped_after_its_birth() {
        let book = TagBook::new(false, Clock::system(), Duration::from_secs(60));
        let entry = tags(&["user:7", "orders"], 5);
        assert_eq!(book.check(&entry), Check::Unknown);
        assert!(!book.holds(&entry), "unknown is not trusted");
        book.read([("user:7", 3), ("orders", 0)], book.epoch());
        assert_eq!(book.clock(), 3);
        assert!(book.holds(&entry));
        book.invalidated(["orders"], 5, None);
        assert!(
            book.holds(&entry),
            "stamped at its birth: the load began after"
        );
        book.invalidated(["orders"], 6, None);
        assert!(!book.holds(&entry));
        assert_eq!(book.clock(), 6);
        book.read([("orders", 4)], book.epoch());
        assert!(!book.holds(&entry), "a stale read does not lower a stamp");
        assert!(book.holds(&tags(&["user:7", "orders"], 6)));
    }

    #[test]
    fn pending_tags_hold_nothing_until_their_own_stamp_lands() {
        let book = TagBook::new(false, Clock::system(), Duration::from_secs(60));
        book.read([("t", 1)], book.epoch());
        let first = book.pending(["t"]);
        assert_eq!(book.check(&tags(&["t"], 99)), Check::Pending);
        book.invalidated(["t"], 50, None);
        assert_eq!(book.check(&tags(&["t"], 99)), Check::Pending, "not ours");
        let second = book.pending(["t"]);
        book.invalidated(["t"], 20, Some(first));
        assert_eq!(
            book.check(&tags(&["t"], 99)),
            Check::Pending,
            "an older call's stamp leaves the newer call pending"
        );
        book.invalidated(["t"], 45, Some(second));
        assert_eq!(
            book.check(&tags(&["t"], 49)),
            Check::Invalidated,
            "the landing is at least what a message told meanwhile (50)"
        );
        assert_eq!(book.check(&tags(&["t"], 50)), Check::Valid);
        let third = book.pending(["t"]);
        book.forget();
        assert_eq!(book.check(&tags(&["t"], 99)), Check::Pending, "kept");
        book.invalidated(["t"], 80, Some(third + 5));
        assert_eq!(
            book.check(&tags(&["t"], 80)),
            Check::Unknown,
            "a replay that covers it, after a forget: a lower bound, read again"
        );
        assert_eq!(book.check(&tags(&["t"], 79)), Check::Invalidated);
    }

    #[test]
    fn a_message_raises_a_stamp_but_is_not_trusted_alone() {
        let book = TagBook::new(false, Clock::system(), Duration::from_secs(60));
        book.invalidated(["t"], 5, None);
        assert_eq!(book.check(&tags(&["t"], 9)), Check::Unknown, "ask Redis");
        book.read([("t", 7)], book.epoch());
        book.invalidated(["t"], 8, None);
        assert_eq!(book.check(&tags(&["t"], 7)), Check::Invalidated);
        assert_eq!(book.check(&tags(&["t"], 8)), Check::Valid);
    }

    #[test]
    fn stamps_read_before_the_book_forgot_are_dropped() {
        let book = TagBook::new(false, Clock::system(), Duration::from_secs(60));
        let epoch = book.epoch();
        book.forget();
        book.read([("t", 1)], epoch);
        assert_eq!(book.check(&tags(&["t"], 5)), Check::Unknown);
    }

    #[test]
    fn an_implausible_message_is_not_believed_but_makes_the_stamp_be_read() {
        let book = TagBook::new(false, Clock::system(), Duration::from_secs(60));
        book.read([("t", 1)], book.epoch());
        book.invalidated(["t"], u64::MAX, None);
        assert_eq!(book.clock(), 1);
        assert_eq!(
            book.check(&tags(&["t"], 5)),
            Check::Unknown,
            "read it again"
        );
    }

    #[test]
    fn an_own_landing_after_the_book_forgot_is_a_lower_bound() {
        let book = TagBook::new(false, Clock::system(), Duration::from_secs(60));
        let call = book.pending(["t"]);
        book.invalidated(["t"], 9, Some(call)); // landed: trusted
        assert_eq!(book.check(&tags(&["t"], 9)), Check::Valid);
        let older = book.pending(["u"]);
        book.invalidated(["u"], 4, Some(older));
        book.forget();
        book.invalidated(["u"], 6, Some(older)); // a slow reply, after the forget
        assert_eq!(book.check(&tags(&["u"], 7)), Check::Unknown);
    }

    #[test]
    fn without_an_l2_the_book_is_the_truth() {
        let book = TagBook::new(true, Clock::system(), Duration::from_secs(60));
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
        let book = TagBook::new(false, Clock::system(), Duration::from_secs(60));
        book.read([("a", 2)], book.epoch());
        let entry = tags(&["a"], 2);
        assert!(book.holds(&entry));
        book.forget();
        assert!(!book.holds(&entry));
        assert_eq!(book.unknown(&entry), ["a"]);
        assert_eq!(book.clock(), 2, "the clock stays a lower bound");
    }
}
