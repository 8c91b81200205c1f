//! How values travel through the shared tier: a small header, then the envelope.
//!
//! ```text
//! offset  size  field
//! 0       2     magic "TR"
//! 2       1     wire-format version (3)
//! 3       1     codec id (1 = bincode 2, 2 = JSON, 3 = MessagePack)
//! 4       8     schema fingerprint of V (little endian)
//! 12      1     flags: bit 0 = LZ4-compressed, bit 1 = encrypted, bit 2 =
//!               tagged
//! 13      1     the encryption key's id (0 when not encrypted)
//! 14      1     kind: 0 = remembered absence, 1 = value, 2 = fill reservation
//! 15      8     usable until (never served after), Unix milliseconds (little
//!               endian); for kind 2, a random token that makes each
//!               reservation unique
//! 23      8     fresh until, Unix milliseconds (after it, only served stale:
//!               stale-while-revalidate or fail-safe); 0 for kind 2
//! 31      4     how long the load took, microseconds (for early refresh)
//! 35      ..    if tagged: the tag clock when the load began (u64), the number
//!               of tags (u8, at most 64), then each tag as a u16 length and
//!               its UTF-8 bytes (little endian)
//! ..      ..    the payload: the value encoded by the codec (kind 1), then
//!               compressed (u32 original length + LZ4 block), then encrypted
//!               (nonce + AES-256-GCM ciphertext and tag, authenticating the
//!               bytes before it and the Redis key); an encrypted absence seals
//!               nothing
//! ```
//!
//! A fill reservation (kind 2) is what a reader leaves in an empty key before it
//! loads: its fill replaces exactly those bytes or nothing (see `l2.rs`).
//!
//! Anything that does not decode — other magic, version, codec, fingerprint, flags
//! or key, truncated bytes, a payload past the size limit, bytes that do not open,
//! decompress or decode, trailing bytes — is a [`DecodeError`], which the cache
//! treats as a miss (counted, and the key deleted). Entries of versions 1 and 2
//! (no fresh time) read as misses.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use std::sync::Arc;

use crate::entry::Tags;
use crate::error::{BoxError, DecodeError};
use crate::namespace::stable_hash;
use crate::policy::Lifetime;
use crate::policy::Ttl;

#[cfg(feature = "encryption")]
mod encryption;
#[cfg(feature = "encryption")]
pub use self::encryption::Encryption;

const MAGIC: [u8; 2] = *b"TR";
const VERSION: u8 = 3;
const HEADER_LEN: usize = 14;
const ENVELOPE_LEN: usize = HEADER_LEN + 1 + 8 + 8 + 4;
const KIND_RESERVATION: u8 = 2;
const FLAG_LZ4: u8 = 1;
const FLAG_ENCRYPTED: u8 = 2;
const FLAG_TAGS: u8 = 4;
/// The most tags an entry carries.
pub(crate) const MAX_TAGS: usize = 64;
/// The largest tag section: the birth, the count, and each tag at its longest.
const MAX_TAG_SECTION: usize = 8 + 1 + MAX_TAGS * (2 + u16::MAX as usize);
/// Room for what sealing and compressing add to a payload (nonce, tag, length).
const SEAL_OVERHEAD: usize = 12 + 16 + 4;

/// The default largest encoded value (before compression) written to or read from
/// L2.
pub const DEFAULT_L2_MAX_VALUE_BYTES: usize = 16 << 20;

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
    /// MessagePack (rmp-serde, structs as maps): self-describing like JSON, so it
    /// handles every serde type, and more compact; between bincode and JSON in cost.
    MessagePack,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::Bincode => 1,
            Codec::Json => 2,
            Codec::MessagePack => 3,
        }
    }

    fn encode_into<V: Serialize>(self, value: &V, out: &mut Vec<u8>) -> Result<(), BoxError> {
        match self {
            Codec::Bincode => {
                bincode::serde::encode_into_std_write(value, out, bincode::config::standard())?;
            }
            Codec::Json => serde_json::to_writer(out, value)?,
            Codec::MessagePack => rmp_serde::encode::write_named(out, value)?,
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
            // rmp-serde allocates only for what the input holds, and limits
            // nesting to 1024 levels.
            Codec::MessagePack => {
                let mut reader = bytes;
                let value = rmp_serde::from_read(&mut reader)?;
                if !reader.is_empty() {
                    return Err(format!("{} trailing bytes", reader.len()).into());
                }
                Ok(value)
            }
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

/// The schema fingerprint of `V`: its type name and the user's schema version.
/// (Type names come from the compiler; a compiler upgrade that renders one
/// differently only turns old entries into misses.)
pub(crate) fn fingerprint<V>(schema_version: u32) -> u64 {
    stable_hash(
        std::any::type_name::<V>()
            .bytes()
            .chain(schema_version.to_le_bytes()),
    )
}

/// Encodes and decodes one cache's entries.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    pub(crate) codec: Codec,
    pub(crate) fingerprint: u64,
    /// Payloads of at least this many bytes are LZ4-compressed (if that helps).
    pub(crate) compress_from: Option<usize>,
    /// The largest encoded value (before compression) written or read.
    pub(crate) max_value_bytes: usize,
    #[cfg(feature = "encryption")]
    pub(crate) encryption: Option<Encryption>,
}

/// A decoded entry: the value (or absence) and how long it has left.
#[derive(Debug, PartialEq)]
pub(crate) struct Decoded<V> {
    pub(crate) value: Option<V>,
    /// Until it is no longer served at all.
    pub(crate) remaining: Duration,
    /// Until it is stale (zero: stale now).
    pub(crate) fresh: Duration,
    /// How long ago it went stale (zero while fresh).
    pub(crate) stale_for: Duration,
    /// The tags it carries, and when its load began on the tag clock.
    pub(crate) tags: Option<Arc<Tags>>,
    /// How long the load that produced it took.
    pub(crate) load: Duration,
}

/// Why a value was not written to L2.
#[derive(Debug)]
pub(crate) enum EncodeError {
    Codec(BoxError),
    /// The payload is past the limit (the value stays L1-only).
    TooLarge(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Codec(e) => write!(f, "value does not encode: {e}"),
            EncodeError::TooLarge(n) => write!(f, "a payload of {n} bytes is past the limit"),
        }
    }
}

impl Wire {
    /// A wire for tests and defaults: no compression, no encryption.
    #[cfg(test)]
    pub(crate) fn plain(codec: Codec, fingerprint: u64) -> Self {
        Wire {
            codec,
            fingerprint,
            compress_from: None,
            max_value_bytes: DEFAULT_L2_MAX_VALUE_BYTES,
            #[cfg(feature = "encryption")]
            encryption: None,
        }
    }

    fn header(&self, out: &mut Vec<u8>, flags: u8, key_id: u8, kind: u8, times: Times) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.codec.id());
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.push(flags);
        out.push(key_id);
        out.push(kind);
        out.extend_from_slice(&times.stamp.to_le_bytes());
        out.extend_from_slice(&times.fresh_until.to_le_bytes());
        out.extend_from_slice(&times.load_micros.to_le_bytes());
    }

    /// The bytes of an untagged entry stored at `l2_key` (which encryption
    /// authenticates).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn encode<V: Serialize>(
        &self,
        value: Option<&V>,
        lifetime: Lifetime,
        l2_key: &str,
    ) -> Result<Vec<u8>, EncodeError> {
        self.encode_tagged(value, lifetime, l2_key, None)
    }

    /// [`encode`](Self::encode), for an entry carrying `tags`.
    pub(crate) fn encode_tagged<V: Serialize>(
        &self,
        value: Option<&V>,
        lifetime: Lifetime,
        l2_key: &str,
        tags: Option<&Tags>,
    ) -> Result<Vec<u8>, EncodeError> {
        let now = SystemTime::now();
        let at = |ttl: Duration| unix_millis(now.checked_add(ttl.min(Ttl::MAX)).unwrap_or(now));
        let times = Times {
            stamp: at(lifetime.keep.max(lifetime.fresh)),
            fresh_until: at(lifetime.fresh),
            load_micros: u32::try_from(lifetime.load.as_micros()).unwrap_or(u32::MAX),
        };
        let mut payload = Vec::new();
        if let Some(value) = value {
            self.codec
                .encode_into(value, &mut payload)
                .map_err(EncodeError::Codec)?;
        }
        if payload.len() > self.max_value_bytes {
            return Err(EncodeError::TooLarge(payload.len()));
        }
        let mut flags = 0;
        if let Some(from) = self.compress_from {
            if value.is_some() && payload.len() >= from {
                let len = u32::try_from(payload.len())
                    .map_err(|_| EncodeError::TooLarge(payload.len()))?;
                let mut compressed = len.to_le_bytes().to_vec();
                compressed.extend_from_slice(&lz4_flex::block::compress(&payload));
                if compressed.len() < payload.len() {
                    payload = compressed;
                    flags |= FLAG_LZ4;
                }
            }
        }
        let kind = u8::from(value.is_some());
        let section = tags.map(tag_section).transpose()?;
        if section.is_some() {
            flags |= FLAG_TAGS;
        }
        let section = section.unwrap_or_default();
        let mut out =
            Vec::with_capacity(ENVELOPE_LEN + section.len() + payload.len() + SEAL_OVERHEAD);
        #[cfg(feature = "encryption")]
        if let Some(encryption) = &self.encryption {
            flags |= FLAG_ENCRYPTED;
            self.header(&mut out, flags, encryption.write_key_id(), kind, times);
            out.extend_from_slice(&section);
            let aad = [&out[..], l2_key.as_bytes()].concat();
            out.extend_from_slice(&encryption.seal(&payload, &aad));
            return Ok(out);
        }
        let _ = l2_key;
        self.header(&mut out, flags, 0, kind, times);
        out.extend_from_slice(&section);
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// A new fill reservation: a header, kind 2 and a random token.
    pub(crate) fn reservation(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENVELOPE_LEN);
        let times = Times {
            stamp: fastrand::u64(..),
            fresh_until: 0,
            load_micros: 0,
        };
        self.header(&mut out, 0, 0, KIND_RESERVATION, times);
        out
    }

    /// The entry stored at `l2_key`, or `Ok(None)` for a fill reservation.
    pub(crate) fn decode<V: DeserializeOwned>(
        &self,
        bytes: &[u8],
        l2_key: &str,
    ) -> Result<Option<Decoded<V>>, DecodeError> {
        if bytes.len() < ENVELOPE_LEN {
            return Err(if bytes.starts_with(&MAGIC) || bytes.len() < MAGIC.len() {
                DecodeError::Truncated
            } else {
                DecodeError::BadMagic
            });
        }
        // The payload's limit is checked once the tag section is off it; this
        // bounds the whole before anything is parsed.
        let most =
            (self.max_value_bytes).saturating_add(ENVELOPE_LEN + MAX_TAG_SECTION + SEAL_OVERHEAD);
        if bytes.len() > most {
            return Err(DecodeError::TooLarge(bytes.len() - ENVELOPE_LEN));
        }
        let (envelope, rest) = bytes.split_at(ENVELOPE_LEN);
        if envelope[..2] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if envelope[2] != VERSION {
            return Err(DecodeError::Version(envelope[2]));
        }
        if envelope[3] != self.codec.id() {
            return Err(DecodeError::Codec(envelope[3]));
        }
        if envelope[4..12] != self.fingerprint.to_le_bytes() {
            return Err(DecodeError::Fingerprint);
        }
        let (flags, key_id, kind) = (envelope[12], envelope[13], envelope[14]);
        if kind == KIND_RESERVATION && flags == 0 && rest.is_empty() {
            return Ok(None);
        }
        if flags & !(FLAG_LZ4 | FLAG_ENCRYPTED | FLAG_TAGS) != 0 {
            return Err(DecodeError::Flags(flags));
        }
        let (tags, payload) = if flags & FLAG_TAGS != 0 {
            read_tags(rest)?
        } else {
            (None, rest)
        };
        if payload.len() > self.max_value_bytes.saturating_add(SEAL_OVERHEAD) {
            return Err(DecodeError::TooLarge(payload.len()));
        }
        let authenticated = &bytes[..bytes.len() - payload.len()];
        let opened = self.open(flags, key_id, authenticated, payload, l2_key)?;
        let payload: &[u8] = opened.as_deref().unwrap_or(payload);
        let decompressed;
        let payload = if flags & FLAG_LZ4 != 0 {
            decompressed = self.decompress(payload)?;
            &decompressed[..]
        } else {
            payload
        };
        let millis_at =
            |at: usize| u64::from_le_bytes(envelope[at..at + 8].try_into().expect("8 bytes"));
        let now = unix_millis(SystemTime::now());
        let remaining = Duration::from_millis(millis_at(15).saturating_sub(now));
        let fresh = Duration::from_millis(millis_at(23).saturating_sub(now)).min(remaining);
        let stale_for = Duration::from_millis(now.saturating_sub(millis_at(23)));
        let load_micros = u32::from_le_bytes(envelope[31..35].try_into().expect("4 bytes"));
        let load = Duration::from_micros(u64::from(load_micros));
        let value = match kind {
            0 if payload.is_empty() && flags & FLAG_LZ4 == 0 => None,
            0 => return Err(DecodeError::Value("a payload after an absence".into())),
            1 => Some(self.codec.decode(payload).map_err(DecodeError::Value)?),
            kind => return Err(DecodeError::Kind(kind)),
        };
        Ok(Some(Decoded {
            value,
            stale_for,
            tags,
            remaining,
            fresh,
            load,
        }))
    }

    /// The opened payload of an encrypted entry (`None`: not encrypted). With
    /// encryption configured, every entry must be encrypted.
    #[allow(unused_variables)]
    fn open(
        &self,
        flags: u8,
        key_id: u8,
        envelope: &[u8],
        payload: &[u8],
        l2_key: &str,
    ) -> Result<Option<Vec<u8>>, DecodeError> {
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        #[cfg(feature = "encryption")]
        if let Some(encryption) = &self.encryption {
            if !encrypted {
                return Err(DecodeError::Flags(flags));
            }
            let aad = [envelope, l2_key.as_bytes()].concat();
            return encryption.open(key_id, payload, &aad).map(Some);
        }
        if encrypted {
            return Err(DecodeError::UnknownKey(key_id));
        }
        Ok(None)
    }

    fn decompress(&self, payload: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let (len, block) = payload.split_at_checked(4).ok_or(DecodeError::Decompress)?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if len > self.max_value_bytes {
            return Err(DecodeError::TooLarge(len));
        }
        let out = lz4_flex::block::decompress(block, len).map_err(|_| DecodeError::Decompress)?;
        if out.len() != len {
            return Err(DecodeError::Decompress);
        }
        Ok(out)
    }
}

/// The times in an entry's envelope.
#[derive(Clone, Copy)]
struct Times {
    /// Usable until (Unix ms), or a reservation's token.
    stamp: u64,
    fresh_until: u64,
    load_micros: u32,
}

/// The tag section of an entry carrying `tags`.
fn tag_section(tags: &Tags) -> Result<Vec<u8>, EncodeError> {
    if tags.names.len() > MAX_TAGS {
        return Err(EncodeError::Codec(
            format!(
                "{} tags: an entry carries at most {MAX_TAGS}",
                tags.names.len()
            )
            .into(),
        ));
    }
    let mut out = Vec::with_capacity(9 + tags.names.iter().map(|n| 2 + n.len()).sum::<usize>());
    out.extend_from_slice(&tags.born.to_le_bytes());
    out.push(tags.names.len() as u8);
    for name in &*tags.names {
        let len = u16::try_from(name.len())
            .map_err(|_| EncodeError::Codec("a tag longer than 65,535 bytes".into()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    Ok(out)
}

/// The tags at the start of `rest`, and what follows them.
fn read_tags(rest: &[u8]) -> Result<(Option<Arc<Tags>>, &[u8]), DecodeError> {
    let bad = || DecodeError::Value("a tag section that does not parse".into());
    let (born, rest) = rest
        .split_first_chunk::<8>()
        .ok_or(DecodeError::Truncated)?;
    let (&count, mut rest) = rest.split_first().ok_or(DecodeError::Truncated)?;
    if usize::from(count) > MAX_TAGS {
        return Err(bad());
    }
    let mut names = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (len, after) = rest
            .split_first_chunk::<2>()
            .ok_or(DecodeError::Truncated)?;
        let len = usize::from(u16::from_le_bytes(*len));
        let name = after.get(..len).ok_or(DecodeError::Truncated)?;
        names.push(Box::from(std::str::from_utf8(name).map_err(|_| bad())?));
        rest = &after[len..];
    }
    let tags = Tags::new(names.into_boxed_slice(), u64::from_le_bytes(*born));
    Ok((Some(tags), rest))
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
        Wire::plain(codec, fingerprint::<User>(1))
    }

    const KEY: &str = "ns:1:k";

    fn life(secs: u64) -> Lifetime {
        let ttl = Duration::from_secs(secs);
        Lifetime {
            fresh: ttl,
            keep: ttl,
            load: Duration::ZERO,
        }
    }

    #[test]
    fn tags_travel_with_the_entry_and_a_cut_section_is_an_error() {
        let w = wire(Codec::Bincode);
        let tags = Tags::new(Box::new(["user:7".into(), "é".into(), "".into()]), 42);
        let bytes = w
            .encode_tagged(Some(&7u32), life(60), KEY, Some(&tags))
            .unwrap();
        let back: Decoded<u32> = w.decode(&bytes, KEY).unwrap().unwrap();
        assert_eq!((back.value, back.tags.as_deref()), (Some(7), Some(&*tags)));
        for cut in ENVELOPE_LEN..bytes.len() {
            assert!(w.decode::<u32>(&bytes[..cut], KEY).is_err(), "cut at {cut}");
        }
        let untagged: Decoded<u32> = w
            .decode(&w.encode(Some(&7u32), life(60), KEY).unwrap(), KEY)
            .unwrap()
            .unwrap();
        assert!(untagged.tags.is_none());
        let mut bad_utf8 = bytes.clone();
        bad_utf8[ENVELOPE_LEN + 11] = 0xff;
        assert!(w.decode::<u32>(&bad_utf8, KEY).is_err());
        let too_many = Tags::new((0..=MAX_TAGS).map(|i| i.to_string().into()).collect(), 1);
        assert!(w
            .encode_tagged(Some(&7u32), life(60), KEY, Some(&too_many))
            .is_err());
    }

    #[cfg(feature = "encryption")]
    #[test]
    fn encryption_authenticates_the_tags() {
        let mut w = wire(Codec::Bincode);
        w.encryption = Some(Encryption::new(1, &[1; 32]));
        let tags = Tags::new(Box::new(["user:7".into()]), 42);
        let mut bytes = w
            .encode_tagged(Some(&7u32), life(60), KEY, Some(&tags))
            .unwrap();
        assert!(w.decode::<u32>(&bytes, KEY).is_ok());
        bytes[ENVELOPE_LEN] ^= 1; // the birth, one tick later
        assert!(matches!(
            w.decode::<u32>(&bytes, KEY),
            Err(DecodeError::Decrypt)
        ));
    }

    #[test]
    fn the_envelope_carries_fresh_and_usable_times_and_the_load_duration() {
        let w = wire(Codec::Bincode);
        let lifetime = Lifetime {
            fresh: Duration::from_secs(10),
            keep: Duration::from_secs(100),
            load: Duration::from_millis(42),
        };
        let bytes = w.encode(Some(&7u32), lifetime, KEY).unwrap();
        let back: Decoded<u32> = w.decode(&bytes, KEY).unwrap().unwrap();
        assert_eq!(back.value, Some(7));
        assert!(back.fresh > Duration::from_secs(8) && back.fresh <= Duration::from_secs(10));
        assert!(back.remaining > Duration::from_secs(98));
        assert_eq!(back.load, Duration::from_millis(42));
        // Stale: usable, no longer fresh.
        let stale = Lifetime {
            fresh: Duration::ZERO,
            ..lifetime
        };
        let bytes = w.encode(Some(&7u32), stale, KEY).unwrap();
        let back: Decoded<u32> = w.decode(&bytes, KEY).unwrap().unwrap();
        assert!(back.fresh.is_zero() && !back.remaining.is_zero());
        // Version 2 entries are refused.
        let mut old = bytes.clone();
        old[2] = 2;
        assert!(matches!(
            w.decode::<u32>(&old, KEY),
            Err(DecodeError::Version(2))
        ));
    }

    #[test]
    fn round_trips_values_and_absences_with_both_codecs() {
        for codec in [Codec::Bincode, Codec::Json, Codec::MessagePack] {
            let w = wire(codec);
            let user = User {
                id: 1,
                name: "a".into(),
            };
            let bytes = w.encode(Some(&user), life(60), KEY).unwrap();
            let back: Decoded<User> = w.decode(&bytes, KEY).unwrap().unwrap();
            assert_eq!(back.value, Some(user));
            assert!(back.remaining > Duration::from_secs(58));
            let none = w.encode::<User>(None, life(5), KEY).unwrap();
            assert_eq!(w.decode::<User>(&none, KEY).unwrap().unwrap().value, None);
            let (r1, r2) = (w.reservation(), w.reservation());
            assert_ne!(r1, r2, "every reservation is unique");
            assert!(w.decode::<User>(&r1, KEY).unwrap().is_none());
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
                life(60),
                KEY,
            )
            .unwrap();
        let check = |bytes: &[u8], what: &str| {
            assert!(
                w.decode::<User>(bytes, KEY).is_err(),
                "{what} must not decode"
            );
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
            (12, "flags"),
            (14, "kind"),
        ] {
            let mut bad = good.clone();
            bad[index] ^= 0xff;
            check(&bad, what);
        }
        let other_schema = Wire::plain(Codec::Bincode, fingerprint::<User>(2));
        assert!(matches!(
            other_schema.decode::<User>(&good, KEY),
            Err(DecodeError::Fingerprint)
        ));
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..10_000 {
            let len = rng.usize(0..64);
            let mut noise: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if rng.bool() && noise.len() >= 12 {
                noise[..12].copy_from_slice(&good[..12]);
            }
            let _ = w.decode::<User>(&noise, KEY);
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
                life(60),
                KEY,
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
        assert!(w.decode::<User>(&crafted(&w, &body), KEY).is_err());
        // A Vec<u64> claiming 2^40 elements.
        let vecs = Wire::plain(Codec::Bincode, fingerprint::<Vec<u64>>(1));
        let mut body = vec![253u8];
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let mut bytes = vecs.encode(Some(&vec![1u64]), life(60), KEY).unwrap();
        bytes.truncate(ENVELOPE_LEN);
        bytes.extend_from_slice(&body);
        assert!(vecs.decode::<Vec<u64>>(&bytes, KEY).is_err());
    }

    #[test]
    fn legitimate_values_that_claim_more_than_they_weigh_still_decode() {
        let w = Wire::plain(Codec::Bincode, fingerprint::<Vec<String>>(1));
        let value = vec![String::new(); 100_000];
        let bytes = w.encode(Some(&value), life(60), KEY).unwrap();
        let back = w.decode::<Vec<String>>(&bytes, KEY).unwrap().unwrap();
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
            let _ = w.decode::<User>(&crafted(&w, &body), KEY);
        }
    }

    fn big_user() -> User {
        User {
            id: 9,
            name: "abcdefgh".repeat(500),
        }
    }

    #[test]
    fn large_payloads_are_compressed_and_round_trip() {
        let mut w = wire(Codec::Bincode);
        w.compress_from = Some(256);
        let bytes = w.encode(Some(&big_user()), life(60), KEY).unwrap();
        assert_eq!(bytes[12] & FLAG_LZ4, FLAG_LZ4);
        assert!(bytes.len() < 500, "{} bytes", bytes.len());
        let back = w.decode::<User>(&bytes, KEY).unwrap().unwrap();
        assert_eq!(back.value, Some(big_user()));
        // Small values are left alone.
        let small = w.encode(
            Some(&User {
                id: 1,
                name: "a".into(),
            }),
            life(60),
            KEY,
        );
        assert_eq!(small.unwrap()[12], 0);
    }

    #[test]
    fn hostile_compressed_payloads_are_errors() {
        let mut w = wire(Codec::Bincode);
        w.compress_from = Some(256);
        let good = w.encode(Some(&big_user()), life(60), KEY).unwrap();
        // A stated length past the limit: refused before any allocation.
        let mut huge = good.clone();
        huge[ENVELOPE_LEN..ENVELOPE_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            w.decode::<User>(&huge, KEY),
            Err(DecodeError::TooLarge(_))
        ));
        // A block that does not decompress to its stated length.
        let mut short = good.clone();
        short.truncate(short.len() - 10);
        assert!(w.decode::<User>(&short, KEY).is_err());
        let mut garbage = good[..ENVELOPE_LEN + 4].to_vec();
        garbage.extend_from_slice(&[0xff; 64]);
        assert!(w.decode::<User>(&garbage, KEY).is_err());
    }

    #[test]
    fn payloads_past_the_limit_are_not_written_nor_read() {
        let mut w = wire(Codec::Bincode);
        w.max_value_bytes = 1024;
        let too_big = w.encode(Some(&big_user()), life(60), KEY);
        assert!(matches!(too_big, Err(EncodeError::TooLarge(_))));
        let roomy = wire(Codec::Bincode);
        let bytes = roomy.encode(Some(&big_user()), life(60), KEY).unwrap();
        assert!(matches!(
            w.decode::<User>(&bytes, KEY),
            Err(DecodeError::TooLarge(_))
        ));
    }

    #[cfg(feature = "encryption")]
    #[test]
    fn encrypted_entries_open_only_with_their_key_at_their_place() {
        let old = Encryption::new(1, &[1; 32]);
        let rotated = Encryption::new(2, &[2; 32]).also_read(1, &[1; 32]);
        let with = |keys: &Encryption| {
            let mut w = wire(Codec::Bincode);
            w.encryption = Some(keys.clone());
            w
        };
        let (w_old, w_new) = (with(&old), with(&rotated));
        let user = User {
            id: 3,
            name: "secret name".into(),
        };
        let sealed = w_old.encode(Some(&user), life(60), KEY).unwrap();
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "plaintext leaked"
        );
        // Rotation: the new write key reads old entries and writes under key 2.
        let back = w_new.decode::<User>(&sealed, KEY).unwrap().unwrap();
        assert_eq!(back.value.as_ref(), Some(&user));
        let resealed = w_new.encode(Some(&user), life(60), KEY).unwrap();
        assert_eq!(resealed[13], 2);
        assert!(matches!(
            w_old.decode::<User>(&resealed, KEY),
            Err(DecodeError::UnknownKey(2))
        ));
        // A wrong key under a known id, a moved entry, tampering, truncation.
        let wrong = with(&Encryption::new(1, &[9; 32]));
        assert!(matches!(
            wrong.decode::<User>(&sealed, KEY),
            Err(DecodeError::Decrypt)
        ));
        assert!(matches!(
            w_old.decode::<User>(&sealed, "ns:1:other"),
            Err(DecodeError::Decrypt)
        ));
        let mut tampered = sealed.clone();
        tampered[16] ^= 1; // the expiry: authenticated
        assert!(w_old.decode::<User>(&tampered, KEY).is_err());
        for len in ENVELOPE_LEN..sealed.len() {
            assert!(w_old.decode::<User>(&sealed[..len], KEY).is_err(), "{len}");
        }
        // With encryption required, plaintext entries (and absences) are refused.
        let plain = wire(Codec::Bincode)
            .encode(Some(&user), life(60), KEY)
            .unwrap();
        assert!(matches!(
            w_old.decode::<User>(&plain, KEY),
            Err(DecodeError::Flags(0))
        ));
        let absence = w_old.encode::<User>(None, life(5), KEY).unwrap();
        assert_eq!(
            w_old.decode::<User>(&absence, KEY).unwrap().unwrap().value,
            None
        );
        // Without encryption configured, an encrypted entry is an unknown key.
        assert!(matches!(
            wire(Codec::Bincode).decode::<User>(&sealed, KEY),
            Err(DecodeError::UnknownKey(1))
        ));
    }

    #[test]
    fn fingerprints_differ_by_type_and_version() {
        assert_ne!(fingerprint::<User>(1), fingerprint::<User>(2));
        assert_ne!(fingerprint::<User>(1), fingerprint::<String>(1));
        assert_eq!(fingerprint::<User>(1), fingerprint::<User>(1));
    }
}
