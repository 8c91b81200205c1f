use tiered::{cached_tier, TieredCache};
fn cache() -> &'static TieredCache<String, u64> { unimplemented!() }

#[derive(Debug)]
pub struct NotClone;

#[cached_tier(cache = cache())]
async fn f(n: u64) -> Result<u64, NotClone> {
    Ok(n)
}

fn main() {}
