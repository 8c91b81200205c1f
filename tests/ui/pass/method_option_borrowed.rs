use tiered::{cached_tier, TieredCache};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub name: String,
}

pub struct Service {
    cache: TieredCache<String, User>,
}

pub struct Pool;

impl Service {
    #[cached_tier(cache = self.cache, skip(self, pool), negative = true)]
    pub async fn find(&self, pool: &Pool, name: &str, tag: Option<&str>) -> Option<User> {
        let _ = pool;
        Some(User { name: format!("{name}{}", tag.unwrap_or_default()) })
    }
}

fn main() {}
