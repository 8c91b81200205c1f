//! The `#[cached_tier]` attribute of `tiered`: see the `tiered` crate.
