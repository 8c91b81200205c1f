use tiered::{cached_tier, TieredCache};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MyError;
type Outcome<T> = Result<T, MyError>;

fn cache() -> &'static TieredCache<String, Outcome<u64>> { unimplemented!() }

#[cached_tier(cache = cache())]
async fn f(n: u64) -> Outcome<u64> {
    Ok(n)
}

fn main() {}
