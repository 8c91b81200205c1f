use std::sync::LazyLock;
use tiered::{cached_tier, TieredCache};

static BY_PAIR: LazyLock<TieredCache<(u64, u32), String>> =
    LazyLock::new(|| TieredCache::builder("by-pair").build().unwrap());

#[cached_tier(cache = BY_PAIR, key = (org, *seat))]
async fn holder(org: u64, seat: &u32) -> String {
    format!("{org}:{seat}")
}

fn main() {
    let _ = holder(1, &2);
}
