//! The fleet-wide load lease in the shared tier (`SET lease-key token NX PX`,
//! given back with its token only): the store side of the engine's lease wait.

use std::time::Duration;

use crate::key::CacheKey;
use crate::remote::Remote;

/// A lease this instance holds on a key's load.
#[derive(Debug)]
pub(crate) struct Lease {
    key: String,
    token: [u8; 16],
}

impl Remote {
    /// Tries to take `key`'s lease for `ttl`: `Some(Ok(lease))` when taken,
    /// `Some(Err(()))` when another holds it, `None` when the store cannot be
    /// asked (breaker open, a failure).
    pub(crate) async fn lease<K: CacheKey>(
        &self,
        key: &K,
        token: [u8; 16],
        ttl: Duration,
    ) -> Option<Result<Lease, ()>> {
        let lease_key = self.namespace.lease_key(key);
        let taken = self
            .gate
            .call("lease", self.gate.store().lease(&lease_key, &token, ttl))
            .await?;
        Some(if taken {
            Ok(Lease {
                key: lease_key,
                token,
            })
        } else {
            Err(())
        })
    }

    /// Gives a lease back (a failure leaves it to expire).
    pub(crate) async fn release(&self, lease: Lease) {
        self.gate
            .call(
                "release",
                self.gate.store().release(&lease.key, &lease.token),
            )
            .await;
    }
}
