//! Encryption at rest of L2 values: AES-256-GCM, one key to write with and any
//! number to read with, so keys can be rotated without a flush.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::error::DecodeError;

const NONCE_LEN: usize = 12;

/// AES-256-GCM keys for the values a cache writes to L2 (feature `encryption`).
///
/// Each entry is sealed with the write key under a random 96-bit nonce; its header
/// (with the key's id) and its Redis key are authenticated with it, so an entry
/// copied to another key, or with its expiry changed, does not open. Entries under
/// any key added with [`also_read`](Encryption::also_read) still open: to rotate,
/// deploy the new key as the write key with the old one readable, and drop the old
/// one after the L2 TTL. An entry that does not open (unknown key id, wrong key,
/// tampered or truncated bytes), and any unencrypted value, is a counted miss.
///
/// ```
/// use tiered::{Encryption, TieredCache};
///
/// let keys = Encryption::new(2, &[7u8; 32]).also_read(1, &[1u8; 32]);
/// let cache = TieredCache::<String, String>::builder("secrets")
///     .l2_encryption(keys)
///     .build()
///     .unwrap();
/// # drop(cache);
/// ```
#[derive(Clone)]
pub struct Encryption {
    write: u8,
    keys: Arc<HashMap<u8, Aes256Gcm>>,
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<u8> = self.keys.keys().copied().collect();
        ids.sort_unstable();
        f.debug_struct("Encryption")
            .field("write_key_id", &self.write)
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

impl Encryption {
    /// Writes (and reads) with `key`, named `key_id` in each entry's header.
    pub fn new(key_id: u8, key: &[u8; 32]) -> Self {
        let mut keys = HashMap::new();
        keys.insert(key_id, Aes256Gcm::new(key.into()));
        Encryption {
            write: key_id,
            keys: Arc::new(keys),
        }
    }

    /// Also reads entries written under `key_id` with `key` (a previous key).
    pub fn also_read(mut self, key_id: u8, key: &[u8; 32]) -> Self {
        if key_id != self.write {
            Arc::make_mut(&mut self.keys).insert(key_id, Aes256Gcm::new(key.into()));
        }
        self
    }

    /// The id of the key entries are written with.
    pub(crate) fn write_key_id(&self) -> u8 {
        self.write
    }

    /// `nonce || ciphertext || tag` of `plaintext`, authenticating `aad`.
    pub(crate) fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let cipher = &self.keys[&self.write];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encrypts any input shorter than 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext of what [`seal`](Self::seal) made under `key_id`.
    pub(crate) fn open(
        &self,
        key_id: u8,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, DecodeError> {
        let cipher = self
            .keys
            .get(&key_id)
            .ok_or(DecodeError::UnknownKey(key_id))?;
        if sealed.len() < NONCE_LEN {
            return Err(DecodeError::Decrypt);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| DecodeError::Decrypt)
    }
}
