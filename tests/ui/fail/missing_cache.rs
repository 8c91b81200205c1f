use tiered::cached_tier;

#[cached_tier(key = "n:{n}")]
async fn f(n: u64) -> u64 {
    n
}

fn main() {}
