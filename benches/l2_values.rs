//! What the L2 value options cost per read and save in bytes, on a redis-server of
//! the bench's own: for one struct (about 150 bytes) and a 100-struct document (a list of such
//! structs, repetitive as JSON-ish data is), each cache configuration fills Redis
//! through the cache, then reads every key with L1 off (every read an L2 hit), in
//! alternating blocks so that drift hits all alike. Reported: stored bytes per
//! entry (Redis `STRLEN`) and p50/p99 per read, with the ratio to plain bincode in
//! the same run.
//!
//! Run: `cargo bench --bench l2_values --features encryption` (without the feature,
//! the encrypted configuration is left out).

#[path = "support/redis_server.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tiered::{BoxError, Codec, TieredCache, TieredCacheBuilder};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
    bio: String,
}

fn user(id: u64) -> User {
    User {
        id,
        name: format!("User Number {id}"),
        email: format!("user.number.{id}@example.com"),
        roles: vec!["reader".into(), "writer".into(), "billing-admin".into()],
        bio: "Enjoys long walks on the beach and short caches in front of databases.".into(),
    }
}

const KEYS: u64 = 2_000;
const ROUNDS: usize = 10;

type Configure =
    fn(TieredCacheBuilder<u64, Arc<Vec<User>>>) -> TieredCacheBuilder<u64, Arc<Vec<User>>>;

fn configurations() -> Vec<(&'static str, Configure)> {
    let all: Vec<(&'static str, Configure)> = vec![
        ("bincode (baseline)", |b| b),
        ("bincode + lz4 (from 512 B)", |b| b.l2_compression(512)),
        ("messagepack", |b| b.codec(Codec::MessagePack)),
        ("messagepack + lz4", |b| {
            b.codec(Codec::MessagePack).l2_compression(512)
        }),
        ("json", |b| b.codec(Codec::Json)),
        ("json + lz4", |b| b.codec(Codec::Json).l2_compression(512)),
    ];
    #[cfg(feature = "encryption")]
    let all = {
        let mut all = all;
        all.push(("bincode + aes-256-gcm", |b| {
            b.l2_encryption(tiered::Encryption::new(1, &[7; 32]))
        }));
        all.push(("bincode + lz4 + aes-256-gcm", |b| {
            b.l2_compression(512)
                .l2_encryption(tiered::Encryption::new(1, &[7; 32]))
        }));
        all
    };
    all
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let server = support::RedisServer::start();
    for (size, items) in [
        ("one struct (150 B in bincode)", 1usize),
        ("a 100-struct document (~15 kB in bincode)", 100),
    ] {
        let value = |k: u64| {
            Arc::new(
                (0..items as u64)
                    .map(|i| user(k * 1000 + i))
                    .collect::<Vec<_>>(),
            )
        };
        let configs = configurations();
        let mut caches = Vec::new();
        for (n, (name, configure)) in configs.iter().enumerate() {
            let cache = configure(
                TieredCache::<u64, Arc<Vec<User>>>::builder(format!("values{n}-{items}"))
                    .l1_max_entries(0)
                    .l2_redis(&server.url)
                    .l2_timeout(Duration::from_secs(1)),
            )
            .build()?;
            for k in 0..KEYS {
                cache.insert(k, value(k)).await;
            }
            let stored: usize = support::cli(&server.url, &["strlen", &cache.l2_key(&7).unwrap()])
                .trim()
                .parse()?;
            caches.push((
                name,
                cache,
                stored,
                Vec::with_capacity(KEYS as usize * ROUNDS),
            ));
        }
        for _ in 0..ROUNDS {
            for (_, cache, _, samples) in caches.iter_mut() {
                for k in 0..KEYS {
                    let start = Instant::now();
                    let got = cache.get(&k).await?.expect("an L2 hit");
                    samples.push(start.elapsed());
                    assert_eq!(got.len(), items);
                }
                assert_eq!(cache.stats().l2_corrupt, 0);
            }
        }
        println!("{size}: {KEYS} keys x {ROUNDS} rounds, L2 hits only");
        let mut base = None;
        for (name, cache, stored, samples) in caches.iter_mut() {
            let (p50, p99) = support::percentiles(samples);
            let (base_bytes, base_p50) = *base.get_or_insert((*stored, p50));
            println!(
                "  {name:<28} {stored:>7} B ({:>5.3}x)   p50 {:>8.1} µs ({:>5.3}x)   p99 {:>8.1} µs",
                *stored as f64 / base_bytes as f64,
                support::micros(p50),
                p50.as_secs_f64() / base_p50.as_secs_f64(),
                support::micros(p99)
            );
            assert_eq!(cache.stats().l2.misses, 0);
        }
    }
    Ok(())
}
