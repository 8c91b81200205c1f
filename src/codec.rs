//! How values travel through the shared tier: a small header, then the envelope.
//!
//! ```text
//! offset  size  field
//! 0       2     magic "TR"
//! 2       1     wire-format version (1)
//! 3       1     codec id (1 = bincode 2, 2 = JSON)
//! 4       8     schema fingerprint of V (little endian)
//! 12      1     kind: 0 = remembered absence, 1 = value, 2 = fill reservation
//! 13      8     expires at, Unix milliseconds (little endian); for kind 2, a
//!               random token that makes each reservation unique
//! 21      ..    the value, encoded by the codec (kind 1 only)
//! ```
//!
//! A fill reservation (kind 2) is what a reader leaves in an empty key before it
//! loads: its fill replaces exactly those bytes or nothing (see `l2.rs`).
//!
//! Anything that does not decode — other magic, version, codec or fingerprint,
//! truncated bytes, bytes the codec rejects, trailing bytes — is a [`DecodeError`],
//! which the cache treats as a miss (counted, and the key deleted).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::entry::Ttl;
use crate::error::BoxError;

const MAGIC: [u8; 2] = *b"TR";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 12;
const ENVELOPE_LEN: usize = HEADER_LEN + 9;
const KIND_RESERVATION: u8 = 2;

/// The serde format of values in the shared tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// bincode 2 (standard config): compact and fast. It cannot decode types that
    /// need `deserialize_any` (untagged enums, `serde_json::Value`, `#[serde(flatten)]`)
    /// nor fields with `skip_serializing_if`; use [`Codec::Json`] for those.
    #[default]
    Bincode,
    /// JSON (serde_json): self-describing, so it handles every serde type; larger and
    /// slower than bincode.
    Json,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::Bincode => 1,
            Codec::Json => 2,
        }
    }

    fn encode_into<V: Serialize>(self, value: &V, out: &mut Vec<u8>) -> Result<(), BoxError> {
        match self {
            Codec::Bincode => {
                bincode::serde::encode_into_std_write(value, out, bincode::config::standard())?;
            }
            Codec::Json => serde_json::to_writer(out, value)?,
        }
        Ok(())
    }

    fn decode<V: DeserializeOwned>(self, bytes: &[u8]) -> Result<V, BoxError> {
        match self {
            Codec::Bincode => {
                let (value, read) = bincode_decode_limited(bytes)?;
                if read != bytes.len() {
                    return Err(format!("{} trailing bytes", bytes.len() - read).into());
                }
                Ok(value)
            }
            // serde_json allocates only for what the input holds, and limits
            // nesting to 128 levels.
            Codec::Json => Ok(serde_json::from_slice(bytes)?),
        }
    }
}

/// How much more memory than its encoded size a bincode value may claim while it
/// decodes (a `Vec<String>` of empty strings claims 24 bytes for each encoded
/// byte). bincode reads length prefixes and allocates for them before reading the
/// elements: without a limit, a few crafted bytes claiming a 2^47-byte string
/// abort the process.
const DECODE_MEMORY_PER_BYTE: usize = 64;

/// bincode with an allocation limit of at least [`DECODE_MEMORY_PER_BYTE`] times
/// the input's length (the limit is a const generic: the smallest of a few tiers).
fn bincode_decode_limited<V: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(V, usize), bincode::error::DecodeError> {
    use bincode::config::standard;
    use bincode::serde::decode_from_slice;
    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;
    let claim = bytes.len().saturating_mul(DECODE_MEMORY_PER_BYTE);
    match claim {
        c if c <= 64 * KIB => decode_from_slice(bytes, standard().with_limit::<{ 64 * KIB }>()),
        c if c <= MIB => decode_from_slice(bytes, standard().with_limit::<MIB>()),
        c if c <= 16 * MIB => decode_from_slice(bytes, standard().with_limit::<{ 16 * MIB }>()),
        c if c <= 256 * MIB => decode_from_slice(bytes, standard().with_limit::<{ 256 * MIB }>()),
        _ => decode_from_slice(bytes, standard().with_limit::<{ 4096 * MIB }>()),
    }
}

/// Why bytes from the shared tier were not accepted.
#[derive(Debug)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than the header and envelope.
    Truncated,
    /// Not written by this crate.
    BadMagic,
    /// Written with another wire-format version.
    Version(u8),
    /// Written with another codec.
    Codec(u8),
    /// Written for another value type or schema version.
    Fingerprint,
    /// The kind byte is neither absence nor value.
    Kind(u8),
    /// The codec rejected the value bytes.
    Value(BoxError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("truncated entry"),
            DecodeError::BadMagic => f.write_str("not a tiered entry (bad magic)"),
            DecodeError::Version(v) => write!(f, "unknown wire-format version {v}"),
            DecodeError::Codec(c) => write!(f, "entry written with codec id {c}"),
            DecodeError::Fingerprint => f.write_str("entry written for another schema"),
            DecodeError::Kind(k) => write!(f, "unknown entry kind {k}"),
            DecodeError::Value(e) => write!(f, "value does not decode: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The schema fingerprint of `V`: its type name and the user's schema version.
/// (Type names come from the compiler; a compiler upgrade that renders one
/// differently only turns old entries into misses.)
pub(crate) fn fingerprint<V>(schema_version: u32) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    std::any::type_name::<V>()
        .bytes()
        .chain(schema_version.to_le_bytes())
        .fold(FNV_OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
        })
}

/// Encodes and decodes one cache's entries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wire {
    pub(crate) codec: Codec,
    pub(crate) fingerprint: u64,
}

/// A decoded entry: the value (or absence) and how long it has left.
#[derive(Debug, PartialEq)]
pub(crate) struct Decoded<V> {
    pub(crate) value: Option<V>,
    pub(crate) remaining: Duration,
}

impl Wire {
    pub(crate) fn encode<V: Serialize>(
        &self,
        value: Option<&V>,
        ttl: Duration,
    ) -> Result<Vec<u8>, BoxError> {
        let now = SystemTime::now();
        let expires = unix_millis(now.checked_add(ttl.min(Ttl::MAX)).unwrap_or(now));
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.codec.id());
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.push(u8::from(value.is_some()));
        out.extend_from_slice(&expires.to_le_bytes());
        if let Some(value) = value {
            self.codec.encode_into(value, &mut out)?;
        }
        Ok(out)
    }

    /// A new fill reservation: a header, kind 2 and a random token.
    pub(crate) fn reservation(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENVELOPE_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.codec.id());
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.push(KIND_RESERVATION);
        out.extend_from_slice(&fastrand::u64(..).to_le_bytes());
        out
    }

    /// An entry, or `Ok(None)` for a fill reservation.
    pub(crate) fn decode<V: DeserializeOwned>(
        &self,
        bytes: &[u8],
    ) -> Result<Option<Decoded<V>>, DecodeError> {
        if bytes.len() < ENVELOPE_LEN {
            return Err(if bytes.starts_with(&MAGIC) || bytes.len() < MAGIC.len() {
                DecodeError::Truncated
            } else {
                DecodeError::BadMagic
            });
        }
        let (header, body) = bytes.split_at(HEADER_LEN);
        if header[..2] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if header[2] != VERSION {
            return Err(DecodeError::Version(header[2]));
        }
        if header[3] != self.codec.id() {
            return Err(DecodeError::Codec(header[3]));
        }
        if header[4..12] != self.fingerprint.to_le_bytes() {
            return Err(DecodeError::Fingerprint);
        }
        if body[0] == KIND_RESERVATION && body.len() == 9 {
            return Ok(None);
        }
        let expires = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
        let remaining =
            Duration::from_millis(expires.saturating_sub(unix_millis(SystemTime::now())));
        let value = match body[0] {
            0 if body.len() == 9 => None,
            0 => return Err(DecodeError::Value("trailing bytes after an absence".into())),
            1 => Some(self.codec.decode(&body[9..]).map_err(DecodeError::Value)?),
            kind => return Err(DecodeError::Kind(kind)),
        };
        Ok(Some(Decoded { value, remaining }))
    }
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        id: u64,
        name: String,
    }

    fn wire(codec: Codec) -> Wire {
        Wire {
            codec,
            fingerprint: fingerprint::<User>(1),
        }
    }

    #[test]
    fn round_trips_values_and_absences_with_both_codecs() {
        for codec in [Codec::Bincode, Codec::Json] {
            let w = wire(codec);
            let user = User {
                id: 1,
                name: "a".into(),
            };
            let bytes = w.encode(Some(&user), Duration::from_secs(60)).unwrap();
            let back: Decoded<User> = w.decode(&bytes).unwrap().unwrap();
            assert_eq!(back.value, Some(user));
            assert!(back.remaining > Duration::from_secs(58));
            let none = w.encode::<User>(None, Duration::from_secs(5)).unwrap();
            assert_eq!(w.decode::<User>(&none).unwrap().unwrap().value, None);
            let (r1, r2) = (w.reservation(), w.reservation());
            assert_ne!(r1, r2, "every reservation is unique");
            assert!(w.decode::<User>(&r1).unwrap().is_none());
        }
    }

    #[test]
    fn every_kind_of_bad_bytes_is_an_error_not_a_panic() {
        let w = wire(Codec::Bincode);
        let good = w
            .encode(
                Some(&User {
                    id: 7,
                    name: "x".repeat(40),
                }),
                Duration::from_secs(60),
            )
            .unwrap();
        let check = |bytes: &[u8], what: &str| {
            assert!(w.decode::<User>(bytes).is_err(), "{what} must not decode");
        };
        check(b"", "empty");
        check(b"T", "one byte");
        check(b"hello world, not an entry at all", "foreign bytes");
        for len in 0..good.len() {
            check(&good[..len], "a truncation");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        check(&trailing, "trailing bytes");
        for (index, what) in [
            (2, "version"),
            (3, "codec"),
            (4, "fingerprint"),
            (12, "kind"),
        ] {
            let mut bad = good.clone();
            bad[index] ^= 0xff;
            check(&bad, what);
        }
        let other_schema = Wire {
            codec: Codec::Bincode,
            fingerprint: fingerprint::<User>(2),
        };
        assert!(matches!(
            other_schema.decode::<User>(&good),
            Err(DecodeError::Fingerprint)
        ));
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..10_000 {
            let len = rng.usize(0..64);
            let mut noise: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if rng.bool() && noise.len() >= 12 {
                noise[..12].copy_from_slice(&good[..12]);
            }
            let _ = w.decode::<User>(&noise);
        }
    }

    /// A valid header and envelope, then `body` as the value bytes.
    fn crafted(w: &Wire, body: &[u8]) -> Vec<u8> {
        let mut bytes = w
            .encode(
                Some(&User {
                    id: 1,
                    name: String::new(),
                }),
                Duration::from_secs(60),
            )
            .unwrap();
        bytes.truncate(ENVELOPE_LEN);
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn huge_length_prefixes_are_an_error_not_an_allocation() {
        let w = wire(Codec::Bincode);
        // id = 1, then a string claiming 2^47 bytes (varint: 253 + u64).
        let mut body = vec![1u8, 253];
        body.extend_from_slice(&(1u64 << 47).to_le_bytes());
        assert!(w.decode::<User>(&crafted(&w, &body)).is_err());
        // A Vec<u64> claiming 2^40 elements.
        let vecs = Wire {
            codec: Codec::Bincode,
            fingerprint: fingerprint::<Vec<u64>>(1),
        };
        let mut body = vec![253u8];
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let mut bytes = vecs
            .encode(Some(&vec![1u64]), Duration::from_secs(60))
            .unwrap();
        bytes.truncate(ENVELOPE_LEN);
        bytes.extend_from_slice(&body);
        assert!(vecs.decode::<Vec<u64>>(&bytes).is_err());
    }

    #[test]
    fn legitimate_values_that_claim_more_than_they_weigh_still_decode() {
        let w = Wire {
            codec: Codec::Bincode,
            fingerprint: fingerprint::<Vec<String>>(1),
        };
        let value = vec![String::new(); 100_000];
        let bytes = w.encode(Some(&value), Duration::from_secs(60)).unwrap();
        let back = w.decode::<Vec<String>>(&bytes).unwrap().unwrap();
        assert_eq!(back.value, Some(value));
    }

    /// Arbitrary bytes behind a valid header: an error or a value, never a panic or
    /// an abort (a bounded fuzz run; `scripts/test` runs it with the unit tests).
    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_crash() {
        let w = wire(Codec::Bincode);
        let mut rng = fastrand::Rng::with_seed(42);
        for _ in 0..200_000 {
            let len = rng.usize(0..48);
            let mut body: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            // Often a large varint length prefix where the string's length goes.
            if len > 10 && rng.bool() {
                body[1] = 251 + rng.u8(0..4);
            }
            let _ = w.decode::<User>(&crafted(&w, &body));
        }
    }

    #[test]
    fn fingerprints_differ_by_type_and_version() {
        assert_ne!(fingerprint::<User>(1), fingerprint::<User>(2));
        assert_ne!(fingerprint::<User>(1), fingerprint::<String>(1));
        assert_eq!(fingerprint::<User>(1), fingerprint::<User>(1));
    }
}
