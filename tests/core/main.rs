//! Tests that need no server and no feature but `testing`: the read and write
//! paths, flights, the fence, freshness and the adaptive L1, with closure
//! loaders and the in-memory doubles (`cargo test --no-default-features
//! --features testing --test core`). One binary, so the crate links once.

mod support;

/// The store and bus conformance suite against the in-memory doubles (the same
/// checks real Redis and a Redis Cluster pass in tests/servers).
#[path = "../conformance/memory.rs"]
mod conformance;

mod adaptive;
mod api;
mod breaker;
mod cache_aside;
mod epoch;
mod fleet;
mod load_context;
mod options;
mod read_path;
mod spans;
mod tags;
mod write_path;
