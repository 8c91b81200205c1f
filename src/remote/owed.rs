//! Work the store owes: deletions (of keys, of glob matches, of the whole
//! namespace) that failed, timed out, were cancelled or were cut short. It is
//! replayed before this instance reads the store again (a read could otherwise
//! see what was deleted), and by a background task with backoff (other
//! instances read the store too). Work leaves the list only once the store
//! confirmed it, so a failed or cancelled replay loses nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::backoff::Backoff;
use crate::observe::Counter;
use crate::remote::gate::Gate;
use crate::remote::store::{ScanCursor, ScanStep};
use crate::remote::{Landed, Remote};

/// Past this many owed keys, the whole namespace is cleared instead.
const MAX_PENDING: usize = 10_000;

/// How many owed keys one replayed deletion removes.
const REPLAY_BATCH: usize = 1000;

/// The background replay's backoff: first delay and cap.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_CAP: Duration = Duration::from_secs(5);

/// What is owed, with how far each walk got. Every deferral has a number, so
/// that a replay step only confirms the very work it started on (a key deferred
/// again, or a walk restarted, while the step ran stays owed).
#[derive(Default)]
struct Pending {
    /// Key → the deferral's number.
    keys: HashMap<String, u64>,
    /// Glob walks, with how far each got.
    patterns: Vec<(String, Walk)>,
    /// A walk of the whole namespace, with how far it got.
    clear: Option<Walk>,
    /// Tags to stamp → the deferral's number, and the latest invalidation
    /// call it stands for.
    tags: HashMap<String, (u64, u64)>,
    next_number: u64,
}

/// How far an owed walk got, and the number of its (re)start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Walk {
    cursor: ScanCursor,
    number: u64,
}

/// What one replay came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replayed {
    /// Nothing is owed any more.
    Done,
    /// Work was confirmed, but some is left (the budget ran out).
    Progress,
    /// A step failed (or the breaker is open, or another caller is replaying):
    /// try again later.
    Failed,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.patterns.is_empty()
            && self.clear.is_none()
            && self.tags.is_empty()
    }

    fn number(&mut self) -> u64 {
        self.next_number += 1;
        self.next_number
    }

    /// A walk of the whole namespace from its start: it removes every key that
    /// exists while it runs, so nothing owed before needs a walk of its own
    /// (owed tag stamps stay: entries written later may carry older births).
    fn clear_from_start(&mut self) {
        let number = self.number();
        self.keys.clear();
        self.patterns.clear();
        self.clear = Some(Walk {
            cursor: ScanCursor::default(),
            number,
        });
    }
}

/// Something to owe.
pub(crate) enum Work {
    Keys(Vec<String>),
    Pattern(String, ScanCursor),
    Clear(ScanCursor),
    /// Tags to stamp (their names), for this instance's invalidation call of
    /// this number.
    Tags(Vec<String>, u64),
}

/// The owed-work list of one cache's L2.
pub(super) struct Owed {
    pending: Mutex<Pending>,
    has_pending: AtomicBool,
    /// Held by the one caller replaying.
    flushing: futures_util::lock::Mutex<()>,
    /// Whether the background replay runs.
    retrying: AtomicBool,
    /// How long one replay may take before the read that runs it goes on.
    budget: Duration,
}

/// Owes its work when dropped before [`done`](Self::done): a change whose call
/// failed, timed out or was cancelled (its caller's future dropped) is replayed
/// later, never lost.
pub(crate) struct UntilDone<'a> {
    remote: &'a Remote,
    work: Option<Work>,
}

impl UntilDone<'_> {
    /// The work landed: nothing is owed.
    pub(crate) fn done(&mut self) {
        self.work = None;
    }

    /// The work still to do, if this is dropped now.
    fn owe(&mut self, work: Work) {
        self.work = Some(work);
    }
}

impl Drop for UntilDone<'_> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            self.remote.owed.defer(work);
            // Also when the call was cancelled: nobody else may ever replay it.
            self.remote.keep_replaying();
        }
    }
}

impl Owed {
    pub(super) fn new(budget: Duration) -> Self {
        Owed {
            pending: Mutex::new(Pending::default()),
            has_pending: AtomicBool::new(false),
            flushing: futures_util::lock::Mutex::new(()),
            retrying: AtomicBool::new(false),
            budget,
        }
    }

    /// How many changes are owed (keys, walks, tags).
    pub(super) fn count(&self) -> usize {
        let pending = self.lock();
        pending.keys.len()
            + pending.patterns.len()
            + usize::from(pending.clear.is_some())
            + pending.tags.len()
    }

    /// Whether anything is owed.
    pub(super) fn is_owed(&self) -> bool {
        self.has_pending.load(Ordering::SeqCst)
    }

    /// A write of `key` landed: an older deletion of it owed is moot (what it
    /// would delete is gone, or newer and to be kept).
    pub(super) fn landed(&self, key: &str) {
        let mut pending = self.lock();
        if pending.keys.remove(key).is_some() && pending.is_empty() {
            self.has_pending.store(false, Ordering::SeqCst);
        }
    }

    /// Tags were stamped, by this instance's invalidation call `call`: owed
    /// stampings of them for calls up to it are moot (the new stamp is later
    /// than any they would give); one owed for a later call stays.
    pub(super) fn tags_landed(&self, tags: &[String], call: u64) {
        let mut pending = self.lock();
        let before = pending.tags.len();
        for tag in tags {
            if pending.tags.get(tag).is_some_and(|(_, owed)| *owed <= call) {
                pending.tags.remove(tag);
            }
        }
        if pending.tags.len() < before && pending.is_empty() {
            self.has_pending.store(false, Ordering::SeqCst);
        }
    }

    /// Whether deletions (keys, walks) are owed: reads wait for those (they
    /// could see what was deleted), not for tag stamps (tags pending here
    /// keep their entries unreadable by themselves).
    pub(super) fn deletions_owed(&self) -> bool {
        if !self.is_owed() {
            return false;
        }
        let pending = self.lock();
        !(pending.keys.is_empty() && pending.patterns.is_empty() && pending.clear.is_none())
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn defer(&self, work: Work) {
        let mut pending = self.lock();
        match work {
            Work::Tags(tags, call) => {
                for tag in tags {
                    let number = pending.number();
                    let slot = pending.tags.entry(tag).or_insert((number, call));
                    *slot = (number, slot.1.max(call));
                }
            }
            Work::Keys(keys) => {
                for key in keys {
                    let number = pending.number();
                    pending.keys.insert(key, number);
                }
                if pending.keys.len() > MAX_PENDING {
                    pending.clear_from_start();
                }
            }
            // A clear that has not got past the start covers a pattern, if it
            // is restarted (a step from the start may be out already, and may
            // have passed the pattern's keys): a clear past the start does not
            // cover it (it never revisits the keys before its cursor).
            Work::Pattern(_, _)
                if pending
                    .clear
                    .is_some_and(|walk| walk.cursor == ScanCursor::default()) =>
            {
                pending.clear_from_start();
            }
            Work::Pattern(glob, cursor) => {
                let number = pending.number();
                match pending.patterns.iter_mut().find(|(g, _)| *g == glob) {
                    // The same glob again: walk it again from the start.
                    Some((_, walk)) => {
                        *walk = Walk {
                            cursor: ScanCursor::default(),
                            number,
                        }
                    }
                    None => pending.patterns.push((glob, Walk { cursor, number })),
                }
            }
            // Another clear while one is owed: walk again from the start.
            Work::Clear(_) if pending.clear.is_some() => pending.clear_from_start(),
            Work::Clear(cursor) if cursor == ScanCursor::default() => pending.clear_from_start(),
            // A clear cut short at `cursor`: what is owed besides stays owed (the
            // rest of this walk does not revisit the keys before `cursor`).
            Work::Clear(cursor) => {
                let number = pending.number();
                pending.clear = Some(Walk { cursor, number });
            }
        }
        self.has_pending.store(true, Ordering::SeqCst);
    }
}

async fn step(gate: &Gate, glob: &str, cursor: ScanCursor) -> Option<ScanStep> {
    gate.call("scan", gate.store().delete_matching(glob, cursor))
        .await
}

impl Remote {
    /// A guard that owes `work` unless it is marked done.
    pub(super) fn until_done(&self, work: Work) -> UntilDone<'_> {
        UntilDone {
            remote: self,
            work: Some(work),
        }
    }

    /// Replays owed work for up to one budget, and announces what landed (reads
    /// of the store must wait until nothing is owed: they could see a deleted
    /// value).
    pub(super) async fn replay(&self) -> Replayed {
        let (owed, gate, namespace) = (&self.owed, &self.gate, &self.namespace);
        let Some(_replaying) = owed.flushing.try_lock() else {
            return Replayed::Failed; // another caller is replaying: not done yet
        };
        let started = tokio::time::Instant::now();
        let mut progress = false;
        loop {
            let (clear, pattern, keys, tags) = {
                let pending = owed.lock();
                if pending.is_empty() {
                    owed.has_pending.store(false, Ordering::SeqCst);
                    return Replayed::Done;
                }
                let tags: Vec<(String, (u64, u64))> = pending
                    .tags
                    .iter()
                    .take(REPLAY_BATCH)
                    .map(|(t, n)| (t.clone(), *n))
                    .collect();
                let keys: Vec<(String, u64)> = pending
                    .keys
                    .iter()
                    .take(REPLAY_BATCH)
                    .map(|(k, n)| (k.clone(), *n))
                    .collect();
                (pending.clear, pending.patterns.first().cloned(), keys, tags)
            };
            if started.elapsed() >= owed.budget {
                return if progress {
                    Replayed::Progress
                } else {
                    Replayed::Failed
                };
            }
            if let Some(walk) = clear {
                let Some(step) = step(gate, &namespace.everything(), walk.cursor).await else {
                    return Replayed::Failed;
                };
                let mut pending = owed.lock();
                if pending.clear == Some(walk) {
                    match step.next {
                        Some(cursor) => pending.clear = Some(Walk { cursor, ..walk }),
                        None => {
                            pending.clear = None;
                            drop(pending);
                            gate.report().event(Counter::L2NamespaceClears);
                            (self.announce)(Landed::All);
                        }
                    }
                }
            } else if let Some((glob, walk)) = pattern {
                let Some(step) = step(gate, &glob, walk.cursor).await else {
                    return Replayed::Failed;
                };
                let mut pending = owed.lock();
                if let Some(i) = pending
                    .patterns
                    .iter()
                    .position(|(g, w)| *g == glob && *w == walk)
                {
                    match step.next {
                        Some(cursor) => pending.patterns[i].1 = Walk { cursor, ..walk },
                        None => {
                            pending.patterns.remove(i);
                            drop(pending);
                            if let Some(pattern) = namespace.pattern_of(&glob) {
                                (self.announce)(Landed::Pattern(pattern.to_owned()));
                            }
                        }
                    }
                }
            } else if !keys.is_empty() {
                let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
                if gate
                    .call("delete", gate.store().delete(&names))
                    .await
                    .is_none()
                {
                    return Replayed::Failed;
                }
                let mut landed = Vec::with_capacity(keys.len());
                let mut pending = owed.lock();
                for (key, number) in keys {
                    if pending.keys.get(&key) == Some(&number) {
                        pending.keys.remove(&key);
                        landed.push(key);
                    }
                }
                drop(pending);
                let mut landed: Vec<String> = landed
                    .iter()
                    .filter_map(|key| namespace.key_of(key).map(str::to_owned))
                    .collect();
                // One message for what one replay step landed.
                match landed.len() {
                    0 => {}
                    1 => (self.announce)(Landed::Key(landed.remove(0))),
                    _ => (self.announce)(Landed::Keys(landed)),
                }
            } else {
                // Tags last: a stamp that keeps failing does not hold back
                // the deletions owed with it.
                let keys: Vec<String> = tags.iter().map(|(t, _)| namespace.tag_key(t)).collect();
                let clock = namespace.tag_clock();
                let stamping = gate.store().stamp_tags(&clock, &keys);
                let Some(stamp) = gate.call("stamp_tags", stamping).await else {
                    return Replayed::Failed;
                };
                let (mut landed, mut covered) = (Vec::with_capacity(tags.len()), 0);
                let mut pending = owed.lock();
                for (tag, number) in tags {
                    if pending.tags.get(&tag) == Some(&number) {
                        pending.tags.remove(&tag);
                        landed.push(tag);
                        covered = covered.max(number.1);
                    }
                }
                drop(pending);
                // A tag deferred again while the step ran stays owed (and
                // unreadable here): it is announced when its own stamp lands.
                // The stamp was asked for after every call it stands for began.
                if !landed.is_empty() {
                    (self.announce)(Landed::Tags(stamp, landed, covered));
                }
            }
            progress = true;
        }
    }

    /// Deletes `key`. Returns whether it landed; if the store cannot be reached
    /// (or this call is cancelled), the deletion is owed.
    pub(crate) async fn delete(&self, key: String) -> bool {
        self.delete_many(vec![key]).await
    }

    /// Deletes `keys` (store keys) in one call, each owed if it does not land.
    pub(crate) async fn delete_many(&self, keys: Vec<String>) -> bool {
        let mut owed = self.until_done(Work::Keys(keys.clone()));
        // Writes need not wait for owed work (reads do): an owed deletion that
        // lands after them only errs towards a miss.
        let landed = self
            .gate
            .call("delete", self.gate.store().delete(&keys))
            .await
            .is_some();
        if landed {
            owed.done();
            for key in &keys {
                self.owed.landed(key);
            }
        }
        landed
    }

    /// Deletes every key of this cache matching `pattern` (a glob over cache keys),
    /// one `SCAN` batch per call, each under its own timeout. Returns whether the
    /// walk completed; if the store fails midway, the rest of the walk is owed.
    pub(crate) async fn delete_pattern(&self, pattern: &str) -> bool {
        let glob = self.namespace.glob(pattern);
        self.walk(&glob, |cursor| Work::Pattern(glob.clone(), cursor))
            .await
    }

    /// Deletes every key of this cache's namespace, like
    /// [`delete_pattern`](Self::delete_pattern) with `*`.
    pub(crate) async fn clear(&self) -> bool {
        let glob = self.namespace.everything();
        self.walk(&glob, Work::Clear).await
    }

    async fn walk(&self, glob: &str, owed: impl Fn(ScanCursor) -> Work) -> bool {
        let mut cursor = ScanCursor::default();
        let mut until_done = self.until_done(owed(cursor));
        loop {
            let step = self.gate.store().delete_matching(glob, cursor);
            let Some(step) = self.gate.call("scan", step).await else {
                return false; // the guard owes the rest
            };
            match step.next {
                Some(next) => {
                    cursor = next;
                    until_done.owe(owed(cursor));
                }
                None => {
                    until_done.done();
                    return true;
                }
            }
        }
    }

    /// Starts the background replay of owed work, unless it runs or nothing is
    /// owed. It retries with backoff (50 ms doubling to 5 s) until nothing is
    /// owed or the tier is dropped. Needs a tokio runtime (else the next read's
    /// replay is the only one).
    pub(crate) fn keep_replaying(&self) {
        let owed = &self.owed;
        if !owed.is_owed() || owed.retrying.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            owed.retrying.store(false, Ordering::SeqCst);
            return;
        };
        let remote = self.this.clone();
        // Dropped with the task (polled or not: its runtime shut down) rather
        // than done, it lets the next deferral start another.
        let mut running = StopOnDrop(Some(remote.clone()));
        runtime.spawn(async move {
            let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP, 0.0);
            let mut replayed = Replayed::Failed;
            loop {
                match replayed {
                    // Work is being done: go on at once (a long walk is not
                    // slowed to one slice per backoff).
                    Replayed::Progress => {
                        backoff.reset();
                        tokio::task::yield_now().await;
                    }
                    Replayed::Failed | Replayed::Done => backoff.wait().await,
                }
                let Some(remote) = remote.upgrade() else {
                    return;
                };
                let owed = &remote.owed;
                replayed = remote.replay().await;
                if replayed == Replayed::Done {
                    owed.retrying.store(false, Ordering::SeqCst);
                    // Owed again meanwhile, with nobody to see to it: go on.
                    if !owed.is_owed() || owed.retrying.swap(true, Ordering::SeqCst) {
                        running.disarm();
                        return;
                    }
                    backoff.reset();
                }
            }
        });
    }
}

/// Marks the background replay stopped if its task is dropped while it holds
/// the flag (its runtime shut down).
struct StopOnDrop(Option<std::sync::Weak<Remote>>);

impl StopOnDrop {
    /// The task gave the flag up.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(remote) = self.0.take().and_then(|remote| remote.upgrade()) {
            remote.owed.retrying.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(position: u64) -> ScanCursor {
        ScanCursor::at(position)
    }

    fn owed() -> Owed {
        Owed::new(Duration::from_millis(100))
    }

    #[test]
    fn a_clear_cut_short_keeps_what_else_is_owed() {
        let owed = owed();
        owed.defer(Work::Keys(vec!["k".into()]));
        owed.defer(Work::Pattern("p*".into(), at(0)));
        owed.defer(Work::Clear(at(7)));
        owed.defer(Work::Keys(vec!["later".into()]));
        owed.defer(Work::Pattern("q*".into(), at(0)));
        let pending = owed.lock();
        assert_eq!(pending.clear.map(|w| w.cursor), Some(at(7)));
        assert!(pending.keys.contains_key("k") && pending.keys.contains_key("later"));
        let globs: Vec<&str> = pending.patterns.iter().map(|(g, _)| g.as_str()).collect();
        assert_eq!(
            globs,
            ["p*", "q*"],
            "the walk from 7 does not revisit their keys"
        );
    }

    #[test]
    fn a_clear_from_the_start_covers_what_is_owed() {
        let owed = owed();
        owed.defer(Work::Keys(vec!["k".into()]));
        owed.defer(Work::Pattern("p*".into(), at(3)));
        owed.defer(Work::Clear(at(0)));
        owed.defer(Work::Pattern("q*".into(), at(0)));
        let pending = owed.lock();
        assert!(pending.keys.is_empty() && pending.patterns.is_empty());
        assert_eq!(pending.clear.map(|w| w.cursor), Some(at(0)));
    }

    #[test]
    fn a_restarted_walk_is_not_advanced_by_a_step_of_the_old_one() {
        let owed = owed();
        owed.defer(Work::Clear(at(0)));
        let started = owed.lock().clear.unwrap();
        // While a step from the start runs, the walk is owed again (restarted,
        // at the same cursor): that step must not count for the new walk.
        owed.defer(Work::Clear(at(5)));
        let restarted = owed.lock().clear.unwrap();
        assert_eq!(restarted.cursor, started.cursor);
        assert_ne!(restarted, started);
        let owed = self::owed();
        owed.defer(Work::Pattern("p*".into(), at(4)));
        owed.defer(Work::Pattern("p*".into(), at(9)));
        let pending = owed.lock();
        assert_eq!(pending.patterns.len(), 1);
        assert_eq!(
            pending.patterns[0].1.cursor,
            at(0),
            "the same glob again restarts it"
        );
    }

    #[test]
    fn a_pattern_owed_behind_a_clear_at_its_start_restarts_it() {
        let owed = owed();
        owed.defer(Work::Clear(at(0)));
        // A replay step from the start may be out, and may already have passed
        // the keys the pattern matches (SCAN does not promise to return keys
        // written during a walk): it must not count for the walk that covers it.
        let out = owed.lock().clear.unwrap();
        owed.defer(Work::Pattern("p*".into(), at(0)));
        let pending = owed.lock();
        let now = pending.clear.unwrap();
        assert_eq!(now.cursor, at(0));
        assert_ne!(now, out, "the clear was restarted");
        assert!(pending.patterns.is_empty(), "and it covers the pattern");
    }

    #[test]
    fn too_many_owed_keys_become_a_clear_from_the_start() {
        let owed = owed();
        owed.defer(Work::Clear(at(42)));
        for i in 0..=MAX_PENDING {
            owed.defer(Work::Keys(vec![format!("k{i}")]));
        }
        let pending = owed.lock();
        assert!(pending.keys.is_empty());
        assert_eq!(pending.clear.map(|w| w.cursor), Some(at(0)));
    }
}
