use std::sync::LazyLock;
use tiered::{cached_tier, TieredCache};

static BY_ID: LazyLock<TieredCache<u64, String>> =
    LazyLock::new(|| TieredCache::builder("by-id").build().unwrap());

// A format-string key is a `String`: a cache keyed by `u64` needs `key = id`.
#[cached_tier(cache = BY_ID, key = "user:{id}")]
async fn name(id: u64) -> String {
    format!("user {id}")
}

fn main() {}
