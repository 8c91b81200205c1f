//! The crate's errors: [`Error`] for reads, [`ConfigError`] for building.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// A boxed error, as returned by [`Loader`](crate::Loader)s.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An error shared by every caller of one flight: the loader's own error, kept whole.
pub type SharedError = Arc<dyn StdError + Send + Sync + 'static>;

/// What a read of a [`TieredCache`](crate::TieredCache) can fail with.
///
/// Cache tiers never produce errors on the read path: a failing or missing tier is a
/// miss. What reaches the caller is the loader's failure. (Building a cache fails
/// with a [`ConfigError`] instead; [`try_get_with`](crate::TieredCache::try_get_with)
/// returns the caller's own error type.)
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The loader returned an error. [`source()`](StdError::source) is the loader's
    /// own error (downcast it to get the original type back). Errors are never cached:
    /// the next call loads again.
    Load {
        /// The key being loaded, in its string form.
        key: String,
        /// The loader's error, shared by every caller that waited on the same load.
        source: SharedError,
    },
    /// The loader panicked. The panic is contained: the cache stays usable and every
    /// caller waiting on that load gets this error.
    LoaderPanicked {
        /// The key being loaded, in its string form.
        key: String,
        /// The panic message, when the payload was a string.
        message: String,
    },
    /// The load ran past the cache's hard timeout and was given up (with no stale
    /// copy to serve instead).
    LoadTimedOut {
        /// The key being loaded, in its string form.
        key: String,
        /// The hard timeout.
        after: std::time::Duration,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Load { key, source } => write!(f, "loading key `{key}` failed: {source}"),
            Error::LoaderPanicked { key, message } => {
                write!(
                    f,
                    "the loader panicked while loading key `{key}`: {message}"
                )
            }
            Error::LoadTimedOut { key, after } => {
                write!(
                    f,
                    "loading key `{key}` took longer than {after:?}: given up"
                )
            }
        }
    }
}

impl Error {
    /// The failure in one word, for a span's `error.type`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Error::Load { .. } => "load",
            Error::LoaderPanicked { .. } => "panic",
            Error::LoadTimedOut { .. } => "timeout",
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Load { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// A setting the builder (or a store's constructor) cannot use: returned by
/// [`TieredCacheBuilder::build`](crate::TieredCacheBuilder::build),
/// [`RedisStore::standalone`](crate::RedisStore::standalone) and
/// [`RedisStore::cluster`](crate::RedisStore::cluster), never by a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }

    /// What is wrong, in words (the [`Display`](fmt::Display) form without its
    /// prefix).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid cache configuration: {}", self.message)
    }
}

impl StdError for ConfigError {}

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
    /// Flags this version does not know, or a value unencrypted where encryption
    /// is required.
    Flags(u8),
    /// The payload is larger than the configured limit.
    TooLarge(usize),
    /// Encrypted under a key id this cache does not have.
    UnknownKey(u8),
    /// Did not open: wrong key, tampered or truncated ciphertext.
    Decrypt,
    /// The compressed payload does not decompress to its stated length.
    Decompress,
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
            DecodeError::Flags(flags) => write!(f, "unexpected flags {flags:#04x}"),
            DecodeError::TooLarge(n) => write!(f, "a payload of {n} bytes is past the limit"),
            DecodeError::UnknownKey(id) => write!(f, "encrypted under unknown key id {id}"),
            DecodeError::Decrypt => f.write_str("does not open with its key"),
            DecodeError::Decompress => f.write_str("does not decompress"),
        }
    }
}

impl StdError for DecodeError {}
