//! The one error type of the proxy, and the only place that turns an error into an HTTP response or a
//! streamed error event, in the shape of the client's API: OpenAI's
//! (`{"error":{"message","type","param","code"}}`, for Chat Completions, Embeddings, Completions and
//! Responses) or Anthropic's (`{"type":"error","error":{"type","message"}}`, for Messages).
//!
//! Anthropic's statuses and types: 400 `invalid_request_error`, 401 `authentication_error`, 403
//! `permission_error`, 404 `not_found_error`, 413 `request_too_large`, 429 `rate_limit_error`, 500
//! and other failures `api_error`, and 529 `overloaded_error` — which the gateway sends when an
//! upstream said it was overloaded (a 503 or 529) and no other target could take the request.
//! Anthropic's errors have no `param`, so the field at fault is named in the message.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::body::{self, Body};

/// OpenAI's `code` for a request longer than the model's context window; the gateway gives it to
/// every provider's equivalent.
pub const CONTEXT_LENGTH_EXCEEDED: &str = "context_length_exceeded";

/// The `code` of a stream that failed after it started.
pub const STREAM_FAILED: &str = "upstream_stream_error";

/// What went wrong; decides the HTTP status, the OpenAI error `type` and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Malformed JSON, a missing or mistyped field, an unsupported value.
    BadRequest,
    /// No API key, or one the gateway does not know.
    Unauthorized,
    /// An unknown path or model.
    NotFound,
    /// A known path with the wrong method.
    MethodNotAllowed,
    /// The client took too long to send its request.
    RequestTimeout,
    /// The request body is over `server.max_body_bytes`.
    PayloadTooLarge,
    /// The upstream (or, later, a policy) refused for rate reasons.
    RateLimited,
    /// The upstream rejected the request as the client's mistake (a 4xx it returned); its status and
    /// message are passed on.
    UpstreamRejected,
    /// The upstream rejected the gateway's own credentials.
    UpstreamAuth,
    /// The upstream failed: a 5xx, a broken connection, a response that is not what it should be.
    UpstreamFailed,
    /// No upstream could be reached.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The gateway is shutting down.
    ShuttingDown,
    /// The shared state (Redis) did not answer, under `on_unavailable = "fail"`.
    StateUnavailable,
    /// A policy plugin refused the request; its status, code and message are passed on.
    Policy,
    /// A policy plugin configured to fail closed faulted (trap, deadline, memory cap).
    PluginFault,
    /// A bug in the gateway.
    Internal,
}

impl Kind {
    fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::UpstreamRejected => StatusCode::BAD_REQUEST,
            Kind::UpstreamAuth | Kind::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Kind::UpstreamUnavailable | Kind::ShuttingDown | Kind::StateUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Internal | Kind::PluginFault => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::Policy => StatusCode::FORBIDDEN,
        }
    }

    /// OpenAI's error `type` for this kind.
    fn openai_type(self) -> &'static str {
        match self {
            Kind::BadRequest
            | Kind::NotFound
            | Kind::MethodNotAllowed
            | Kind::RequestTimeout
            | Kind::PayloadTooLarge
            | Kind::UpstreamRejected => "invalid_request_error",
            Kind::Unauthorized => "authentication_error",
            Kind::RateLimited => "rate_limit_error",
            Kind::Policy => "policy_error",
            Kind::UpstreamAuth
            | Kind::UpstreamFailed
            | Kind::UpstreamUnavailable
            | Kind::UpstreamTimeout
            | Kind::ShuttingDown
            | Kind::StateUnavailable
            | Kind::PluginFault
            | Kind::Internal => "server_error",
        }
    }

    /// The label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad_request",
            Kind::Unauthorized => "unauthorized",
            Kind::NotFound => "not_found",
            Kind::MethodNotAllowed => "method_not_allowed",
            Kind::RequestTimeout => "request_timeout",
            Kind::PayloadTooLarge => "payload_too_large",
            Kind::RateLimited => "rate_limited",
            Kind::UpstreamRejected => "upstream_rejected",
            Kind::UpstreamAuth => "upstream_auth",
            Kind::UpstreamFailed => "upstream_failed",
            Kind::UpstreamUnavailable => "upstream_unavailable",
            Kind::UpstreamTimeout => "upstream_timeout",
            Kind::ShuttingDown => "shutting_down",
            Kind::StateUnavailable => "state_unavailable",
            Kind::Policy => "policy",
            Kind::PluginFault => "plugin_fault",
            Kind::Internal => "internal",
        }
    }
}

/// The error format of a client's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"error":{"message","type","param","code"}}`
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`
    Anthropic,
}

/// Who is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Plugin,
    Internal,
}

/// An error on the way through the gateway.
#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub side: Side,
    /// Whether another attempt (on the next target) may succeed.
    pub retryable: bool,
    /// The message the client sees; never contains secrets or prompt text.
    pub message: Cow<'static, str>,
    /// The request field at fault, in OpenAI's `param`.
    pub param: Option<Box<str>>,
    /// OpenAI's `code` (`invalid_api_key`, `model_not_found`, …).
    pub code: Option<Cow<'static, str>>,
    /// An upstream's own status, passed on for [`Kind::UpstreamRejected`].
    pub status: Option<StatusCode>,
    /// How long to wait before trying again, in milliseconds: the `retry-after` header (rounded up
    /// to seconds), and for an upstream's throttling the wait the attempt loop honours.
    pub retry_after_ms: Option<u32>,
    /// The underlying cause, for the log line only.
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// Headers policy plugins added to the response (rate-limit state, cost, …).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<Cow<'static, str>>) -> Self {
        let side = match kind {
            Kind::BadRequest
            | Kind::Unauthorized
            | Kind::NotFound
            | Kind::MethodNotAllowed
            | Kind::RequestTimeout
            | Kind::PayloadTooLarge
            | Kind::RateLimited
            | Kind::Policy
            | Kind::UpstreamRejected => Side::Client,
            Kind::PluginFault => Side::Plugin,
            Kind::UpstreamAuth | Kind::UpstreamFailed | Kind::UpstreamUnavailable | Kind::UpstreamTimeout => {
                Side::Upstream
            }
            Kind::ShuttingDown | Kind::StateUnavailable | Kind::Internal => Side::Internal,
        };
        Self {
            kind,
            side,
            retryable: false,
            message: message.into(),
            param: None,
            code: None,
            status: None,
            retry_after_ms: None,
            source: None,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Kind::BadRequest, message)
    }

    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Kind::Internal, message)
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into().into_boxed_str());
        self
    }

    pub fn code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn retry_after(mut self, seconds: Option<u64>) -> Self {
        self.retry_after_ms = seconds.map(|s| u32::try_from(s.saturating_mul(1000)).unwrap_or(u32::MAX));
        self
    }

    /// The wait before another attempt, as precisely as it is known.
    pub fn retry_after_ms(mut self, wait: Option<std::time::Duration>) -> Self {
        self.retry_after_ms = wait.map(|w| u32::try_from(w.as_millis()).unwrap_or(u32::MAX));
        self
    }

    /// [`Error::retry_after_ms`] as a duration.
    pub fn retry_wait(&self) -> Option<std::time::Duration> {
        self.retry_after_ms.map(|ms| std::time::Duration::from_millis(u64::from(ms)))
    }

    /// The upstream refused the request as longer than its model's context window.
    pub fn is_context_exceeded(&self) -> bool {
        self.code.as_deref() == Some(CONTEXT_LENGTH_EXCEEDED)
    }

    pub fn source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The HTTP status the client gets.
    pub fn http_status(&self) -> StatusCode {
        match (self.kind, self.status) {
            (Kind::UpstreamRejected, Some(s)) if s.is_client_error() => s,
            (Kind::Policy, Some(s)) if s.is_client_error() || s.is_server_error() => s,
            _ => self.kind.status(),
        }
    }

    fn body_json(&self) -> Vec<u8> {
        let r#type = match (self.kind, self.http_status().as_u16()) {
            (Kind::Policy, 429) => "rate_limit_error",
            (Kind::Policy, 401) => "authentication_error",
            (Kind::Policy, 403) => "permission_error",
            (Kind::Policy, s) if s >= 500 => "server_error",
            (Kind::Policy, _) => "invalid_request_error",
            (kind, _) => kind.openai_type(),
        };
        #[derive(Serialize)]
        struct Envelope<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            r#type: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        let envelope = Envelope {
            error: Inner { message: &self.message, r#type, param: self.param.as_deref(), code: self.code.as_deref() },
        };
        serde_json::to_vec(&envelope).unwrap_or_else(|_| {
            br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#.to_vec()
        })
    }

    /// Whether an upstream said it was overloaded (a 503 or Anthropic's 529).
    fn overloaded(&self) -> bool {
        self.kind == Kind::UpstreamFailed && self.status.is_some_and(|s| matches!(s.as_u16(), 503 | 529))
    }

    /// The status an Anthropic client gets: the same as OpenAI's but 529 for an overloaded upstream.
    fn anthropic_status(&self) -> StatusCode {
        if self.overloaded() {
            return StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        }
        self.http_status()
    }

    /// Anthropic's error `type` for this error.
    pub fn anthropic_type(&self) -> &'static str {
        match self.anthropic_status().as_u16() {
            400 | 405 | 408 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            s if s < 500 => "invalid_request_error",
            _ => "api_error",
        }
    }

    fn body_anthropic(&self) -> Vec<u8> {
        // No `param` in Anthropic's shape: the field goes into the message, unless it says so already.
        let message = match self.param.as_deref() {
            Some(param) if !self.message.contains(param) => format!("{param}: {}", self.message),
            _ => self.message.to_string(),
        };
        let body = serde_json::json!({"type": "error", "error": {"type": self.anthropic_type(), "message": message}});
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The response for this error in OpenAI's shape.
    pub fn into_response(self) -> http::Response<Body> {
        self.into_response_as(Shape::OpenAi)
    }

    /// The response for this error in `shape`. The only function that builds error responses.
    pub fn into_response_as(self, shape: Shape) -> http::Response<Body> {
        let (status, body) = match shape {
            Shape::OpenAi => (self.http_status(), self.body_json()),
            Shape::Anthropic => (self.anthropic_status(), self.body_anthropic()),
        };
        let mut response = http::Response::new(body::full(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(ms) = self.retry_after_ms {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
        }
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }

    /// The event that ends a stream which failed after its first byte: `data: {"error":…}` and no
    /// `[DONE]`, so that clients raise instead of taking a truncated answer for a whole one.
    pub fn sse_event(&self) -> Bytes {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.body_json());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// Anthropic's stream error: `event: error` with the error object, which the Anthropic SDKs raise.
    pub fn anthropic_sse_event(&self) -> Bytes {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"event: error\ndata: ");
        out.extend_from_slice(&self.body_anthropic());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// The `error` object of a failed Responses API response: `{"code", "message"}`.
    pub fn responses_error(&self) -> serde_json::Value {
        let code = self.code.as_deref().unwrap_or_else(|| self.kind.openai_type());
        serde_json::json!({"code": code, "message": self.message})
    }

    /// The Responses API's stream `error` event (numbered `sequence_number`), shaped as OpenAI sends
    /// it, with the error object nested so that the `openai` SDKs raise it.
    pub fn responses_error_event(&self, sequence_number: u64) -> Bytes {
        let r#type = self.kind.openai_type();
        let code = self.code.as_deref().unwrap_or(r#type);
        let event = serde_json::json!({
            "type": "error", "sequence_number": sequence_number,
            "error": {"type": r#type, "code": code, "message": self.message, "param": self.param.as_deref()},
        });
        let mut out = Vec::with_capacity(200);
        out.extend_from_slice(b"event: error\ndata: ");
        out.extend_from_slice(&serde_json::to_vec(&event).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.label(), self.message)?;
        if let Some(source) = &self.source {
            write!(f, " ({source})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
