//! Policies: small value types with the arithmetic of TTLs, freshness and
//! eviction, and no state.

mod eviction;
pub(crate) mod freshness;
mod options;
mod ttl;

pub use self::eviction::L1Eviction;
pub(crate) use self::freshness::{Freshness, Lifetime};
pub use self::freshness::{
    DEFAULT_EARLY_REFRESH_BETA, DEFAULT_FAIL_SAFE_THROTTLE, DEFAULT_LEASE_TTL,
};
pub use self::options::EntryOptions;
pub(crate) use self::options::{Plan, Skip};
pub use self::ttl::Ttl;
pub(crate) use self::ttl::TtlPolicy;
