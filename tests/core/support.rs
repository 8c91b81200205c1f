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
