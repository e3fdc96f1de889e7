//! Adapter for Weir's own model workers (`weir worker`, or one the gateway started in-process): they
//! speak OpenAI's API, so requests are relayed as they are and errors read from OpenAI's shape; a
//! worker that failed to load its model answers 503 with the reason, which reaches the client.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use weir_config::Upstream;

use crate::error::Error;

/// Headers for every request to this worker: as for any OpenAI-compatible server.
pub fn headers(upstream: &Upstream) -> Result<HeaderMap, Error> {
    super::openai::headers(upstream)
}

/// Classifies a non-2xx worker response.
pub fn classify(upstream: &str, status: StatusCode, headers: &HeaderMap, body: &Bytes) -> Error {
    super::openai::classify(upstream, status, headers, body)
}
