use tiered::{cached_tier, TieredCache};
fn cache() -> &'static TieredCache<String, u64> { unimplemented!() }

#[cached_tier(cache = cache())]
async fn f(n: u64) -> std::io::Result<u64> {
    Ok(n)
}

fn main() {}
