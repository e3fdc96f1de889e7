//! Adapter for the Anthropic API (`kind = "anthropic"`): `POST {endpoint}/v1/messages` with the
//! upstream's `x-api-key` and an `anthropic-version` (the client's, else the configured one).
//!
//! A Messages client's request is relayed natively (model renamed); its `anthropic-version` and
//! `anthropic-beta` headers are passed on. A client of any other API is translated through the
//! canonical chat form by `api::messages` (`from_chat` for the request; `decode_whole` and
//! `Decoder` for the answer), whose header lists the mapping decisions; `json_schema` answers are
//! a forced tool, read back as text. Errors are read from Anthropic's shape: a 529
//! `overloaded_error` is the provider's fault and worth another target.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri};
use serde_json::Value;
use weir_config::Upstream;

use super::{Adapter, Detail, Translator, malformed, sensitive, uri};
use crate::api::{ClientRequest, ModelRequest, Operation, messages};
use crate::error::Error;

#[derive(Debug)]
pub struct Anthropic {
    messages: Uri,
    count_tokens: Uri,
    version: HeaderValue,
}

impl Anthropic {
    /// Adds the `x-api-key` header of every request.
    pub fn new(upstream: &Upstream, settings: &weir_config::Anthropic, headers: &mut HeaderMap) -> Result<Self, Error> {
        if let Some(key) = &upstream.api_key {
            headers.insert("x-api-key", sensitive(key.expose())?);
        }
        let version = HeaderValue::from_str(&settings.version).map_err(|_| {
            Error::internal(format!("upstream {}: anthropic_version is not a valid header value", upstream.name))
        })?;
        Ok(Self {
            messages: uri(upstream, "/v1/messages")?,
            count_tokens: uri(upstream, "/v1/messages/count_tokens")?,
            version,
        })
    }

    /// `POST /v1/messages/count_tokens` for a Messages request.
    pub fn count_tokens_uri(&self) -> Uri {
        self.count_tokens.clone()
    }
}

impl Adapter for Anthropic {
    fn request(&self, request: &ModelRequest, model: &str) -> Result<(Uri, Vec<u8>), Error> {
        let ModelRequest::Chat(chat) = request else {
            return Err(Error::bad_request("Anthropic serves no embeddings models.")
                .param("model")
                .code("invalid_value"));
        };
        let body = messages::from_chat(chat, model)?;
        let body = serde_json::to_vec(&body).map_err(|e| Error::internal("could not encode the request").source(e))?;
        Ok((self.messages.clone(), body))
    }

    fn native(&self, request: &ClientRequest, model: &str) -> Result<(Uri, Vec<u8>), Error> {
        let ClientRequest::Messages(s) = request else {
            return Err(Error::internal("only Messages requests are relayed to Anthropic"));
        };
        Ok((self.messages.clone(), s.request.upstream_body(Some(model), false)?))
    }

    fn headers(&self, request: &ClientRequest, _native: bool, headers: &mut HeaderMap) {
        let (version, betas) = match request {
            ClientRequest::Messages(s) => (s.request.version.as_deref(), s.request.betas.as_slice()),
            _ => (None, &[][..]),
        };
        let version = version.and_then(|v| HeaderValue::from_str(v).ok()).unwrap_or_else(|| self.version.clone());
        headers.insert("anthropic-version", version);
        if !betas.is_empty()
            && let Ok(value) = HeaderValue::from_str(&betas.join(","))
        {
            headers.insert("anthropic-beta", value);
        }
    }

    fn response(&self, upstream: &str, operation: Operation, model: &str, body: Bytes) -> Result<Bytes, Error> {
        let _ = operation;
        let answer: Value = serde_json::from_slice(&body).map_err(|_| malformed(upstream, "an answer"))?;
        let out = messages::decode_whole(&answer, model);
        serde_json::to_vec(&out).map(Bytes::from).map_err(|e| Error::internal("could not encode the answer").source(e))
    }

    fn translator(&self, upstream: &str, model: &str) -> Option<Translator> {
        Some(Translator::Anthropic(messages::Decoder::new(upstream, model)))
    }

    fn detail(&self, headers: &HeaderMap, body: &[u8]) -> Detail {
        detail(headers, body)
    }
}

/// Reads Anthropic's error shape: `{"type":"error","error":{"type","message"}}`. Its `type` is
/// the code; `overloaded_error` (529) and `rate_limit_error` say whose fault and what to do.
pub(crate) fn detail(_headers: &HeaderMap, body: &[u8]) -> Detail {
    match messages::error_detail(body) {
        Some((kind, message)) => Detail {
            throttled: kind == "rate_limit_error",
            message: Some(message),
            code: Some(kind),
            ..Detail::default()
        },
        None => Detail { message: Some(String::from_utf8_lossy(body).trim().to_owned()), ..Detail::default() },
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::providers::classify;

    fn classify_body(status: u16, body: &str) -> Error {
        classify(
            "up",
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            detail(&HeaderMap::new(), body.as_bytes()),
        )
    }

    #[test]
    fn anthropic_errors_are_classified_by_their_type() {
        let e = classify_body(400, include_str!("../../../bench/fixtures/anthropic/error_400_invalid_request.json"));
        assert_eq!(
            (e.http_status(), e.code.as_deref(), e.retryable),
            (StatusCode::BAD_REQUEST, Some("invalid_request_error"), false)
        );
        let e = classify_body(429, include_str!("../../../bench/fixtures/anthropic/error_429_rate_limit.json"));
        assert!(e.retryable && e.message.contains("rate limit"), "{e}");
        let e = classify_body(529, r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
        assert!(e.retryable, "an overloaded upstream is worth another target");
        let mut shaped = e.into_response_as(crate::error::Shape::Anthropic);
        assert_eq!(shaped.status().as_u16(), 529, "and the Anthropic client hears 529 overloaded_error");
        let _ = shaped.body_mut();
    }
}
