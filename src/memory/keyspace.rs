//! The data of a [`MemoryStore`](super::MemoryStore): keys with bytes and an
//! optional expiry, and the order the keys were created in, which is what a
//! `delete_matching` walk's cursor moves along.
//!
//! # Why a creation order
//!
//! Redis's `SCAN` promises that a key present from a walk's first step to its last
//! is returned, and that the walk ends, even while keys come and go. Here every key
//! gets a sequence number when it is created (a key that is deleted or expires and
//! is then written again is a new key, with a new, larger number; overwriting a live
//! key keeps its number, as Redis keeps its hash slot), and a cursor is "the next
//! number to look at". A key that lives through the walk keeps its number, so the
//! walk passes it exactly once; keys created during the walk come after the cursor
//! and are removed too (Redis may or may not return them). A walk ends at the step
//! that reaches the newest key: only writers that keep creating more than a step's
//! worth of matching-or-not keys between every two steps could keep it going.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::clock::saturating_nanos;
use crate::pattern::Pattern;

/// How many keys one scan step looks at (`SCAN ... COUNT 1000` in `RedisStore`).
pub(crate) const SCAN_BATCH: usize = 1000;

/// Keys and their creation order.
#[derive(Debug, Default)]
pub(crate) struct Keyspace {
    entries: HashMap<String, Stored>,
    /// Sequence number → key, for every key in `entries`.
    created: BTreeMap<u64, String>,
    next_seq: u64,
}

#[derive(Debug)]
struct Stored {
    bytes: Vec<u8>,
    /// Clock nanoseconds from which the key is gone; `None`: never.
    expires: Option<u64>,
    seq: u64,
}

impl Stored {
    fn is_expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }
}

/// What one scan step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) deleted: u64,
    /// The sequence number to resume at, or `None` when the walk is complete.
    pub(crate) next: Option<u64>,
}

/// The expiry of a write at `now` for `ttl`, as Redis's `PX` takes it: whole
/// milliseconds, at least 1 and at most [`Ttl::MAX`](crate::policy::Ttl::MAX) (as
/// `RedisStore` sends it), so that both stores expire a key in the same
/// millisecond. (At its expiry instant a key is gone here, as the cache's own
/// entries are; Redis keeps it to the end of that millisecond.)
pub(crate) fn expiry(now: u64, ttl: Duration) -> u64 {
    let ttl = ttl.min(crate::policy::Ttl::MAX);
    let millis = Duration::from_millis(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
    now.saturating_add(saturating_nanos(millis))
}

/// Whether `SCAN MATCH glob` returns `key`. [`Pattern::matches`] is Redis's
/// matcher for keys inside a namespace, which are never empty; Redis itself
/// matches the empty key only with the glob `*` (which `SCAN` does not even apply)
/// or the empty glob.
fn scan_matches(pattern: &Pattern, key: &str) -> bool {
    if key.is_empty() {
        return matches!(pattern.as_str(), "*" | "");
    }
    pattern.matches(key)
}

impl Keyspace {
    /// The live entry at `key`, removing it first if it expired.
    fn live(&mut self, key: &str, now: u64) -> Option<&mut Stored> {
        if self.entries.get(key)?.is_expired(now) {
            self.remove_entry(key);
            return None;
        }
        self.entries.get_mut(key)
    }

    fn remove_entry(&mut self, key: &str) -> Option<Stored> {
        let stored = self.entries.remove(key)?;
        self.created.remove(&stored.seq);
        Some(stored)
    }

    /// The bytes at `key`, if it is live.
    pub(crate) fn get(&mut self, key: &str, now: u64) -> Option<Vec<u8>> {
        self.live(key, now).map(|stored| stored.bytes.clone())
    }

    /// Whether `key` is live and holds exactly `bytes`.
    pub(crate) fn holds(&mut self, key: &str, bytes: &[u8], now: u64) -> bool {
        self.live(key, now)
            .is_some_and(|stored| stored.bytes == bytes)
    }

    /// Writes `key` (a live key keeps its place in the creation order).
    pub(crate) fn set(&mut self, key: &str, bytes: &[u8], expires: Option<u64>, now: u64) {
        if let Some(stored) = self.live(key, now) {
            stored.bytes = bytes.to_vec();
            stored.expires = expires;
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.created.insert(seq, key.to_owned());
        self.entries.insert(
            key.to_owned(),
            Stored {
                bytes: bytes.to_vec(),
                expires,
                seq,
            },
        );
    }

    /// Removes `key`; returns whether it was live.
    pub(crate) fn remove(&mut self, key: &str, now: u64) -> bool {
        match self.remove_entry(key) {
            Some(stored) => !stored.is_expired(now),
            None => false,
        }
    }

    /// Every live key, sorted.
    pub(crate) fn keys(&mut self, now: u64) -> Vec<String> {
        self.purge(now);
        let mut keys: Vec<String> = self.entries.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// The time left before `key` expires: `None` if it is not live,
    /// `Some(None)` if it never expires.
    pub(crate) fn ttl(&mut self, key: &str, now: u64) -> Option<Option<Duration>> {
        let stored = self.live(key, now)?;
        Some(stored.expires.map(|at| Duration::from_nanos(at - now)))
    }

    /// Removes every expired key.
    fn purge(&mut self, now: u64) {
        let created = &mut self.created;
        self.entries.retain(|_, stored| {
            let keep = !stored.is_expired(now);
            if !keep {
                created.remove(&stored.seq);
            }
            keep
        });
    }

    /// One step of a walk: looks at up to [`SCAN_BATCH`] keys created at or after
    /// `from`, removes those matching `pattern` (and those expired, uncounted, as
    /// `SCAN` skips them).
    pub(crate) fn scan_step(&mut self, pattern: &Pattern, from: u64, now: u64) -> Step {
        let mut batch = self.created.range(from..);
        let mut next = None;
        let mut doomed = Vec::new();
        for seen in 0..=SCAN_BATCH {
            let Some((&seq, key)) = batch.next() else {
                break;
            };
            if seen == SCAN_BATCH {
                next = Some(seq);
                break;
            }
            let expired = self.entries.get(key).is_some_and(|s| s.is_expired(now));
            if expired || scan_matches(pattern, key) {
                doomed.push((key.clone(), expired));
            }
        }
        let mut deleted = 0;
        for (key, expired) in doomed {
            self.remove_entry(&key);
            if !expired {
                deleted += 1;
            }
        }
        Step { deleted, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn walk(keys: &mut Keyspace, glob: &str, now: u64) -> (u64, usize) {
        let pattern = Pattern::new(glob);
        let (mut deleted, mut steps, mut from) = (0, 0, 0);
        loop {
            let step = keys.scan_step(&pattern, from, now);
            deleted += step.deleted;
            steps += 1;
            match step.next {
                Some(next) => from = next,
                None => return (deleted, steps),
            }
        }
    }

    #[test]
    fn expiry_is_in_whole_milliseconds_at_least_one() {
        assert_eq!(expiry(5, Duration::ZERO), 5 + MS);
        assert_eq!(expiry(0, Duration::from_micros(2500)), 2 * MS);
        assert_eq!(
            expiry(0, Duration::MAX),
            saturating_nanos(crate::policy::Ttl::MAX),
            "clamped like RedisStore's PX"
        );
        assert_eq!(expiry(u64::MAX - 1, Duration::from_secs(1)), u64::MAX);
    }

    #[test]
    fn expired_keys_are_absent_and_recreated_keys_are_new() {
        let mut keys = Keyspace::default();
        keys.set("a", b"1", Some(10 * MS), 0);
        assert_eq!(keys.get("a", 10 * MS - 1), Some(b"1".to_vec()));
        assert_eq!(keys.get("a", 10 * MS), None, "gone at its expiry");
        assert!(
            keys.entries.is_empty() && keys.created.is_empty(),
            "removed"
        );
        keys.set("a", b"2", None, 10 * MS);
        keys.set("a", b"3", None, 10 * MS);
        assert_eq!(keys.entries["a"].seq, 1, "an overwrite keeps the number");
        assert_eq!(keys.ttl("a", 0), Some(None));
        assert!(keys.remove("a", 0));
        assert!(!keys.remove("a", 0));
    }

    #[test]
    fn a_walk_takes_one_step_per_batch_and_counts_what_it_removed() {
        let mut keys = Keyspace::default();
        for n in 0..2500 {
            keys.set(&format!("k:{n}"), b"v", None, 0);
        }
        keys.set("other", b"v", None, 0);
        keys.set("k:expired", b"v", Some(MS), 0);
        assert_eq!(walk(&mut keys, "k:*", 2 * MS), (2500, 3));
        assert_eq!(keys.keys(2 * MS), ["other"]);
        assert_eq!(walk(&mut keys, "k:*", 2 * MS), (0, 1), "nothing left");
        assert_eq!(walk(&mut Keyspace::default(), "*", 0), (0, 1), "empty");
    }

    #[test]
    fn a_walk_ends_at_its_last_key_even_after_a_full_batch() {
        let mut keys = Keyspace::default();
        for n in 0..SCAN_BATCH {
            keys.set(&n.to_string(), b"v", None, 0);
        }
        let pattern = Pattern::new("*");
        assert_eq!(
            keys.scan_step(&pattern, 0, 0),
            Step {
                deleted: 1000,
                next: None
            },
            "exactly one batch: done"
        );
        for n in 0..=SCAN_BATCH {
            keys.set(&n.to_string(), b"v", None, 0);
        }
        let first = keys.scan_step(&pattern, 0, 0);
        assert_eq!(first.deleted, 1000);
        let second = keys.scan_step(&pattern, first.next.unwrap(), 0);
        assert_eq!(
            second,
            Step {
                deleted: 1,
                next: None
            }
        );
    }

    #[test]
    fn keys_living_through_a_walk_are_removed_once_and_the_walk_ends() {
        let mut keys = Keyspace::default();
        for n in 0..3000 {
            keys.set(&format!("k:{n}"), b"v", None, 0);
        }
        let pattern = Pattern::new("k:*");
        let first = keys.scan_step(&pattern, 0, 0);
        assert_eq!(first.deleted, 1000);
        // Meanwhile: a key not yet reached is overwritten (it stays in place), one
        // already passed is created again (after the cursor: removed again), and
        // new keys come.
        keys.set("k:2999", b"new", None, 0);
        keys.set("k:0", b"again", None, 0);
        keys.set("k:new", b"v", None, 0);
        let (rest, steps) = {
            let (mut deleted, mut steps, mut from) = (0, 0, first.next.unwrap());
            loop {
                let step = keys.scan_step(&pattern, from, 0);
                deleted += step.deleted;
                steps += 1;
                match step.next {
                    Some(next) => from = next,
                    None => break (deleted, steps),
                }
            }
        };
        assert_eq!(rest, 2002, "k:1000..=k:2999 once each, k:0 and k:new");
        assert_eq!(steps, 3);
        assert!(keys.keys(0).is_empty());
    }

    #[test]
    fn the_empty_key_matches_as_in_redis() {
        for (glob, matched) in [("*", true), ("", true), ("**", false), ("?", false)] {
            let mut keys = Keyspace::default();
            keys.set("", b"v", None, 0);
            assert_eq!(walk(&mut keys, glob, 0).0, u64::from(matched), "{glob:?}");
        }
        let mut keys = Keyspace::default();
        keys.set("a", b"v", None, 0);
        assert_eq!(walk(&mut keys, "", 0).0, 0);
    }
}
