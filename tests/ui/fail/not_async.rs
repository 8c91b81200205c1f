use tiered::{cached_tier, TieredCache};
fn cache() -> &'static TieredCache<String, u64> { unimplemented!() }

#[cached_tier(cache = cache())]
fn not_async(n: u64) -> u64 {
    n
}

fn main() {}
