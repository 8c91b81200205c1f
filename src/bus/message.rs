//! The invalidation messages instances send each other, and their bytes:
//! magic, version, kind, the sender's id, then the key or glob.

/// An invalidation, as sent between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// One key, in its string form (an invalidation or an overwrite).
    Key(String),
    /// A glob over keys' string forms.
    Pattern(String),
    /// Everything.
    All,
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
        };
        let mut out = Vec::with_capacity(HEADER_LEN + text.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&origin.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// The sender and the message, or `None` for bytes this version does not read.
    pub(crate) fn decode(bytes: &[u8]) -> Option<(u128, Message)> {
        if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC || bytes[2] != VERSION {
            return None;
        }
        let origin = u128::from_le_bytes(bytes[4..HEADER_LEN].try_into().ok()?);
        let text = std::str::from_utf8(&bytes[HEADER_LEN..]).ok()?;
        let message = match bytes[3] {
            0 => Message::Key(text.to_owned()),
            1 => Message::Pattern(text.to_owned()),
            2 if text.is_empty() => Message::All,
            _ => return None,
        };
        Some((origin, message))
    }
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
    }
}
