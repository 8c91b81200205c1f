//! Writes to the shared tier: a loaded entry's fill (compare-and-set against
//! what its read saw, so that no invalidation since is overwritten) and an
//! explicit insert's overwrite (owed as a deletion if it cannot land).

use std::time::Duration;

use serde::Serialize;

use crate::codec::EncodeError;
use crate::entry::Tags;
use crate::observe::Counter;
use crate::policy::Lifetime;
use crate::remote::owed::Work;
use crate::remote::{Remote, Seen};

/// How a fill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    Written,
    /// The key changed since the read: an invalidation (or another fill) came first.
    Superseded,
    /// Skipped or failed: unknown whether anything changed.
    Unknown,
}

impl Remote {
    /// Writes a loaded entry (a value or an absence) for its `lifetime`, only if
    /// the key still holds what the read saw.
    pub(crate) async fn fill<V: Serialize>(
        &self,
        key: &str,
        seen: &Seen,
        value: Option<&V>,
        lifetime: Lifetime,
        tags: Option<&Tags>,
    ) -> Filled {
        let ttl = self.store_ttl(lifetime);
        let bytes = match self.wire.encode_tagged(value, lifetime, key, tags) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.not_encoded(key, &error);
                return Filled::Unknown;
            }
        };
        let replace = self.gate.store().replace(key, &seen.0, &bytes, ttl);
        match self.call("fill", replace).await {
            Some(true) => Filled::Written,
            Some(false) => Filled::Superseded,
            None => Filled::Unknown,
        }
    }

    /// Overwrites the entries of several keys (an explicit `insert_many`): their
    /// writes (and the deletion of the old entries of values that do not
    /// encode) go out together, under one timeout (a multiplexed connection
    /// pipelines them). Returns whether all landed; if not (or if this call is
    /// cancelled), every key of the batch is deleted later instead.
    pub(crate) async fn set_many<V: Serialize>(
        &self,
        entries: &[(String, Option<&V>, Lifetime, Option<&Tags>)],
    ) -> bool {
        let keys: Vec<String> = entries.iter().map(|(key, ..)| key.clone()).collect();
        let mut owed = self.until_done(Work::Keys(keys.clone()));
        let mut encoded = Vec::with_capacity(entries.len());
        let mut unencoded = Vec::new();
        for (key, value, lifetime, tags) in entries {
            match self.wire.encode_tagged(*value, *lifetime, key, *tags) {
                Ok(bytes) => encoded.push((key.as_str(), bytes, self.store_ttl(*lifetime))),
                Err(error) => {
                    self.not_encoded(key, &error);
                    unencoded.push(key.clone());
                }
            }
        }
        let store = self.gate.store();
        // The old entries of values that do not encode must not outlive the
        // insert: their deletion goes with the writes, so that the batch lands
        // (and is announced) whole, or is owed whole.
        let writes = async {
            futures_util::future::try_join_all(
                encoded
                    .iter()
                    .map(|(key, bytes, ttl)| store.set(key, bytes, *ttl)),
            )
            .await?;
            if !unencoded.is_empty() {
                store.delete(&unencoded).await?;
            }
            Ok::<_, crate::error::BoxError>(())
        };
        let landed = self.gate.call("set", writes).await.is_some();
        if landed {
            owed.done();
            for key in &keys {
                self.owed.landed(key);
            }
        }
        landed
    }

    /// How long the store keeps an entry: past its usable time by a grace (up to
    /// the fill window), so that a fill that read the entry still finds its bytes
    /// there when it ran past their expiry (the entry reads as a miss meanwhile).
    /// Without it, a load racing its entry's expiry would see the key change
    /// under it and load again.
    fn store_ttl(&self, lifetime: Lifetime) -> Duration {
        let grace = self.reservation_ttl.min(lifetime.keep);
        lifetime.keep.saturating_add(grace)
    }

    /// Counts a value that is not written to L2 (it stays L1-only).
    fn not_encoded(&self, key: &str, error: &EncodeError) {
        match error {
            EncodeError::TooLarge(bytes) => {
                tracing::debug!(key, bytes, "value past l2_max_value_bytes: L1 only");
                self.report().event(Counter::L2Oversized);
            }
            EncodeError::Codec(_) => {
                tracing::warn!(key, %error, "value does not encode: L1 only");
                self.report().l2_error();
            }
        }
    }
}
