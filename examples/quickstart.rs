//! The smallest useful cache: L1 in front of an async loader, no servers needed.
//!
//! Run it with `cargo run --example quickstart`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tiered::{BoxError, TieredCache, Ttl};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[tokio::main]
async fn main() -> Result<(), tiered::Error> {
    // Stands in for a database: counts how often it is asked.
    let queries = Arc::new(AtomicUsize::new(0));
    let db = queries.clone();
    let users = TieredCache::<u64, Arc<User>>::builder("users")
        .l1_max_entries(10_000)
        .l1_ttl(Ttl::MEDIUM)
        .negative_ttl(Duration::from_secs(30))
        .loader_fn(move |id: u64| {
            db.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await; // a slow query
                let user = (id < 1000).then(|| {
                    Arc::new(User {
                        id,
                        name: format!("user {id}"),
                    })
                });
                Ok::<_, BoxError>(user)
            }
        })
        .build()?;

    let report = |step: &str| {
        let s = users.stats();
        println!(
            "{step:<44} l1 hits {:>3}  misses {:>3}  loads {:>2}  coalesced {:>3}  db queries {}",
            s.l1.hits,
            s.l1.misses,
            s.loads,
            s.coalesced,
            queries.load(Ordering::SeqCst)
        );
    };

    let user = users.get(&7).await?;
    println!("get(7) -> {user:?}");
    report("first get(7): miss, loaded");

    users.get(&7).await?;
    report("second get(7): L1 hit");

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let users = users.clone();
            tokio::spawn(async move { users.get(&42).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task")?;
    }
    report("100 concurrent get(42): one load");

    assert!(users.get(&5000).await?.is_none());
    users.get(&5000).await?;
    report("get(5000) twice: absent, remembered");

    let many = users.get_many(&[1, 2, 3, 7, 42]).await?;
    println!("get_many([1, 2, 3, 7, 42]) -> {} users", many.len());
    report("get_many: 2 hits, 3 misses, one batch load");

    users.invalidate(&7).await;
    users.get(&7).await?;
    report("invalidate(7), get(7): reloaded");

    let s = users.stats();
    println!("L1 hit ratio: {:.2}", s.l1.hit_ratio());
    Ok(())
}
