//! Several observers as one: every hook is called on each, in the order they
//! were added to the builder.

use std::sync::Arc;
use std::time::Duration;

use super::{BreakerState, LoadOutcome, Observer, Tier};
use crate::error::DecodeError;
use crate::policy::L1Eviction;

/// The observers of one cache, when there are several.
pub(crate) struct Fanout(pub(crate) Vec<Arc<dyn Observer>>);

/// Forwards each listed hook, with its arguments, to every observer.
macro_rules! forward {
    ($($hook:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $hook(&self, $($arg: $ty),*) {
            for observer in &self.0 {
                observer.$hook($($arg),*);
            }
        })*
    };
}

impl Observer for Fanout {
    forward! {
        hit(tier: Tier);
        miss(tier: Tier);
        load(outcome: LoadOutcome, keys: usize, elapsed: Duration);
        coalesced();
        superseded();
        invalidated(all: bool);
        invalidation_received();
        inserted();
        negative_hit();
        l2_corrupt(key: &str, error: &DecodeError);
        l2_oversized();
        l2_namespace_cleared();
        bus_resubscribed();
        bus_publish_failed();
        bus_apply_failed();
        l2_error();
        refresh_started();
        stale_served();
        fail_safe();
        soft_timeout();
        lease_waited();
        not_modified();
        l1_policy_switched(policy: L1Eviction);
        warmed(done: usize, total: usize);
        breaker(state: BreakerState);
    }
}
