//! Entry points for the fuzz targets under `fuzz/` (feature `fuzzing`; not part
//! of the API): every parser of bytes that come from Redis or the bus, with the
//! properties each must keep on any input.

use std::time::Duration;

use crate::bus::message::Message;
use crate::codec::{Codec, Wire};
use crate::pattern::Pattern;
use crate::policy::freshness::Lifetime;

/// The value type the wire target decodes into: strings, bytes, options,
/// sequences and numbers, so that each codec's decoder meets every shape.
type Probe = (String, Vec<u8>, Option<u64>, Vec<(u8, String)>, i32);

/// The key entries are written under (encryption authenticates it).
const KEY: &str = "fuzz:key";

/// A small limit, so that the size checks are reached.
const MAX_VALUE: usize = 4096;

fn wires() -> Vec<Wire> {
    let mut wires = Vec::new();
    for codec in [Codec::Bincode, Codec::Json, Codec::MessagePack] {
        for compress_from in [None, Some(0)] {
            let wire = Wire {
                codec,
                fingerprint: crate::codec::fingerprint::<Probe>(1),
                compress_from,
                max_value_bytes: MAX_VALUE,
                #[cfg(feature = "encryption")]
                encryption: None,
            };
            #[cfg(feature = "encryption")]
            wires.push(Wire {
                encryption: Some(crate::codec::Encryption::new(7, &[7; 32]).also_read(3, &[3; 32])),
                ..wire.clone()
            });
            wires.push(wire);
        }
    }
    wires
}

/// Decodes `bytes` as an L2 entry under every codec, with and without
/// compression (and encryption, with that feature). Any input must give a value
/// or an error, never a panic; a value must encode again and decode to itself.
pub fn wire(bytes: &[u8]) {
    for wire in wires() {
        let Ok(Some(decoded)) = wire.decode::<Probe>(bytes, KEY) else {
            continue;
        };
        let lifetime = Lifetime {
            fresh: Duration::from_secs(60),
            keep: Duration::from_secs(120),
            load: decoded.load,
        };
        let tags = decoded.tags.as_deref();
        let again = wire
            .encode_tagged(decoded.value.as_ref(), lifetime, KEY, tags)
            .expect("a decoded value encodes");
        let round = wire
            .decode::<Probe>(&again, KEY)
            .expect("an encoded value decodes")
            .expect("an entry, not a reservation");
        assert_eq!(round.value, decoded.value);
        let names = |tags: Option<&crate::entry::Tags>| tags.map(|t| (t.born, t.names.clone()));
        assert_eq!(names(round.tags.as_deref()), names(tags));
        // The same bytes under another key: encryption must refuse them.
        #[cfg(feature = "encryption")]
        if wire.encryption.is_some() {
            assert!(wire.decode::<Probe>(&again, "fuzz:other").is_err());
        }
    }
}

/// Valid entries for each wire, to seed the corpus of the wire target.
pub fn wire_seeds() -> Vec<Vec<u8>> {
    let value: Probe = (
        "alice".into(),
        vec![0, 1, 255],
        Some(7),
        vec![(1, "x".into())],
        -3,
    );
    let lifetime = Lifetime {
        fresh: Duration::from_secs(60),
        keep: Duration::from_secs(120),
        load: Duration::from_millis(5),
    };
    let mut seeds = Vec::new();
    for wire in wires() {
        seeds.extend(wire.encode(Some(&value), lifetime, KEY).ok());
        seeds.extend(wire.encode::<Probe>(None, lifetime, KEY).ok());
        let tags = crate::entry::Tags::new(Box::new(["user:7".into(), "é".into()]), 42);
        seeds.extend(
            wire.encode_tagged(Some(&value), lifetime, KEY, Some(&tags))
                .ok(),
        );
        seeds.push(wire.reservation());
    }
    seeds
}

/// Parses `bytes` as a bus message. A message this version reads must be
/// exactly the bytes that encoding it gives.
pub fn bus(bytes: &[u8]) {
    if let Some((origin, message)) = Message::decode(bytes) {
        assert_eq!(message.encode(origin), bytes);
    }
}

/// One message of each kind, to seed the corpus of the bus target.
pub fn bus_seeds() -> Vec<Vec<u8>> {
    [
        Message::Key("user:1".into()),
        Message::Pattern("user:*".into()),
        Message::All,
        Message::Keys(vec!["user:1".into(), String::new(), "order:é".into()]),
        Message::Tags(42, vec!["user:7".into(), "orders".into()]),
    ]
    .iter()
    .map(|m| m.encode(0x0123_4567_89ab_cdef))
    .collect()
}

/// [`Pattern::matches`] for `glob` and `key` against `reference`, a matcher
/// that decides as Redis's `SCAN MATCH` does for the key inside a namespace
/// (it is given the escaped namespace + glob and the namespace + key).
pub fn pattern(glob: &str, key: &str, reference: impl Fn(&[u8], &[u8]) -> bool) {
    const NAMESPACE: &str = "app:";
    let ours = Pattern::new(glob).matches(key);
    let scoped_glob = format!("{}{glob}", crate::pattern::escape_glob(NAMESPACE));
    let theirs = reference(
        scoped_glob.as_bytes(),
        format!("{NAMESPACE}{key}").as_bytes(),
    );
    assert_eq!(ours, theirs, "glob {glob:?} on key {key:?}");
    // A literal matches itself.
    assert!(Pattern::new(crate::pattern::escape_glob(key)).matches(key));
}
