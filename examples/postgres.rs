//! L1 in front of PostgreSQL: `PgLoader` with a batch query.
//!
//! Needs a server: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
//! cargo run --features postgres --example postgres` (docker-compose.test.yml starts one).

use std::sync::Arc;

use deadpool_postgres::{Config, Runtime};
use tiered::{PgLoader, TieredCache, Ttl};
use tokio_postgres::NoTls;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: i64,
    name: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL to a PostgreSQL server")?;
    let mut config = Config::new();
    config.url = Some(url);
    let pool = config.create_pool(Some(Runtime::Tokio1), NoTls)?;
    pool.get()
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS example_users (id bigint PRIMARY KEY, name text NOT NULL);
             INSERT INTO example_users SELECT i, 'user ' || i FROM generate_series(1, 100) i
             ON CONFLICT DO NOTHING;",
        )
        .await?;

    let loader = PgLoader::new(
        pool.clone(),
        "SELECT id, name FROM example_users WHERE id = $1",
        |row| {
            let id = row.try_get(0)?;
            Ok((
                id,
                Arc::new(User {
                    id,
                    name: row.try_get(1)?,
                }),
            ))
        },
    )
    .many("SELECT id, name FROM example_users WHERE id = ANY($1)");

    let users = TieredCache::<i64, Arc<User>>::builder("users")
        .l1_max_entries(100_000)
        .l1_ttl(Ttl::MEDIUM)
        .loader(loader)
        .build()?;

    println!("get(1)        -> {:?}", users.get(&1).await?);
    println!("get(1) again  -> {:?}", users.get(&1).await?);
    println!("get(404)      -> {:?}", users.get(&404).await?);
    let batch = users.get_many(&(1..=50).collect::<Vec<_>>()).await?;
    println!("get_many(1..=50) -> {} users", batch.len());
    println!("{:#?}", users.stats());
    Ok(())
}
