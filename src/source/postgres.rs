//! A [`Loader`] over deadpool-postgres: one parameterised query, a row mapper, and
//! an optional `= ANY($1)` query that loads a whole batch in one round trip.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::BoxError;
use crate::key::CacheKey;
use crate::source::Loader;

type RowMapper<K, V> = dyn Fn(&Row) -> Result<(K, V), tokio_postgres::Error> + Send + Sync;

/// Loads values from PostgreSQL.
///
/// The query for one key takes the key (or what [`param`](PgLoader::param) makes of
/// it) as `$1` and returns at most one row; the row mapper turns a row into the
/// key and value. With [`many`](PgLoader::many), `get_many` sends one query with all
/// the missing keys as an array in `$1` (`WHERE id = ANY($1)`), and the mapper's key
/// tells which row answers which key. If a row's mapped key is not one of the
/// requested keys (a `char(n)` column pads, a `citext` column folds case), the keys
/// left unmatched are loaded one by one with the single-key query, so a batch never
/// caches as absent a key that `get` would find (logged at warn level: make the
/// mapper return the key as requested to keep one query per batch). Two requested
/// keys that the database treats as one (`'Alice'` and `'alice'` on `citext`) are
/// beyond what this can see: key such columns by a normalized form. Statements are
/// prepared once per connection (`prepare_cached`).
///
/// ```no_run
/// use tiered::{PgLoader, TieredCache};
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct User { id: i64, name: String }
///
/// # fn make(pool: deadpool_postgres::Pool) -> Result<(), tiered::BoxError> {
/// let loader = PgLoader::new(
///     pool,
///     "SELECT id, name FROM users WHERE id = $1",
///     |row| Ok((row.try_get(0)?, User { id: row.try_get(0)?, name: row.try_get(1)? })),
/// )
/// .many("SELECT id, name FROM users WHERE id = ANY($1)");
/// let users = TieredCache::<i64, User>::builder("users").loader(loader).build()?;
/// # Ok(()) }
/// ```
pub struct PgLoader<K, V, P = K> {
    pool: Pool,
    one: String,
    many: Option<String>,
    param: Arc<dyn Fn(&K) -> P + Send + Sync>,
    map_row: Arc<RowMapper<K, V>>,
}

impl<K, V, P> fmt::Debug for PgLoader<K, V, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLoader")
            .field("one", &self.one)
            .field("many", &self.many)
            .finish_non_exhaustive()
    }
}

impl<K, V> PgLoader<K, V, K>
where
    K: CacheKey + ToSql,
{
    /// A loader that binds the key itself as `$1` of `query`.
    pub fn new(
        pool: Pool,
        query: impl Into<String>,
        map_row: impl Fn(&Row) -> Result<(K, V), tokio_postgres::Error> + Send + Sync + 'static,
    ) -> Self {
        PgLoader {
            pool,
            one: query.into(),
            many: None,
            param: Arc::new(K::clone),
            map_row: Arc::new(map_row),
        }
    }
}

impl<K, V, P> PgLoader<K, V, P> {
    /// Binds `param(key)` instead of the key, e.g. the numeric id inside a richer
    /// key type.
    pub fn param<Q>(self, param: impl Fn(&K) -> Q + Send + Sync + 'static) -> PgLoader<K, V, Q> {
        PgLoader {
            pool: self.pool,
            one: self.one,
            many: self.many,
            param: Arc::new(param),
            map_row: self.map_row,
        }
    }

    /// The query for a batch: it gets every key's parameter as one array in `$1`
    /// (`... WHERE id = ANY($1)`). Without it, a batch runs the single-key query
    /// for each key.
    pub fn many(mut self, query: impl Into<String>) -> Self {
        self.many = Some(query.into());
        self
    }
}

impl<K, V, P> Loader<K, V> for PgLoader<K, V, P>
where
    K: CacheKey,
    V: Send + 'static,
    P: ToSql + Sync + Send + 'static,
{
    async fn load(&self, key: &K) -> Result<Option<V>, BoxError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(&self.one).await?;
        let param = (self.param)(key);
        let row = client.query_opt(&statement, &[&param]).await?;
        Ok(match row {
            Some(row) => Some((self.map_row)(&row)?.1),
            None => None,
        })
    }

    async fn load_many(&self, keys: &[K]) -> Result<HashMap<K, V>, BoxError> {
        let Some(many) = &self.many else {
            let mut found = HashMap::with_capacity(keys.len());
            for key in keys {
                if let Some(value) = self.load(key).await? {
                    found.insert(key.clone(), value);
                }
            }
            return Ok(found);
        };
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(many).await?;
        let params: Vec<P> = keys.iter().map(|k| (self.param)(k)).collect();
        let rows = client.query(&statement, &[&params]).await?;
        drop(client);
        let requested: HashSet<&K> = keys.iter().collect();
        let mut found = HashMap::with_capacity(rows.len());
        let mut unplaced = 0;
        for row in &rows {
            let (key, value) = (self.map_row)(row)?;
            if requested.contains(&key) {
                found.insert(key, value);
            } else {
                unplaced += 1;
            }
        }
        if unplaced > 0 {
            // The mapper's keys are not the requested ones (`char(n)` padding, a
            // case-insensitive column, a `param` on a richer key): a row the batch
            // cannot place must not leave its key cached as absent. Load what is
            // unmatched one by one, exactly as `get` would.
            tracing::warn!(
                unplaced,
                "PgLoader::many: rows whose mapped key was not among the requested \
                 keys; loading the unmatched keys one by one"
            );
            for key in keys {
                if !found.contains_key(key) {
                    if let Some(value) = self.load(key).await? {
                        found.insert(key.clone(), value);
                    }
                }
            }
        }
        Ok(found)
    }
}
