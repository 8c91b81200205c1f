use tiered::{cached_tier, TieredCache};

pub struct S {
    cache: TieredCache<String, u64>,
}

impl S {
    #[cached_tier(cache = self.cache)]
    async fn f(&self, n: u64) -> u64 {
        n
    }
}

fn main() {}
