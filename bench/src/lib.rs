//! Weir's bench crate: mock upstreams shared with the tests, the load harness behind `weir-bench`,
//! and the soak behind `weir-soak`.

pub mod harness;
pub mod mock;
pub mod soak;

pub use mock::{FIXTURES, MockBuilder, MockUpstream, Recorded, fixture};
