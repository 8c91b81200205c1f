//! What a cache holds: keys ([`CacheKey`]: how they become strings, for L2 keys,
//! patterns and error messages) and values ([`CacheValue`]).

use std::hash::Hash;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A cache key.
///
/// L1 stores keys as they are (hashed and compared by `Hash` and `Eq`); the other
/// tiers and invalidation patterns see the key's string form, written by
/// [`write_key`](CacheKey::write_key). That rendering **must be one-to-one within a
/// cache**: two different keys must never render to the same string, or they would
/// share one L2 entry. Strings render as themselves and integers in decimal; for a
/// composite key, put an unambiguous separator between fields (e.g. `user:{id}`)
/// and make sure no field can contain it.
///
/// Tuples of up to four keys are keys: their parts' string forms joined by `:`,
/// each with `:` and `\` escaped by a `\`, so the form is one-to-one (`(7,
/// "a:b")` is `7:a\:b`) and parses back. A pattern over them matches those
/// strings: a literal part goes in escaped, then through
/// [`escape_glob`](crate::escape_glob):
///
/// ```
/// use tiered::{escape_glob, CacheKey};
/// assert_eq!((7, "a:b".to_owned()).to_key_string(), r"7:a\:b");
/// // Every key (7, "a:b", _) of a cache of (u64, String, u64) keys:
/// let glob = format!("7:{}:*", escape_glob(&("a:b",).to_key_string()));
/// assert_eq!(glob, r"7:a\\:b:*");
/// ```
pub trait CacheKey: Hash + Eq + Clone + Send + Sync + 'static {
    /// Appends the key's string form to `out`.
    fn write_key(&self, out: &mut String);

    /// The key's string form.
    fn to_key_string(&self) -> String {
        let mut out = String::new();
        self.write_key(&mut out);
        out
    }

    /// The key whose string form is `s`: the inverse of
    /// [`write_key`](CacheKey::write_key), used to apply other instances'
    /// invalidations (which travel as strings) to L1. The default, `None`, makes
    /// the cache find the key by comparing string forms instead, which costs a
    /// walk of L1's entries; implement it for composite keys when invalidations
    /// are frequent.
    fn from_key_str(s: &str) -> Option<Self> {
        let _ = s;
        None
    }
}

/// What a cache can hold: a `serde` type that is cheap enough to clone.
///
/// Hits return values by `clone()`. For anything bigger than a few words, cache
/// `Arc<T>` (serde's `rc` feature serializes it as `T`), so a hit costs one
/// reference-count increment.
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

macro_rules! str_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn write_key(&self, out: &mut String) {
                out.push_str(self);
            }

            fn from_key_str(s: &str) -> Option<Self> {
                Some(s.into())
            }
        }
    )*};
}
str_keys!(String, Box<str>, Arc<str>);

impl CacheKey for &'static str {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

macro_rules! int_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn write_key(&self, out: &mut String) {
                use std::fmt::Write;
                // Writing to a String cannot fail.
                let _ = write!(out, "{self}");
            }

            fn from_key_str(s: &str) -> Option<Self> {
                s.parse().ok()
            }
        }
    )*};
}
int_keys!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, bool, char);

/// UUIDs, hyphenated and lower case (`67e55044-10b1-426f-9247-bb680e5fe0c8`).
#[cfg(feature = "uuid")]
impl CacheKey for uuid::Uuid {
    fn write_key(&self, out: &mut String) {
        let mut buffer = uuid::Uuid::encode_buffer();
        out.push_str(self.hyphenated().encode_lower(&mut buffer));
    }

    fn from_key_str(s: &str) -> Option<Self> {
        // Only the form written: another spelling is another key string.
        let id = uuid::Uuid::try_parse(s).ok()?;
        (id.hyphenated().to_string() == s).then_some(id)
    }
}

/// Appends `part`'s key string with `:` and `\\` escaped (`\\:`, `\\\\`), so
/// that parts joined by `:` split back one way only.
fn write_part<T: CacheKey>(part: &T, out: &mut String) {
    let mut text = String::new();
    part.write_key(&mut text);
    for c in text.chars() {
        if c == ':' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
}

/// `s` split at its unescaped `:`, each part unescaped.
fn split_parts(s: &str) -> Option<Vec<String>> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => parts.last_mut()?.push(chars.next()?),
            ':' => parts.push(String::new()),
            c => parts.last_mut()?.push(c),
        }
    }
    Some(parts)
}

/// `CacheKey` for tuples of up to four keys (see the trait's docs).
macro_rules! tuple_keys {
    ($(($($t:ident $i:tt),+))*) => {$(
        impl<$($t: CacheKey),+> CacheKey for ($($t,)+) {
            fn write_key(&self, out: &mut String) {
                let mut first = true;
                $(
                    if !std::mem::take(&mut first) {
                        out.push(':');
                    }
                    write_part(&self.$i, out);
                )+
            }

            fn from_key_str(s: &str) -> Option<Self> {
                let parts = split_parts(s)?;
                let mut parts = parts.iter();
                let key = ($($t::from_key_str(parts.next()?)?,)+);
                parts.next().is_none().then_some(key)
            }
        }
    )*};
}
tuple_keys! {
    (A 0)
    (A 0, B 1)
    (A 0, B 1, C 2)
    (A 0, B 1, C 2, D 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_strings_and_integers_as_themselves() {
        assert_eq!("user:1".to_key_string(), "user:1");
        assert_eq!(String::from("a*b").to_key_string(), "a*b");
        assert_eq!(Arc::<str>::from("x").to_key_string(), "x");
        assert_eq!((-42i64).to_key_string(), "-42");
        assert_eq!(u128::MAX.to_key_string(), u128::MAX.to_string());
    }

    #[test]
    fn parsing_inverts_rendering() {
        for key in ["", "user:1", "é*?[x]"] {
            assert_eq!(
                String::from_key_str(&key.to_key_string()).as_deref(),
                Some(key)
            );
        }
        for n in [i64::MIN, -1, 0, 42, i64::MAX] {
            assert_eq!(i64::from_key_str(&n.to_key_string()), Some(n));
        }
        assert_eq!(u8::from_key_str("256"), None);
        let pair = (7u64, String::from("a:b\\c"));
        assert_eq!(pair.to_key_string(), "7:a\\:b\\\\c");
        assert_eq!(
            <(u64, String)>::from_key_str(&pair.to_key_string()),
            Some(pair)
        );
        let four = (String::from(":"), 1u8, String::new(), String::from("\\"));
        assert_eq!(
            <(String, u8, String, String)>::from_key_str(&four.to_key_string()),
            Some(four)
        );
        assert_ne!(
            (String::from("a:b"), String::from("c")).to_key_string(),
            (String::from("a"), String::from("b:c")).to_key_string()
        );
        assert_eq!(<(u64, u64)>::from_key_str("1:2:3"), None, "too many parts");
        assert_eq!(<(u64, u64)>::from_key_str("1"), None, "too few");
        assert_eq!(<(u64,)>::from_key_str("1\\"), None, "a dangling escape");
    }

    #[cfg(feature = "uuid")]
    #[test]
    fn uuids_are_hyphenated_lower_case_one_way() {
        let id = uuid::Uuid::from_u128(0x67e5_5044_10b1_426f_9247_bb68_0e5f_e0c8);
        assert_eq!(id.to_key_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
        assert_eq!(uuid::Uuid::from_key_str(&id.to_key_string()), Some(id));
        assert_eq!(
            uuid::Uuid::from_key_str("67E55044-10B1-426F-9247-BB680E5FE0C8"),
            None
        );
        assert_eq!(
            uuid::Uuid::from_key_str("67e5504410b1426f9247bb680e5fe0c8"),
            None
        );
        assert_eq!(<&'static str>::from_key_str("a"), None);
    }
}
