//! L2 hit (L1 off, so every read goes to Redis) against a bare `redis` GET +
//! bincode decode on the same connection type (`ConnectionManager`), same run.
//!
//! Sequential reads of 10k keys holding a ~100-byte struct, in alternating blocks
//! of 1,000 (bare, tiered, tiered with a loader, bare, ...) so that drift on a
//! shared machine hits all alike. A cache without a loader reads with `GET`; one
//! with a loader reads and reserves in one `EVALSHA` (a miss then needs no second
//! round trip). Prints p50 and p99 of each and their ratios to bare.
//! Run: `cargo bench --bench l2_hit` (starts its own redis-server).

#[path = "support/redis_server.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tiered::{BoxError, TieredCache};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
}

const KEYS: u64 = 10_000;
const BLOCK: u64 = 1_000;
const ROUNDS: u64 = 20;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo bench -- --list` and `cargo test --benches`
    }
    let server = support::RedisServer::start();
    let cache = TieredCache::<u64, Arc<User>>::builder("bench")
        .l1_max_entries(0)
        .l2_redis(&server.url)
        .l2_timeout(Duration::from_secs(1))
        .build()?;
    // The same entries (same name and prefix), read by a cache that can load.
    let loading = TieredCache::<u64, Arc<User>>::builder("bench")
        .l1_max_entries(0)
        .l2_redis(&server.url)
        .l2_timeout(Duration::from_secs(1))
        .loader_fn(|id: u64| async move {
            Err::<Option<Arc<User>>, BoxError>(format!("{id} must be an L2 hit").into())
        })
        .build()?;
    for id in 0..KEYS {
        let user = User {
            id,
            name: format!("user {id}"),
            email: format!("user{id}@example.com"),
            roles: vec!["reader".into(), "writer".into()],
        };
        cache.insert(id, Arc::new(user)).await;
    }
    let mut bare = ConnectionManager::new(redis::Client::open(server.url.as_str())?).await?;
    let (mut bare_lat, mut tiered_lat, mut loading_lat) = (Vec::new(), Vec::new(), Vec::new());
    let mut id = 0;
    for _ in 0..ROUNDS {
        for _ in 0..BLOCK {
            id = (id + 7919) % KEYS;
            let key = cache.l2_key(&id).expect("an L2 key");
            let start = Instant::now();
            let bytes: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut bare).await?;
            // The same bytes tiered stores: a 35-byte header + envelope (wire
            // format 3), then bincode.
            assert_eq!(bytes.get(2), Some(&3), "wire format 3");
            let (user, _): (User, usize) =
                bincode::serde::decode_from_slice(&bytes[35..], bincode::config::standard())?;
            bare_lat.push(start.elapsed());
            assert_eq!(user.id, id);
        }
        for _ in 0..BLOCK {
            id = (id + 7919) % KEYS;
            let start = Instant::now();
            let user = cache.get(&id).await?.expect("present in L2");
            tiered_lat.push(start.elapsed());
            assert_eq!(user.id, id);
        }
        for _ in 0..BLOCK {
            id = (id + 7919) % KEYS;
            let start = Instant::now();
            let user = loading.get(&id).await?.expect("present in L2");
            loading_lat.push(start.elapsed());
            assert_eq!(user.id, id);
        }
    }
    let stats = cache.stats();
    assert_eq!(
        stats.l2.hits,
        ROUNDS * BLOCK,
        "every tiered read was an L2 hit"
    );
    let (b50, b99) = support::percentiles(&mut bare_lat);
    let (t50, t99) = support::percentiles(&mut tiered_lat);
    let (l50, l99) = support::percentiles(&mut loading_lat);
    assert_eq!(loading.stats().l2.hits, ROUNDS * BLOCK);
    println!("l2_hit: {} sequential reads each", ROUNDS * BLOCK);
    println!(
        "bare GET+decode   p50 {:>8.1} µs   p99 {:>8.1} µs",
        support::micros(b50),
        support::micros(b99)
    );
    println!(
        "tiered L2 hit     p50 {:>8.1} µs   p99 {:>8.1} µs",
        support::micros(t50),
        support::micros(t99)
    );
    println!(
        "ratio             p50 {:>8.3}×     p99 {:>8.3}×",
        t50.as_secs_f64() / b50.as_secs_f64(),
        t99.as_secs_f64() / b99.as_secs_f64()
    );
    println!(
        "tiered + loader   p50 {:>8.1} µs   p99 {:>8.1} µs",
        support::micros(l50),
        support::micros(l99)
    );
    println!(
        "ratio             p50 {:>8.3}×     p99 {:>8.3}×",
        l50.as_secs_f64() / b50.as_secs_f64(),
        l99.as_secs_f64() / b99.as_secs_f64()
    );
    Ok(())
}
