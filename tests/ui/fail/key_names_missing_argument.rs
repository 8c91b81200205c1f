use tiered::{cached_tier, TieredCache};
fn cache() -> &'static TieredCache<String, u64> { unimplemented!() }

#[cached_tier(cache = cache(), key = "user:{user_id}")]
async fn f(id: u64) -> u64 {
    id
}

fn main() {}
