//! Traffic with writers that update a "database", invalidate and read back:
//! checks that a read after `invalidate` returns never gets an older version.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tiered::{BoxError, L1Eviction, Stats, TieredCache};

/// Replays `trace` (reads) while `writers` tasks take the key the trace read
/// last, bump its version in the database, invalidate it and read it again,
/// asserting the read is at least that version. Returns how many such reads were
/// checked, and the cache's stats. The loader reads the database.
pub async fn reads_follow_invalidations(
    policy: L1Eviction,
    trace: Vec<u64>,
    writers: usize,
) -> (u64, Stats) {
    let database: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let db = Arc::clone(&database);
    let cache = TieredCache::<u64, u64>::builder("rewrites")
        .l1_max_entries(1000)
        .l1_eviction(policy)
        .loader_fn(move |key: u64| {
            let version = db.lock().unwrap().get(&key).copied().unwrap_or(0);
            async move { Ok::<_, BoxError>(Some(version)) }
        })
        .build()
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let last_read = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (cache, done, last_read) = (cache.clone(), done.clone(), last_read.clone());
        tokio::spawn(async move {
            for (i, key) in trace.into_iter().enumerate() {
                cache.get(&key).await.unwrap();
                last_read.store(key, Ordering::Relaxed);
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    let writers: Vec<_> = (0..writers)
        .map(|_| {
            let (cache, database, done, last_read) = (
                cache.clone(),
                database.clone(),
                done.clone(),
                last_read.clone(),
            );
            tokio::spawn(async move {
                let mut checked = 0u64;
                while !done.load(Ordering::Acquire) {
                    let key = last_read.load(Ordering::Relaxed);
                    let version = {
                        let mut rows = database.lock().unwrap();
                        let row = rows.entry(key).or_insert(0);
                        *row += 1;
                        *row
                    };
                    cache.invalidate(&key).await;
                    let read = cache.get(&key).await.unwrap().unwrap();
                    assert!(
                        read >= version,
                        "key {key}: read {read} after writing {version}"
                    );
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    traffic.await.unwrap();
    let mut checked = 0;
    for writer in writers {
        checked += writer.await.unwrap();
    }
    (checked, cache.stats())
}
