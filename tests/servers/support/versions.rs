//! A stand-in for the service's database in fleet tests: a version per key (1
//! until set), shared by every instance in the process, with a load that can be
//! held mid-way (after it read the version) until the test releases it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tiered::{BoxError, TieredCache, TieredCacheBuilder};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Versions {
    rows: Mutex<HashMap<String, u64>>,
    pub loads: AtomicU64,
    hold_next: AtomicBool,
    pub held: Notify,
    release: Notify,
}

impl Versions {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn get(&self, key: &str) -> u64 {
        *self.rows.lock().unwrap().get(key).unwrap_or(&1)
    }

    pub fn set(&self, key: &str, version: u64) {
        self.rows.lock().unwrap().insert(key.to_owned(), version);
    }

    /// The next load reads its version, then waits for [`release`](Self::release).
    pub fn hold_next_load(&self) {
        self.hold_next.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.release.notify_one();
    }

    /// Waits for [`release`](Self::release) (for loads written in the test).
    pub async fn release_notified(&self) {
        self.release.notified().await;
    }

    async fn load(&self, key: &str) -> u64 {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let version = self.get(key);
        if self.hold_next.swap(false, Ordering::SeqCst) {
            self.held.notify_one();
            self.release.notified().await;
        }
        version
    }
}

/// An instance of cache `name` over `versions`, with long TTLs (so that only an
/// invalidation can make it drop a value), configured further by `tier`.
pub fn instance(
    versions: &Arc<Versions>,
    name: &str,
    tier: impl FnOnce(TieredCacheBuilder<String, u64>) -> TieredCacheBuilder<String, u64>,
) -> TieredCache<String, u64> {
    let versions = versions.clone();
    tier(TieredCache::builder(name))
        .l1_ttl(Duration::from_secs(3600))
        .l2_ttl(Duration::from_secs(3600))
        .loader_fn(move |key: String| {
            let versions = versions.clone();
            async move { Ok::<_, BoxError>(Some(versions.load(&key).await)) }
        })
        .build()
        .expect("build")
}

/// Reads `key` from `cache` until it returns `want` (failing after 10 s), then
/// checks that it keeps returning it. Returns how long that took.
pub async fn until_value(cache: &TieredCache<String, u64>, key: &str, want: u64) -> Duration {
    let start = Instant::now();
    let key = key.to_owned();
    loop {
        let got = cache.get(&key).await.expect("read");
        if got == Some(want) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{key}: still {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = start.elapsed();
    for _ in 0..20 {
        assert_eq!(
            cache.get(&key).await.unwrap(),
            Some(want),
            "{key} went back"
        );
    }
    took
}
