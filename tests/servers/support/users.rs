//! The `users(id, name)` rows of `Postgres::users_table`, and their loader.

use tiered::PgLoader;

/// A row.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub id: i64,
    pub name: String,
}

/// A row whose first two columns are `id` and `name`, keyed by its id.
pub fn user_row(row: &tokio_postgres::Row) -> Result<(i64, User), tokio_postgres::Error> {
    let id: i64 = row.try_get(0)?;
    Ok((
        id,
        User {
            id,
            name: row.try_get(1)?,
        },
    ))
}

/// `get` by `id`, `get_many` with one `= ANY($1)` query.
pub fn user_loader(pool: deadpool_postgres::Pool, table: &str) -> PgLoader<i64, User> {
    PgLoader::new(
        pool,
        format!("SELECT id, name FROM {table} WHERE id = $1"),
        user_row,
    )
    .many(format!("SELECT id, name FROM {table} WHERE id = ANY($1)"))
}
