//! The response body type every stage returns, constructors for it, and what a request body may be.

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

/// A request body the pipeline can read: hyper's `Incoming` from a socket, or any body an embedding
/// application builds (`Full<Bytes>`, `String`, `Empty<Bytes>` …). Implemented for every body that
/// fits; the one bound the pipeline is generic over, so that the server and in-process callers take
/// the same path.
pub trait RequestBody: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> RequestBody for B
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
}

/// The error of a request body, boxed: how `http-body-util` carries any body's error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
