//! The gate every store call passes: the circuit breaker, then the call under
//! its own timeout, with the outcome counted and fed back to the breaker.
//!
//! Caches on one store share one breaker: the gate finds it by the store's
//! [`identity`](RemoteStore::identity) in a process-wide table that holds
//! breakers weakly, so a breaker lives exactly as long as a cache uses it, and a
//! breaker never keeps its store alive beyond its caches (its probe holds the
//! store; the store holds nothing of the breaker).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::breaker::{Breaker, BreakerSettings, Probe};
use crate::clock::Clock;
use crate::error::BoxError;
use crate::observe::{trace, BreakerState, Report};
use crate::remote::store::RemoteStore;

/// One cache's way to its store.
pub(crate) struct Gate {
    store: Arc<dyn RemoteStore>,
    breaker: Arc<Breaker>,
    timeout: Duration,
    report: Arc<Report>,
    /// This cache's last failed call: what it was, its error, and when.
    last_error: Mutex<Option<(&'static str, String, Instant)>>,
}

impl Gate {
    /// The gate to `store`, with the breaker shared by every cache on the same
    /// store (made with `settings` if this cache is the first).
    pub(crate) fn new(
        store: Arc<dyn RemoteStore>,
        settings: BreakerSettings,
        clock: Clock,
        timeout: Duration,
        report: Arc<Report>,
    ) -> Self {
        let breaker = shared_breaker(&store, settings, clock);
        breaker.listen(&report);
        Gate {
            store,
            breaker,
            timeout,
            report,
            last_error: Mutex::new(None),
        }
    }

    /// This cache's last failed call: what it was, its error, and when.
    pub(crate) fn last_error(&self) -> Option<(&'static str, String, Instant)> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn failed(&self, op: &'static str, error: String) {
        self.report.l2_error();
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((op, error, Instant::now()));
    }

    /// The store, for making a call to pass to [`call`](Self::call).
    pub(crate) fn store(&self) -> &dyn RemoteStore {
        &*self.store
    }

    /// Where this cache reports.
    pub(crate) fn report(&self) -> &Report {
        &self.report
    }

    /// The breaker's state and how often it opened.
    pub(crate) fn breaker(&self) -> (BreakerState, u64) {
        (self.breaker.state(), self.breaker.times_opened())
    }

    /// Runs one store call through the breaker and the timeout. `None` when the
    /// breaker is open, or the call failed or timed out (counted, and reported
    /// to the breaker).
    pub(crate) async fn call<T, F>(&self, op: &'static str, call: F) -> Option<T>
    where
        F: Future<Output = Result<T, BoxError>>,
    {
        // Transitions reach every cache on this breaker through its listeners.
        let permit = self.breaker.permit().0?;
        let span = trace::l2(op);
        let result =
            tracing::Instrument::instrument(tokio::time::timeout(self.timeout, call), span.clone())
                .await;
        match result {
            Ok(Ok(value)) => {
                permit.success();
                Some(value)
            }
            Ok(Err(error)) => {
                trace::failed(&span, "error");
                tracing::debug!(op, %error, "L2 call failed");
                self.failed(op, error.to_string());
                permit.failure();
                None
            }
            Err(_elapsed) => {
                trace::failed(&span, "timeout");
                tracing::debug!(op, timeout = ?self.timeout, "L2 call timed out");
                self.failed(op, format!("timed out after {:?}", self.timeout));
                permit.failure();
                None
            }
        }
    }
}

/// Live breakers by store identity.
type Breakers = Mutex<HashMap<u64, Weak<Breaker>>>;

fn breakers() -> &'static Breakers {
    static BREAKERS: std::sync::OnceLock<Breakers> = std::sync::OnceLock::new();
    BREAKERS.get_or_init(Breakers::default)
}

/// The breaker of every cache on `store`: the live one of its identity, or a
/// new one (also for stores without an identity).
fn shared_breaker(
    store: &Arc<dyn RemoteStore>,
    settings: BreakerSettings,
    clock: Clock,
) -> Arc<Breaker> {
    let probed = Arc::clone(store);
    let probe: Probe = Arc::new(move || {
        let store = Arc::clone(&probed);
        Box::pin(async move { store.ping().await })
    });
    let Some(id) = store.identity() else {
        return Breaker::new(settings, clock, probe);
    };
    let mut table = breakers().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(live) = table.get(&id).and_then(Weak::upgrade) {
        return live;
    }
    table.retain(|_, breaker| breaker.strong_count() > 0);
    let breaker = Breaker::new(settings, clock, probe);
    table.insert(id, Arc::downgrade(&breaker));
    breaker
}
