//! The invalidation messages instances send each other, and their bytes:
//! magic, version, kind, the sender's id, then the key or glob (or, for several
//! keys, each as a 4-byte little-endian length and its bytes; for tags, the
//! stamp as 8 bytes little endian, then each tag so).

/// An invalidation, as sent between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// One key, in its string form (an invalidation or an overwrite).
    Key(String),
    /// Several keys, in their string forms (one `invalidate_many`).
    Keys(Vec<String>),
    /// A glob over keys' string forms.
    Pattern(String),
    /// Everything.
    All,
    /// Tags invalidated at this stamp of the tag clock.
    Tags(u64, Vec<String>),
}

const MAGIC: [u8; 2] = *b"TB";
const VERSION: u8 = 1;
/// magic, version, kind, origin.
const HEADER_LEN: usize = 2 + 1 + 1 + 16;

impl Message {
    pub(crate) fn encode(&self, origin: u128) -> Vec<u8> {
        let (kind, text) = match self {
            Message::Key(key) => (0, key.as_str()),
            Message::Pattern(glob) => (1, glob.as_str()),
            Message::All => (2, ""),
            Message::Keys(_) => (3, ""),
            Message::Tags(..) => (4, ""),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + text.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&origin.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        let texts = match self {
            Message::Keys(keys) => keys,
            Message::Tags(stamp, tags) => {
                out.extend_from_slice(&stamp.to_le_bytes());
                tags
            }
            _ => return out,
        };
        for text in texts {
            let len = u32::try_from(text.len()).expect("a key shorter than 4 GiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out
    }

    /// Whether `bytes` claim to be a message of this crate (its magic), whether
    /// or not this version reads them: one it cannot read may come from a newer
    /// version, and is taken as "everything".
    pub(crate) fn is_ours(bytes: &[u8]) -> bool {
        bytes.starts_with(&MAGIC)
    }

    /// The sender and the message, or `None` for bytes this version does not read.
    pub(crate) fn decode(bytes: &[u8]) -> Option<(u128, Message)> {
        if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC || bytes[2] != VERSION {
            return None;
        }
        let origin = u128::from_le_bytes(bytes[4..HEADER_LEN].try_into().ok()?);
        let body = &bytes[HEADER_LEN..];
        match bytes[3] {
            3 => return Some((origin, Message::Keys(keys(body)?))),
            4 => {
                let (stamp, tags) = body.split_first_chunk::<8>()?;
                let stamp = u64::from_le_bytes(*stamp);
                return Some((origin, Message::Tags(stamp, keys(tags)?)));
            }
            _ => {}
        }
        let text = std::str::from_utf8(body).ok()?;
        let message = match bytes[3] {
            0 => Message::Key(text.to_owned()),
            1 => Message::Pattern(text.to_owned()),
            2 if text.is_empty() => Message::All,
            _ => return None,
        };
        Some((origin, message))
    }
}

/// Length-prefixed keys, all of `body` or nothing.
fn keys(mut body: &[u8]) -> Option<Vec<String>> {
    let mut keys = Vec::new();
    while !body.is_empty() {
        let (len, rest) = body.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        keys.push(std::str::from_utf8(&rest[..len]).ok()?.to_owned());
        body = &rest[len..];
    }
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_foreign_bytes_are_ignored() {
        let origin = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
        for message in [
            Message::Key("user:1".into()),
            Message::Key(String::new()),
            Message::Pattern("user:[0-9]*é".into()),
            Message::All,
            Message::Keys(vec!["a".into(), String::new(), "line\nbreak é".into()]),
            Message::Keys(Vec::new()),
            Message::Tags(u64::MAX, vec!["user:7".into(), "é".into()]),
            Message::Tags(0, Vec::new()),
        ] {
            let bytes = message.encode(origin);
            assert_eq!(Message::decode(&bytes), Some((origin, message)));
        }
        assert_eq!(Message::decode(b""), None);
        assert_eq!(Message::decode(b"TB\x02"), None);
        let mut future = Message::All.encode(origin);
        future[2] = 9;
        assert_eq!(Message::decode(&future), None, "another version");
        let mut kind = Message::All.encode(origin);
        kind[3] = 7;
        assert_eq!(Message::decode(&kind), None);
        let mut bad_utf8 = Message::Key("k".into()).encode(origin);
        bad_utf8.push(0xff);
        assert_eq!(Message::decode(&bad_utf8), None);
        let keys = Message::Keys(vec!["abc".into(), "d".into()]).encode(origin);
        // Cut anywhere but between two keys, the body is not whole.
        let between = HEADER_LEN + 4 + 3;
        for cut in (HEADER_LEN + 1..keys.len()).filter(|&cut| cut != between) {
            assert_eq!(Message::decode(&keys[..cut]), None, "cut at {cut}");
        }
        assert!(Message::is_ours(&future) && Message::is_ours(&kind));
        assert!(!Message::is_ours(b"not a message"));
    }
}
