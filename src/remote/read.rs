//! Reads of the shared tier: what the bytes in a key mean, and the fill
//! reservation a reader that will load leaves in an empty key.

use futures_util::future::join_all;
use serde::de::DeserializeOwned;

use crate::codec::Decoded;
use crate::observe::Tier;
use crate::remote::Remote;

/// What a read of the shared tier found.
pub(crate) enum L2Read<V> {
    /// An entry still to be served (fresh, or stale but kept), with its bytes: a
    /// refresh of it fills only if they are still there.
    Hit(Decoded<V>, Seen),
    /// Nothing usable: a fill may replace exactly these bytes (this reader's
    /// reservation, another's, or an expired entry).
    Miss(Seen),
    /// The call was skipped (breaker open) or failed: writing back after the load
    /// would most likely fail too, and make the read wait a second timeout.
    Unavailable,
}

/// The bytes a fill must find in its key to write.
pub(crate) struct Seen(pub(super) Vec<u8>);

enum Decoding<V> {
    Hit(Decoded<V>),
    /// A reservation or an expired entry.
    Unusable,
    Corrupt,
}

impl Remote {
    /// Reads one entry. A reader that will load (`reserve`) reads and, if the key
    /// is empty, leaves its fill reservation there in one round trip; a reader
    /// that cannot load writes nothing. Nothing usable there is a miss;
    /// undecodable bytes are a counted miss, and the key is deleted first.
    pub(crate) async fn get<V: DeserializeOwned>(&self, key: &str, reserve: bool) -> L2Read<V> {
        let report = self.report();
        let read = if reserve {
            self.get_or_reserve(key).await
        } else {
            match self.call("get", self.gate.store().get(key)).await {
                None => L2Read::Unavailable,
                Some(bytes) => self.accept(key, bytes, false).await,
            }
        };
        report.tier(Tier::L2, matches!(read, L2Read::Hit(..)));
        read
    }

    /// The entry at `key`, or this reader's reservation left in its place.
    async fn get_or_reserve<V: DeserializeOwned>(&self, key: &str) -> L2Read<V> {
        let reservation = self.wire.reservation();
        let store = self.gate.store();
        let reserve = store.get_or_reserve(key, &reservation, self.reservation_ttl);
        match self.call("reserve", reserve).await {
            None => L2Read::Unavailable,
            Some(None) => L2Read::Miss(Seen(reservation)),
            Some(bytes) => self.accept(key, bytes, true).await,
        }
    }

    /// Reads several entries with one call (and, if `reserve`, reserves the
    /// missing ones).
    pub(crate) async fn get_many<V: DeserializeOwned>(
        &self,
        keys: &[String],
        reserve: bool,
    ) -> Vec<L2Read<V>> {
        let report = self.report();
        let found = self
            .call("get_many", self.gate.store().get_many(keys))
            .await
            .filter(|values| values.len() == keys.len());
        let Some(values) = found else {
            for _ in keys {
                report.tier(Tier::L2, false);
            }
            return keys.iter().map(|_| L2Read::Unavailable).collect();
        };
        let reads = join_all(
            keys.iter()
                .zip(values)
                .map(|(key, bytes)| self.accept(key, bytes, reserve)),
        )
        .await;
        for read in &reads {
            report.tier(Tier::L2, matches!(read, L2Read::Hit(..)));
        }
        reads
    }

    /// What the bytes read at `key` mean.
    async fn accept<V: DeserializeOwned>(
        &self,
        key: &str,
        bytes: Option<Vec<u8>>,
        reserve: bool,
    ) -> L2Read<V> {
        if let Some(bytes) = bytes {
            match self.decode(key, &bytes) {
                Decoding::Hit(hit) => return L2Read::Hit(hit, Seen(bytes)),
                Decoding::Unusable => return L2Read::Miss(Seen(bytes)),
                Decoding::Corrupt => {
                    let keys = [key.to_owned()];
                    self.gate
                        .call("delete", self.gate.store().delete(&keys))
                        .await;
                }
            }
        }
        if !reserve {
            // Nothing to fill: the expected bytes can never match.
            return L2Read::Miss(Seen(Vec::new()));
        }
        let reservation = self.wire.reservation();
        let reserve = self
            .gate
            .store()
            .get_or_reserve(key, &reservation, self.reservation_ttl);
        match self.gate.call("reserve", reserve).await {
            None => L2Read::Unavailable,
            Some(None) => L2Read::Miss(Seen(reservation)),
            Some(Some(bytes)) => match self.decode(key, &bytes) {
                Decoding::Hit(hit) => L2Read::Hit(hit, Seen(bytes)),
                // A corrupt entry written meanwhile is replaced by the fill.
                Decoding::Unusable | Decoding::Corrupt => L2Read::Miss(Seen(bytes)),
            },
        }
    }

    fn decode<V: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Decoding<V> {
        match self.wire.decode::<V>(bytes, key) {
            Ok(Some(decoded)) if !decoded.remaining.is_zero() => Decoding::Hit(decoded),
            Ok(_reservation_or_expired) => Decoding::Unusable,
            Err(error) => {
                tracing::warn!(key, %error, "undecodable L2 entry: deleted, reloading");
                self.report().l2_corrupt(key, &error);
                Decoding::Corrupt
            }
        }
    }

    /// The entry at `key` if it is fresh, read without counting a tier hit or
    /// miss and without reserving (a wait for another instance's load).
    pub(crate) async fn peek<V: DeserializeOwned>(&self, key: &str) -> Option<Decoded<V>> {
        let bytes = self.gate.call("get", self.gate.store().get(key)).await??;
        match self.wire.decode::<V>(&bytes, key) {
            Ok(Some(decoded)) if !decoded.fresh.is_zero() => Some(decoded),
            _ => None,
        }
    }
}
