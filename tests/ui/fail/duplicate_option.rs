use tiered::{cached_tier, TieredCache};
fn cache() -> &'static TieredCache<String, u64> { unimplemented!() }

#[cached_tier(cache = cache(), ttl = "1s", ttl = "2s")]
async fn f(n: u64) -> u64 {
    n
}

fn main() {}
