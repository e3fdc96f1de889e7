//! The response body type every stage returns, and constructors for it.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// A response body. Streams never fail at the body level: an upstream failure mid-stream becomes an
/// OpenAI error event inside the body, so the body's error type is `Infallible`.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}
