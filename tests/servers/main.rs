//! Integration tests against real servers (redis-server, a Redis Cluster,
//! PostgreSQL) that the harness starts: one binary, so the crate links once.

mod support;

mod cache_aside;
mod cluster_walk;
mod conformance;
mod failover;
mod fleet;
mod freshness;
mod harness;
mod hostile;
mod l2;
mod l2_faults;
#[cfg(feature = "tls")]
mod l2_tls;
#[cfg(feature = "macros")]
mod macros;
#[cfg(feature = "metrics")]
mod metrics;
mod patterns;
mod postgres_loader;
mod races;
mod tags;
