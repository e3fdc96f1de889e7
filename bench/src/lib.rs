//! Weir's bench crate: mock upstreams shared with the tests, and the load harness behind `weir-bench`.

pub mod harness;
pub mod mock;

pub use mock::{FIXTURES, MockBuilder, MockUpstream, Recorded, fixture};
