//! [`Written`]: what a write (`insert`, `invalidate`, ...) did.

/// What a write (`insert`, `invalidate`, `invalidate_all`, ...) did, when it
/// returned. Either way the change holds on this instance at once, and no load
/// in flight writes back what it read before.
///
/// ```
/// # use tiered::{TieredCache, Written};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = TieredCache::<u64, u64>::builder("counts").build().unwrap();
/// assert_eq!(cache.insert(1, 10).await, Written::Applied);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Written {
    /// Done everywhere this instance can tell: Redis took the change (or there
    /// is no L2), and the bus message is sent (or there is no bus).
    Applied,
    /// Done here, but part of it waits to be sent: Redis could not take the
    /// change (it is owed, replayed in the background, and until then this
    /// instance reads no L2 if it is a deletion), or its bus message could not
    /// be published (it is kept and sent again). The counts are all this
    /// instance has waiting, this change included. See
    /// [`TieredCache::flush`](crate::TieredCache::flush).
    Queued {
        /// Changes owed to Redis (keys, walks, tag stamps).
        owed: usize,
        /// Bus messages waiting to be sent.
        unsent: usize,
    },
}

impl Written {
    /// Whether the change was applied everywhere.
    pub fn is_applied(&self) -> bool {
        *self == Written::Applied
    }
}
