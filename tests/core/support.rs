//! What the core tests share (with the server tests, through tests/common).

#[path = "../common/at_once.rs"]
mod at_once;
pub use self::at_once::at_once;

#[path = "../common/eventually.rs"]
mod eventually;
pub use self::eventually::eventually;

#[path = "../common/rewrites.rs"]
pub mod rewrites;

#[path = "../../benches/support/zipf.rs"]
pub mod zipf;

/// The service's database in the core tests: a version per key (1 until
/// set), a load count, and, when armed, a gate its loads wait at after they
/// read their row (so that a load can be held in flight).
#[derive(Debug, Default)]
pub struct Db {
    pub rows: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    pub loads: std::sync::atomic::AtomicU64,
    /// Loads wait here for a permit (when armed).
    pub gate: Option<std::sync::Arc<tokio::sync::Semaphore>>,
}

impl Db {
    pub fn set(&self, key: &str, version: u64) {
        self.rows.lock().unwrap().insert(key.to_owned(), version);
    }

    pub fn loads(&self) -> u64 {
        self.loads.load(std::sync::atomic::Ordering::SeqCst)
    }
}
