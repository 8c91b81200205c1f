//! The L1-hit fixture: `String` keys `user:{id}` and `Arc<User>` values, filled
//! into a bare moka cache or a `TieredCache` the same way.

#![allow(dead_code)]

use std::sync::Arc;

use futures_util::FutureExt;
use tiered::{TieredCache, TieredCacheBuilder};

pub const ENTRIES: u64 = 100_000;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct User {
    id: u64,
    name: String,
    email: String,
}

pub fn key(id: u64) -> String {
    format!("user:{id}")
}

pub fn user(id: u64) -> Arc<User> {
    Arc::new(User {
        id,
        name: format!("user {id}"),
        email: format!("user{id}@example.com"),
    })
}

/// `n` keys of present entries, uniformly drawn (seeded).
pub fn lookups(n: usize) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..n).map(|_| key(rng.u64(0..ENTRIES))).collect()
}

/// A bare moka cache holding every user (filled in one contiguous phase).
pub fn bare() -> moka::future::Cache<String, Arc<User>> {
    let bare = moka::future::Cache::builder()
        .max_capacity(2 * ENTRIES)
        .build();
    for id in 0..ENTRIES {
        bare.insert(key(id), user(id)).now_or_never().unwrap();
    }
    bare.run_pending_tasks().now_or_never().unwrap();
    bare
}

/// A `TieredCache` (L1 only) holding every user, built by `configure`.
pub fn tiered(
    configure: impl FnOnce(
        TieredCacheBuilder<String, Arc<User>>,
    ) -> TieredCacheBuilder<String, Arc<User>>,
) -> TieredCache<String, Arc<User>> {
    let builder = TieredCache::builder("bench").l1_max_entries(2 * ENTRIES);
    let tiered = configure(builder).build().expect("build");
    for id in 0..ENTRIES {
        tiered.insert(key(id), user(id)).now_or_never().unwrap();
    }
    tiered.run_pending_tasks().now_or_never().unwrap();
    tiered
}
