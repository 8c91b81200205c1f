use tiered::{cached_tier, TieredCache};
fn cache() -> &'static TieredCache<String, u64> { unimplemented!() }

#[cached_tier(cache = cache(), tags = ["user:{user_id}"])]
async fn f(id: u64) -> u64 {
    id
}

#[cached_tier(cache = cache(), tags = [some_tag()])]
async fn g(id: u64) -> u64 {
    id
}

fn some_tag() -> &'static str { "t" }

fn main() {}
