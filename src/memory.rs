//! In-memory doubles of the shared tier and the invalidation bus (feature
//! `testing`): [`MemoryStore`] (a [`RemoteStore`](crate::RemoteStore)) and
//! [`MemoryBus`] (a [`Backplane`](crate::Backplane)), so that tests can run two or
//! more cache instances in one process with no server, and inject the faults a
//! real Redis would show (failed, hung or partitioned clients, lost or late
//! messages).
//!
//! They follow Redis's semantics as `RedisStore` uses it, checked by the crate's
//! conformance suite (`tests/conformance`), which runs the same checks against
//! these, a Redis server and a Redis Cluster.
//!
//! ```
//! use tiered::{BoxError, MemoryBus, MemoryStore, TieredCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (store, bus) = (MemoryStore::new(), MemoryBus::new());
//! let instance = |store: MemoryStore, bus: MemoryBus| {
//!     TieredCache::<String, u64>::builder("lengths")
//!         .l2(store)
//!         .bus(bus)
//!         .loader_fn(|key: String| async move { Ok::<_, BoxError>(Some(key.len() as u64)) })
//!         .build()
//!         .unwrap()
//! };
//! // Two instances, each with a connection of its own to the same store and bus.
//! let a = instance(store.connect(), bus.connect());
//! let b = instance(store.connect(), bus.connect());
//! assert_eq!(a.get("hello").await.unwrap(), Some(5));
//! assert_eq!(b.get("hello").await.unwrap(), Some(5)); // from the store
//! assert_eq!(b.stats().l2.hits, 1);
//! # }
//! ```

mod bus;
mod faults;
mod keyspace;
mod store;

pub use self::bus::MemoryBus;
pub use self::faults::StoreOp;
pub use self::store::MemoryStore;
