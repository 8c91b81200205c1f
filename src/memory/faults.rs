//! The faults of one [`MemoryStore`](super::MemoryStore) handle: calls counted per
//! operation, the next calls of an operation failed or hung, the whole handle down.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::error::BoxError;

/// An operation of [`RemoteStore`](crate::RemoteStore), for
/// [`MemoryStore`](super::MemoryStore)'s fault injection and call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreOp {
    /// [`get`](crate::RemoteStore::get).
    Get,
    /// [`get_many`](crate::RemoteStore::get_many).
    GetMany,
    /// [`get_or_reserve`](crate::RemoteStore::get_or_reserve).
    Reserve,
    /// [`set`](crate::RemoteStore::set).
    Set,
    /// [`replace`](crate::RemoteStore::replace).
    Replace,
    /// [`lease`](crate::RemoteStore::lease).
    Lease,
    /// [`release`](crate::RemoteStore::release).
    Release,
    /// [`delete`](crate::RemoteStore::delete).
    Delete,
    /// One step of [`delete_matching`](crate::RemoteStore::delete_matching).
    Scan,
    /// [`ping`](crate::RemoteStore::ping).
    Ping,
    /// [`stamp_tags`](crate::RemoteStore::stamp_tags).
    StampTags,
}

impl StoreOp {
    /// Every operation, in declaration order (an operation's index in the arrays
    /// below).
    pub(crate) const ALL: [StoreOp; 11] = [
        StoreOp::Get,
        StoreOp::GetMany,
        StoreOp::Reserve,
        StoreOp::Set,
        StoreOp::Replace,
        StoreOp::Lease,
        StoreOp::Release,
        StoreOp::Delete,
        StoreOp::Scan,
        StoreOp::Ping,
        StoreOp::StampTags,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::GetMany => "get_many",
            StoreOp::Reserve => "get_or_reserve",
            StoreOp::Set => "set",
            StoreOp::Replace => "replace",
            StoreOp::Lease => "lease",
            StoreOp::Release => "release",
            StoreOp::Delete => "delete",
            StoreOp::Scan => "delete_matching",
            StoreOp::Ping => "ping",
            StoreOp::StampTags => "stamp_tags",
        }
    }
}

impl fmt::Display for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const OPS: usize = StoreOp::ALL.len();

/// What becomes of one call.
pub(crate) enum Admit {
    /// It runs, after this long on the way (the handle's latency).
    Run(Duration),
    /// It fails with this error, having done nothing.
    Fail(BoxError),
    /// It never completes, having done nothing (as a request lost on the way to a
    /// frozen server: the cache's own timeout gives up on it).
    Hang,
}

/// One handle's fault state.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    down: bool,
    fail: [u32; OPS],
    hang: [u32; OPS],
    calls: [u64; OPS],
    latency: Duration,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a call of `op` and decides its fate. A handle that is down fails
    /// every call without using up the failures and hangs set for later, so that
    /// they still apply once it is up again. Hangs come before failures.
    pub(crate) fn admit(&self, op: StoreOp) -> Admit {
        let mut state = self.lock();
        let i = op.index();
        state.calls[i] += 1;
        if state.down {
            return Admit::Fail(format!("MemoryStore: {op}: disconnected").into());
        }
        if state.hang[i] > 0 {
            state.hang[i] -= 1;
            return Admit::Hang;
        }
        if state.fail[i] > 0 {
            state.fail[i] -= 1;
            return Admit::Fail(format!("MemoryStore: {op}: injected failure").into());
        }
        Admit::Run(state.latency)
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    pub(crate) fn fail_next(&self, op: StoreOp, n: u32) {
        let mut state = self.lock();
        let slot = &mut state.fail[op.index()];
        *slot = slot.saturating_add(n);
    }

    pub(crate) fn hang_next(&self, op: StoreOp, n: u32) {
        let mut state = self.lock();
        let slot = &mut state.hang[op.index()];
        *slot = slot.saturating_add(n);
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    pub(crate) fn is_down(&self) -> bool {
        self.lock().down
    }

    pub(crate) fn calls(&self, op: StoreOp) -> u64 {
        self.lock().calls[op.index()]
    }

    /// Forgets the failures, hangs and latency still to come and brings the
    /// handle up; call counts are kept.
    pub(crate) fn clear(&self) {
        let mut state = self.lock();
        state.down = false;
        state.latency = Duration::ZERO;
        state.fail = [0; OPS];
        state.hang = [0; OPS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fate(faults: &Faults, op: StoreOp) -> &'static str {
        match faults.admit(op) {
            Admit::Run(_) => "run",
            Admit::Fail(_) => "fail",
            Admit::Hang => "hang",
        }
    }

    #[test]
    fn indices_follow_the_declaration() {
        for (i, op) in StoreOp::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i, "{op}");
        }
    }

    #[test]
    fn counts_apply_to_their_operation_only_and_run_out() {
        let faults = Faults::default();
        faults.fail_next(StoreOp::Get, 2);
        faults.hang_next(StoreOp::Get, 1);
        assert_eq!(fate(&faults, StoreOp::Set), "run");
        assert_eq!(fate(&faults, StoreOp::Get), "hang", "hangs come first");
        assert_eq!(fate(&faults, StoreOp::Get), "fail");
        assert_eq!(fate(&faults, StoreOp::Get), "fail");
        assert_eq!(fate(&faults, StoreOp::Get), "run");
        assert_eq!(faults.calls(StoreOp::Get), 4);
        assert_eq!(faults.calls(StoreOp::Set), 1);
        assert_eq!(faults.calls(StoreOp::Ping), 0);
    }

    #[test]
    fn down_fails_everything_and_keeps_what_is_set_for_later() {
        let faults = Faults::default();
        faults.fail_next(StoreOp::Lease, 1);
        faults.set_down(true);
        assert!(faults.is_down());
        for op in StoreOp::ALL {
            assert_eq!(fate(&faults, op), "fail", "{op}");
        }
        faults.set_down(false);
        assert_eq!(fate(&faults, StoreOp::Lease), "fail", "still owed");
        assert_eq!(fate(&faults, StoreOp::Lease), "run");
        assert_eq!(faults.calls(StoreOp::Lease), 3, "failed calls count too");
    }

    #[test]
    fn clear_forgets_faults_but_not_counts() {
        let faults = Faults::default();
        faults.fail_next(StoreOp::Scan, 5);
        faults.hang_next(StoreOp::Ping, 5);
        faults.set_down(true);
        assert_eq!(fate(&faults, StoreOp::Scan), "fail");
        faults.clear();
        assert_eq!(fate(&faults, StoreOp::Scan), "run");
        assert_eq!(fate(&faults, StoreOp::Ping), "run");
        assert_eq!(faults.calls(StoreOp::Scan), 2);
    }
}
