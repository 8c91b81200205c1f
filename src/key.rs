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
        assert_eq!(<&'static str>::from_key_str("a"), None);
    }
}
