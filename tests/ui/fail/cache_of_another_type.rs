use tiered::{cached_tier, TieredCache};
fn cache() -> &'static TieredCache<String, String> { unimplemented!() }

#[cached_tier(cache = cache())]
async fn f(n: u64) -> u64 {
    n
}

fn main() {}
