//! Adapter for OpenAI and every OpenAI-compatible server (vLLM, Ollama, LM Studio, llama.cpp, …):
//! the request is relayed as it is with the model renamed, and errors are read from OpenAI's error shape.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::Deserialize;
use weir_config::Upstream;

use super::sensitive;
use crate::error::{Error, Kind};

/// Headers for every request to this upstream.
pub fn headers(upstream: &Upstream) -> Result<HeaderMap, Error> {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::USER_AGENT, HeaderValue::from_static(concat!("weir/", env!("CARGO_PKG_VERSION"))));
    if let Some(key) = &upstream.api_key {
        h.insert(header::AUTHORIZATION, sensitive(&format!("Bearer {}", key.expose()))?);
    }
    for (name, value) in &upstream.headers {
        if value.expose().is_empty() {
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::internal(format!("upstream {}: header {name} is not valid", upstream.name)))?;
        h.insert(name, sensitive(value.expose())?);
    }
    Ok(h)
}

#[derive(Deserialize)]
struct Envelope {
    error: UpstreamError,
}

#[derive(Deserialize)]
struct UpstreamError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

const MAX_MESSAGE: usize = 1000;

/// Classifies a non-2xx upstream response.
pub fn classify(upstream: &str, status: StatusCode, headers: &HeaderMap, body: &Bytes) -> Error {
    let parsed = serde_json::from_slice::<Envelope>(body).ok().map(|e| e.error);
    let upstream_message = parsed.as_ref().and_then(|e| e.message.clone()).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        text.trim().to_owned()
    });
    let upstream_message: String = upstream_message.chars().take(MAX_MESSAGE).collect();
    let code = parsed.as_ref().and_then(|e| match &e.code {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    });
    match status.as_u16() {
        401 | 403 => Error::new(
            Kind::UpstreamAuth,
            format!("The upstream '{upstream}' rejected the gateway's credentials ({status}). This is a gateway configuration problem, not your API key."),
        )
        .code("upstream_auth_failed"),
        429 => {
            let retry_after = headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|s| s.ceil().max(0.0) as u64);
            Error::new(Kind::RateLimited, format!("The upstream '{upstream}' is rate limiting requests: {upstream_message}"))
                .code(code.unwrap_or_else(|| "rate_limit_exceeded".into()))
                .retryable(true)
                .retry_after(retry_after)
        }
        408 | 500..=599 => Error::new(
            Kind::UpstreamFailed,
            format!("The upstream '{upstream}' failed with status {}: {upstream_message}", status.as_u16()),
        )
        .code("upstream_error")
        .status(status)
        .retryable(true),
        400..=499 => {
            let mut e = Error::new(Kind::UpstreamRejected, upstream_message).status(status);
            e.param = parsed.as_ref().and_then(|p| p.param.as_deref()).map(Box::from);
            e.code = code.map(Into::into);
            e
        }
        _ => Error::new(
            Kind::UpstreamFailed,
            format!("The upstream '{upstream}' answered with unexpected status {}.", status.as_u16()),
        )
        .code("upstream_error")
        .status(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_json(status: u16, body: &str) -> Error {
        classify("up", StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), &Bytes::from(body.to_owned()))
    }

    #[test]
    fn client_errors_pass_through_with_their_details() {
        let e = classify_json(
            404,
            r#"{"error":{"message":"The model `x` does not exist","type":"invalid_request_error","param":"model","code":"model_not_found"}}"#,
        );
        assert_eq!(e.http_status(), StatusCode::NOT_FOUND);
        assert_eq!((e.param.as_deref(), e.code.as_deref()), (Some("model"), Some("model_not_found")));
        assert!(!e.retryable);
    }

    #[test]
    fn retryable_statuses_and_credentials() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("2.5"));
        let e = classify("up", StatusCode::TOO_MANY_REQUESTS, &h, &Bytes::new());
        assert!(e.retryable);
        assert_eq!((e.http_status(), e.retry_after), (StatusCode::TOO_MANY_REQUESTS, Some(3)));
        let e = classify_json(503, "overloaded");
        assert!(e.retryable && e.message.contains("overloaded"), "{e}");
        assert_eq!(e.http_status(), StatusCode::BAD_GATEWAY);
        let e = classify_json(401, r#"{"error":{"message":"Incorrect API key provided: sk-abc"}}"#);
        assert_eq!(e.http_status(), StatusCode::BAD_GATEWAY);
        assert!(!e.message.contains("sk-abc"), "never echo the upstream's view of our key: {e}");
    }
}
