use std::sync::LazyLock;
use tiered::{cached_tier, TieredCache};

#[derive(Debug, Clone)]
pub struct DbError;

static CACHE: LazyLock<TieredCache<String, u64>> =
    LazyLock::new(|| TieredCache::builder("pass").build().unwrap());

#[cached_tier(cache = CACHE, key = "n:{n}", ttl = "30s")]
async fn double(n: u64) -> Result<u64, DbError> {
    let parsed: u64 = "2".parse().map_err(|_| DbError)?;
    Ok(n * parsed)
}

fn cache() -> &'static TieredCache<String, u64> {
    &CACHE
}

#[cached_tier(cache = cache(), unless = |v| *v == 0)]
async fn plain(a: u32, b: &str) -> u64 {
    u64::from(a) + b.len() as u64
}

fn main() {
    fn assert_send<F: std::future::Future + Send>(_: F) {}
    assert_send(double(1));
    assert_send(plain(1, "x"));
}
