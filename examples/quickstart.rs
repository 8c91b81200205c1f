//! The smallest useful cache: L1 in front of an async loader, no servers needed.
//!
//! Run it with `cargo run --example quickstart`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tiered::{BoxError, Loader, TieredCache, Ttl};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// Stands in for a database: users 0..1000 exist; counts the queries it answers.
#[derive(Clone, Default)]
struct Db {
    queries: Arc<AtomicUsize>,
}

impl Db {
    fn user(id: u64) -> Option<Arc<User>> {
        (id < 1000).then(|| {
            Arc::new(User {
                id,
                name: format!("user {id}"),
            })
        })
    }
}

impl Loader<u64, Arc<User>> for Db {
    /// `SELECT ... WHERE id = $1`
    async fn load(&self, id: &u64) -> Result<Option<Arc<User>>, BoxError> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await; // a slow query
        Ok(Db::user(*id))
    }

    /// `SELECT ... WHERE id = ANY($1)`: one query for the whole batch.
    async fn load_many(&self, ids: &[u64]) -> Result<HashMap<u64, Arc<User>>, BoxError> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(ids
            .iter()
            .filter_map(|id| Some((*id, Db::user(*id)?)))
            .collect())
    }
}

#[tokio::main]
async fn main() -> Result<(), tiered::BoxError> {
    let db = Db::default();
    let users = TieredCache::<u64, Arc<User>>::builder("users")
        .l1_max_entries(10_000)
        .l1_ttl(Ttl::MEDIUM)
        .negative_ttl(Duration::from_secs(30))
        .loader(db.clone())
        .build()?;
    let mut requests = 0;

    let report = |step: &str, requests: usize| {
        let s = users.stats();
        println!(
            "{step:<46} requests {requests:>3}  db queries {:>2}  l1 hits {:>3}  waited on another's load {:>3}",
            db.queries.load(Ordering::SeqCst),
            s.l1.hits,
            s.coalesced,
        );
    };

    let user = users.get(&7).await?;
    requests += 1;
    println!("get(7) -> {user:?}");
    report("get(7): not cached, one query", requests);

    users.get(&7).await?;
    requests += 1;
    report("get(7) again: from L1, no query", requests);

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let users = users.clone();
            tokio::spawn(async move { users.get(&42).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task")?;
    }
    requests += 100;
    report("100 concurrent get(42): one query in all", requests);

    assert!(users.get(&5000).await?.is_none());
    users.get(&5000).await?;
    requests += 2;
    report("get(5000) twice: absent, remembered", requests);

    let many = users.get_many(&[1, 2, 3, 7, 42]).await?;
    requests += 1;
    println!("get_many([1, 2, 3, 7, 42]) -> {} users", many.len());
    report("get_many: 7 and 42 from L1, one batch query", requests);

    users.invalidate(&7).await;
    users.get(&7).await?;
    requests += 1;
    report("invalidate(7), get(7): one query again", requests);

    let queries = db.queries.load(Ordering::SeqCst);
    println!(
        "{requests} requests, {queries} database queries: {:.0}% of the load saved",
        100.0 * (1.0 - queries as f64 / requests as f64)
    );
    Ok(())
}
