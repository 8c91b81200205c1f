//! Work the store owes: deletions (of keys, of glob matches, of the whole
//! namespace) that failed, timed out, were cancelled or were cut short. It is
//! replayed before this instance reads the store again (a read could otherwise
//! see what was deleted), and by a background task with backoff (other
//! instances read the store too). Work leaves the list only once the store
//! confirmed it, so a failed or cancelled replay loses nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::namespace::Namespace;
use crate::observe::Counter;
use crate::remote::gate::Gate;
use crate::remote::store::{ScanCursor, ScanStep};
use crate::remote::Remote;

/// Past this many owed keys, the whole namespace is cleared instead.
const MAX_PENDING: usize = 10_000;

/// How many owed keys one replayed deletion removes.
const REPLAY_BATCH: usize = 1000;

/// The background replay's backoff: first delay and cap.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_CAP: Duration = Duration::from_secs(5);

/// What is owed, with how far each walk got.
#[derive(Default)]
struct Pending {
    /// Key → the deferral's number (a key deferred again while being replayed is
    /// kept).
    keys: HashMap<String, u64>,
    /// Glob walks, with how far each got.
    patterns: Vec<(String, ScanCursor)>,
    /// A walk of the whole namespace, with how far it got.
    clear: Option<ScanCursor>,
    next_number: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.patterns.is_empty() && self.clear.is_none()
    }
}

/// Something to owe.
pub(crate) enum Work {
    Key(String),
    Pattern(String, ScanCursor),
    Clear(ScanCursor),
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
pub(super) struct UntilDone<'a> {
    owed: &'a Owed,
    work: Option<Work>,
}

impl UntilDone<'_> {
    /// The work landed: nothing is owed.
    pub(super) fn done(&mut self) {
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
            self.owed.defer(work);
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

    /// Whether anything is owed.
    pub(super) fn is_owed(&self) -> bool {
        self.has_pending.load(Ordering::Acquire)
    }

    /// A guard that owes `work` unless it is marked done.
    pub(super) fn until_done(&self, work: Work) -> UntilDone<'_> {
        UntilDone {
            owed: self,
            work: Some(work),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn defer(&self, work: Work) {
        let mut pending = self.lock();
        match work {
            Work::Key(key) => {
                pending.next_number += 1;
                let number = pending.next_number;
                pending.keys.insert(key, number);
                if pending.keys.len() > MAX_PENDING {
                    pending.keys.clear();
                    pending.patterns.clear();
                    pending.clear = Some(ScanCursor::default());
                }
            }
            Work::Pattern(glob, cursor) => {
                if pending.clear.is_none() {
                    match pending.patterns.iter_mut().find(|(g, _)| *g == glob) {
                        // The same glob again: walk it again from the start.
                        Some(existing) => existing.1 = ScanCursor::default(),
                        None => pending.patterns.push((glob, cursor)),
                    }
                }
            }
            Work::Clear(cursor) => {
                // What is owed so far is covered by the walk of the whole namespace.
                pending.keys.clear();
                pending.patterns.clear();
                let restart = pending.clear.is_some();
                pending.clear = Some(if restart {
                    ScanCursor::default()
                } else {
                    cursor
                });
            }
        }
        self.has_pending.store(true, Ordering::Release);
    }

    /// Replays owed work for up to one budget. Returns whether none is left
    /// (reads of the store must wait until then: they could see a deleted value).
    pub(super) async fn flush(&self, gate: &Gate, namespace: &Namespace) -> bool {
        let Some(_flushing) = self.flushing.try_lock() else {
            return false; // another caller is flushing; this read skips L2
        };
        let started = Instant::now();
        loop {
            let (clear, pattern, keys) = {
                let pending = self.lock();
                if pending.is_empty() {
                    self.has_pending.store(false, Ordering::Release);
                    return true;
                }
                let keys: Vec<(String, u64)> = pending
                    .keys
                    .iter()
                    .take(REPLAY_BATCH)
                    .map(|(k, n)| (k.clone(), *n))
                    .collect();
                (pending.clear, pending.patterns.first().cloned(), keys)
            };
            if started.elapsed() >= self.budget {
                return false;
            }
            if let Some(cursor) = clear {
                let Some(step) = step(gate, &namespace.everything(), cursor).await else {
                    return false;
                };
                let mut pending = self.lock();
                if pending.clear == Some(cursor) {
                    pending.clear = step.next;
                    if step.next.is_none() {
                        gate.report().event(Counter::L2NamespaceClears);
                    }
                }
            } else if let Some((glob, cursor)) = pattern {
                let Some(step) = step(gate, &glob, cursor).await else {
                    return false;
                };
                let mut pending = self.lock();
                if let Some(i) = pending
                    .patterns
                    .iter()
                    .position(|p| *p == (glob.clone(), cursor))
                {
                    match step.next {
                        Some(next) => pending.patterns[i].1 = next,
                        None => {
                            pending.patterns.remove(i);
                        }
                    }
                }
            } else {
                let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
                if gate
                    .call("delete", gate.store().delete(&names))
                    .await
                    .is_none()
                {
                    return false;
                }
                let mut pending = self.lock();
                for (key, number) in keys {
                    if pending.keys.get(&key) == Some(&number) {
                        pending.keys.remove(&key);
                    }
                }
            }
        }
    }
}

async fn step(gate: &Gate, glob: &str, cursor: ScanCursor) -> Option<ScanStep> {
    gate.call("scan", gate.store().delete_matching(glob, cursor))
        .await
}

impl Remote {
    /// Deletes `key`. Returns whether it landed; if the store cannot be reached
    /// (or this call is cancelled), the deletion is owed.
    pub(crate) async fn delete(&self, key: String) -> bool {
        let keys = [key];
        let mut owed = self.owed.until_done(Work::Key(keys[0].clone()));
        let landed = self
            .call("delete", self.gate.store().delete(&keys))
            .await
            .is_some();
        if landed {
            owed.done();
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
        let mut until_done = self.owed.until_done(owed(cursor));
        loop {
            let step = self.gate.store().delete_matching(glob, cursor);
            let Some(step) = self.call("scan", step).await else {
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
    pub(crate) fn keep_replaying(self: &Arc<Self>) {
        let owed = &self.owed;
        if !owed.is_owed() || owed.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            owed.retrying.store(false, Ordering::Release);
            return;
        };
        let remote = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP, 0.0);
            loop {
                backoff.wait().await;
                let Some(remote) = remote.upgrade() else {
                    return;
                };
                let owed = &remote.owed;
                if owed.flush(&remote.gate, &remote.namespace).await {
                    owed.retrying.store(false, Ordering::Release);
                    // Owed again meanwhile, with nobody to see to it: go on.
                    if !owed.is_owed() || owed.retrying.swap(true, Ordering::AcqRel) {
                        return;
                    }
                    backoff.reset();
                }
            }
        });
    }
}
