//! The read path against a real PostgreSQL, counting the queries it receives.

use std::time::Duration;

use crate::support::users::{user_loader, User};
use crate::support::{at_once, Postgres};
use tiered::{Error, ManualClock, PgLoader, TieredCache};

const ONE: &str = "WHERE id = $1";
const MANY: &str = "WHERE id = ANY($1)";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_callers_of_one_cold_key_cause_one_query() {
    let pg = Postgres::start();
    let pool = pg.pool(16);
    let table = pg.users_table(&pool, 10).await;
    let cache = TieredCache::builder("users")
        .loader(user_loader(pool.clone(), &table))
        .build()
        .unwrap();
    let users = at_once(1000, || {
        let cache = cache.clone();
        async move { cache.get(&7).await }
    })
    .await;
    for user in users {
        let user = user.unwrap();
        assert_eq!(
            user,
            Some(User {
                id: 7,
                name: "user 7".into()
            })
        );
    }
    assert_eq!(pg.calls(&pool, ONE).await, 1);
    let stats = cache.stats();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.l1.hits + stats.l1.misses, 1000);
    // Every caller that missed L1 but did not load waited on the one load.
    assert_eq!(stats.coalesced + 1, stats.l1.misses);
}

#[tokio::test]
async fn get_many_loads_a_thousand_keys_with_one_query() {
    let pg = Postgres::start();
    let pool = pg.pool(4);
    let table = pg.users_table(&pool, 1000).await;
    let cache = TieredCache::builder("users")
        .loader(user_loader(pool.clone(), &table))
        .build()
        .unwrap();
    // Two keys are already in L1, one does not exist, and one is asked twice.
    cache.get(&1).await.unwrap();
    cache.get(&2).await.unwrap();
    let mut keys: Vec<i64> = (1..=1000).collect();
    keys.push(5000);
    keys.push(3);
    let reset = pool.get().await.unwrap();
    reset
        .execute("SELECT pg_stat_statements_reset()", &[])
        .await
        .unwrap();

    let got = cache.get_many(&keys).await.unwrap();

    assert_eq!(got.len(), 1000);
    assert_eq!(
        got[&999],
        User {
            id: 999,
            name: "user 999".into()
        }
    );
    assert!(!got.contains_key(&5000));
    assert_eq!(pg.calls(&pool, MANY).await, 1);
    assert_eq!(pg.calls(&pool, ONE).await, 0);
    assert_eq!(
        cache.stats().loads,
        3,
        "two gets, then the batch counted once"
    );
    // Everything, including the absent key, is now cached.
    let again = cache.get_many(&keys).await.unwrap();
    assert_eq!(again, got);
    assert_eq!(pg.calls(&pool, MANY).await, 1);
    assert_eq!(cache.get(&5000).await.unwrap(), None);
    assert_eq!(pg.calls(&pool, ONE).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_error_reaches_every_waiter_and_the_next_call_retries() {
    let pg = Postgres::start();
    let pool = pg.pool(4);
    // The table does not exist yet: the loader's query fails.
    let cache = TieredCache::builder("users")
        .loader(user_loader(pool.clone(), "late_users"))
        .build()
        .unwrap();
    let results = at_once(100, || {
        let cache = cache.clone();
        async move { cache.get(&1).await }
    })
    .await;
    for result in results {
        let err = result.unwrap_err();
        let Error::Load { key, .. } = &err else {
            panic!("expected a load error, got {err:?}");
        };
        assert_eq!(key, "1");
        let source = std::error::Error::source(&err).expect("the original error");
        let db = source
            .downcast_ref::<tokio_postgres::Error>()
            .expect("the source is the driver's error");
        assert!(db.to_string().contains("db error"), "{db}");
    }
    assert_eq!(cache.stats().load_errors, 1, "one load, shared by all");

    let client = pool.get().await.unwrap();
    client
        .batch_execute("CREATE TABLE late_users (id bigint, name text); INSERT INTO late_users VALUES (1, 'late')")
        .await
        .unwrap();
    let user = cache.get(&1).await.unwrap();
    assert_eq!(
        user,
        Some(User {
            id: 1,
            name: "late".into()
        })
    );
    assert_eq!(cache.stats().loads, 2);
}

#[tokio::test]
async fn absence_is_cached_for_the_negative_ttl_then_reloaded() {
    let pg = Postgres::start();
    let pool = pg.pool(2);
    let table = pg.users_table(&pool, 1).await;
    let clock = ManualClock::new();
    let cache = TieredCache::builder("users")
        .loader(user_loader(pool.clone(), &table))
        .negative_ttl(Duration::from_secs(10))
        .jitter(0.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(cache.get(&42).await.unwrap(), None);
    assert_eq!(cache.get(&42).await.unwrap(), None);
    assert_eq!(pg.calls(&pool, ONE).await, 1);
    assert_eq!(cache.stats().negative_hits, 1);

    clock.advance(Duration::from_secs(9));
    assert_eq!(cache.get(&42).await.unwrap(), None);
    assert_eq!(pg.calls(&pool, ONE).await, 1);

    // The row appears; once the absence expires, the value is found.
    let client = pool.get().await.unwrap();
    client
        .execute(&format!("INSERT INTO {table} VALUES (42, 'new')"), &[])
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        cache.get(&42).await.unwrap(),
        Some(User {
            id: 42,
            name: "new".into()
        })
    );
    assert_eq!(pg.calls(&pool, ONE).await, 2);
}

#[tokio::test]
async fn an_expired_value_is_reloaded() {
    let pg = Postgres::start();
    let pool = pg.pool(2);
    let table = pg.users_table(&pool, 1).await;
    let clock = ManualClock::new();
    let cache = TieredCache::builder("users")
        .loader(user_loader(pool.clone(), &table))
        .l1_ttl(Duration::from_secs(60))
        .jitter(0.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).await.unwrap().unwrap().name, "user 1");
    let client = pool.get().await.unwrap();
    client
        .execute(
            &format!("UPDATE {table} SET name = 'renamed' WHERE id = 1"),
            &[],
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(59));
    assert_eq!(cache.get(&1).await.unwrap().unwrap().name, "user 1");
    clock.advance(Duration::from_secs(1));
    assert_eq!(cache.get(&1).await.unwrap().unwrap().name, "renamed");
    assert_eq!(pg.calls(&pool, ONE).await, 2);
}

#[tokio::test]
async fn postgres_down_is_an_error_with_its_cause_and_cached_values_still_serve() {
    let mut pg = Postgres::start_own();
    let pool = pg.pool(2);
    let table = pg.users_table(&pool, 2).await;
    let cache = TieredCache::builder("users")
        .loader(user_loader(pool.clone(), &table))
        .build()
        .unwrap();
    cache.get(&1).await.unwrap();
    pg.stop();
    let err = cache.get(&2).await.unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(
        cache.get(&1).await.unwrap().unwrap().id,
        1,
        "L1 still serves"
    );
}

/// A `char(8)` key column pads what the row mapper reads ("ab" comes back as
/// "ab      "): the batch must not cache those keys as absent while `get` finds
/// them. (Before, `get_many` returned nothing and cached every key as absent.)
#[tokio::test]
async fn get_many_agrees_with_get_when_the_mapper_key_differs_from_the_requested_key() {
    let pg = Postgres::start();
    let pool = pg.pool(2);
    let table = format!("codes_{}", std::process::id());
    pool.get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (code char(8) PRIMARY KEY, label text NOT NULL);
             INSERT INTO {table} VALUES ('ab', 'label ab'), ('cd', 'label cd');"
        ))
        .await
        .unwrap();
    let loader = PgLoader::new(
        pool.clone(),
        format!("SELECT code, label FROM {table} WHERE code = $1"),
        |row| Ok((row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?)),
    )
    .many(format!(
        "SELECT code, label FROM {table} WHERE code = ANY($1)"
    ));
    let batch = TieredCache::<String, String>::builder("codes")
        .loader(loader)
        .build()
        .unwrap();
    let keys: Vec<String> = ["ab", "cd", "zz"].map(String::from).to_vec();
    let got = batch.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got["ab"], "label ab");
    assert_eq!(batch.get("cd").await.unwrap().as_deref(), Some("label cd"));
    assert_eq!(batch.get("zz").await.unwrap(), None);
}
