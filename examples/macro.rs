//! `#[cached_tier]` on a free function and on a method, with no servers needed.
//!
//! Run it with `cargo run --example macro`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use tiered::{cached_tier, TieredCache, Ttl};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Product {
    sku: String,
    price_cents: u64,
}

/// The function's own error: `Clone`, because every caller waiting on the same key
/// gets a copy.
#[derive(Debug, Clone)]
enum CatalogError {
    Unknown(String),
}

static PRODUCTS: LazyLock<TieredCache<String, Arc<Product>>> = LazyLock::new(|| {
    TieredCache::builder("products")
        .l1_ttl(Ttl::MEDIUM)
        .build()
        .expect("valid settings")
});

static QUERIES: AtomicUsize = AtomicUsize::new(0);

struct Db;

#[cached_tier(cache = PRODUCTS, key = "product:{sku}", skip(db))]
async fn product(db: &Db, sku: &str) -> Result<Arc<Product>, CatalogError> {
    let _ = db;
    QUERIES.fetch_add(1, Ordering::SeqCst);
    if sku.starts_with("X") {
        return Err(CatalogError::Unknown(sku.to_owned()));
    }
    Ok(Arc::new(Product {
        sku: sku.to_owned(),
        price_cents: 1999,
    }))
}

struct Pricing {
    discounts: TieredCache<String, u64>,
}

impl Pricing {
    /// `None` ("no discount") is cached too, for the cache's negative TTL.
    #[cached_tier(cache = self.discounts, skip(self), negative = true, ttl = "1m")]
    async fn discount(&self, sku: &str, country: Option<&str>) -> Option<u64> {
        QUERIES.fetch_add(1, Ordering::SeqCst);
        (country == Some("FR") && sku == "A1").then_some(10)
    }
}

#[tokio::main]
async fn main() {
    let db = Db;
    let p = product(&db, "A1").await.expect("known");
    println!(
        "product(A1) -> {} at {} cents (queries: {})",
        p.sku,
        p.price_cents,
        QUERIES.load(Ordering::SeqCst)
    );
    product(&db, "A1").await.expect("known");
    println!(
        "product(A1) again -> from the cache (queries: {})",
        QUERIES.load(Ordering::SeqCst)
    );
    let CatalogError::Unknown(unknown) = product(&db, "X9").await.unwrap_err();
    println!(
        "product(X9) -> unknown sku {unknown} (not cached; queries: {})",
        QUERIES.load(Ordering::SeqCst)
    );

    let pricing = Pricing {
        discounts: TieredCache::builder("discounts")
            .build()
            .expect("valid settings"),
    };
    for _ in 0..2 {
        let fr = pricing.discount("A1", Some("FR")).await;
        let none = pricing.discount("A1", None).await;
        println!(
            "discount(A1, FR) -> {fr:?}, discount(A1, None) -> {none:?} (queries: {})",
            QUERIES.load(Ordering::SeqCst)
        );
    }
    assert_eq!(
        QUERIES.load(Ordering::SeqCst),
        4,
        "two product queries, two discount queries"
    );
    println!("products cache: {:?}", PRODUCTS.stats().l1);
}
