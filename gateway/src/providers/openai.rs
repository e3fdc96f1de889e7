//! Adapter for OpenAI and every OpenAI-compatible server (vLLM, Ollama, LM Studio, llama.cpp, …):
//! the request is relayed as it is with the model renamed, and errors are read from OpenAI's error shape.
//! Legacy completions are relayed to `/completions` too, and the Responses API to `/responses` when
//! the upstream sets `native_responses` (the conversation sent in full: see `api::responses`).

use http::{HeaderMap, Uri, header};
use serde::Deserialize;
use weir_config::Upstream;

use super::{Adapter, Detail, sensitive, uri};
use crate::api::{ClientRequest, ModelRequest, PredictRequest};
use crate::error::Error;

/// The URLs of an OpenAI-compatible upstream.
#[derive(Debug)]
pub struct OpenAi {
    chat: Uri,
    embeddings: Uri,
    completions: Uri,
    responses: Uri,
    /// `{endpoint}/models/` for Weir's own workers, which serve predictions; `None` for other
    /// OpenAI-compatible servers, which do not.
    predict: Option<String>,
}

impl OpenAi {
    /// Adds the bearer key to the headers of every request.
    pub fn new(upstream: &Upstream, headers: &mut HeaderMap) -> Result<Self, Error> {
        if let Some(key) = &upstream.api_key {
            headers.insert(header::AUTHORIZATION, sensitive(&format!("Bearer {}", key.expose()))?);
        }
        Ok(Self {
            chat: uri(upstream, "/chat/completions")?,
            embeddings: uri(upstream, "/embeddings")?,
            completions: uri(upstream, "/completions")?,
            responses: uri(upstream, "/responses")?,
            predict: (upstream.kind == weir_config::UpstreamKind::Worker)
                .then(|| format!("{}/models/", upstream.endpoint)),
        })
    }
}

impl Adapter for OpenAi {
    fn request(&self, request: &ModelRequest, model: &str) -> Result<(Uri, Vec<u8>), Error> {
        let uri = match request {
            ModelRequest::Chat(_) => self.chat.clone(),
            ModelRequest::Embeddings(_) => self.embeddings.clone(),
        };
        Ok((uri, request.upstream_body(model)?))
    }

    fn native(&self, request: &ClientRequest, model: &str) -> Result<(Uri, Vec<u8>), Error> {
        native_body(request, model)
            .map(|(responses, body)| (if responses { self.responses.clone() } else { self.completions.clone() }, body))
    }

    /// A worker's `POST {endpoint}/models/{model}:predict` (or `:rawPredict`), the target's model
    /// one path segment.
    fn predict(&self, request: &PredictRequest, model: &str, _: &mut HeaderMap) -> Option<Result<Uri, Error>> {
        let base = self.predict.as_ref()?;
        let verb = request.verb().as_str();
        Some(super::path_segment(model).and_then(|segment| {
            format!("{base}{segment}:{verb}")
                .parse::<Uri>()
                .map_err(|e| Error::internal("the worker's prediction URL is not valid").source(e))
        }))
    }

    // `authorize`, `response` and `translator` are the trait's relaying defaults: the bearer key is
    // a static header, and answers and streams are OpenAI's already.

    fn detail(&self, _: &HeaderMap, body: &[u8]) -> Detail {
        detail(body)
    }
}

/// The body of a natively relayed Completions or Responses request, and whether it is Responses.
pub(super) fn native_body(request: &ClientRequest, model: &str) -> Result<(bool, Vec<u8>), Error> {
    match request {
        ClientRequest::Completions(s) => Ok((false, s.request.upstream_body(model)?)),
        ClientRequest::Responses(s) => Ok((true, s.request.upstream_body(model)?)),
        _ => Err(Error::internal("only Completions and Responses requests are relayed natively here")),
    }
}

#[derive(Deserialize)]
pub(super) struct Envelope {
    pub error: UpstreamError,
}

#[derive(Deserialize)]
pub(super) struct UpstreamError {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<serde_json::Value>,
}

/// Reads OpenAI's error shape (or takes the body as text).
pub(crate) fn detail(body: &[u8]) -> Detail {
    let parsed = serde_json::from_slice::<Envelope>(body).ok().map(|e| e.error);
    let message = parsed
        .as_ref()
        .and_then(|e| e.message.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    let code = parsed.as_ref().and_then(|e| match &e.code {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    });
    Detail { message: Some(message), code, param: parsed.and_then(|p| p.param), ..Detail::default() }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    use super::*;
    use crate::providers::classify;

    fn classify_json(status: u16, body: &str) -> Error {
        classify("up", StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), detail(body.as_bytes()))
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
        let e = classify("up", StatusCode::TOO_MANY_REQUESTS, &h, detail(&Bytes::new()));
        assert!(e.retryable);
        assert_eq!((e.http_status(), e.retry_after_ms), (StatusCode::TOO_MANY_REQUESTS, Some(2500)));
        let e = classify_json(503, "overloaded");
        assert!(e.retryable && e.message.contains("overloaded"), "{e}");
        assert_eq!(e.http_status(), StatusCode::BAD_GATEWAY);
        let e = classify_json(401, r#"{"error":{"message":"Incorrect API key provided: sk-abc"}}"#);
        assert_eq!(e.http_status(), StatusCode::BAD_GATEWAY);
        assert!(!e.message.contains("sk-abc"), "never echo the upstream's view of our key: {e}");
    }
}
