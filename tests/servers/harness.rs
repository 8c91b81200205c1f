//! The harness itself: servers start, answer, and are gone after drop.

use crate::support::{redis::ping, Postgres, Redis};

#[test]
fn redis_starts_answers_and_stops() {
    let redis = Redis::start();
    let port: u16 = redis
        .url()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the url");
    assert_eq!(ping(port).as_deref(), Some("+PONG\r\n"));
    let owned = std::env::var("REDIS_URL").is_err();
    drop(redis);
    if owned {
        assert_eq!(ping(port), None, "the server must be gone after drop");
    }
}

#[tokio::test]
async fn postgres_starts_and_answers() {
    let pg = Postgres::start();
    let pool = pg.pool(2);
    let table = pg.users_table(&pool, 3).await;
    let client = pool.get().await.unwrap();
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}
