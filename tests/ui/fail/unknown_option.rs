use tiered::{cached_tier, TieredCache};
fn cache() -> &'static TieredCache<String, u64> { unimplemented!() }

#[cached_tier(cache = cache(), refresh = true)]
async fn f(n: u64) -> u64 {
    n
}

fn main() {}
