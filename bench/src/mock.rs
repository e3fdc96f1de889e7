//! An in-process mock of an OpenAI-compatible upstream that speaks the real wire protocol (chat and
//! legacy completions, embeddings, and the Responses API in `mock/responses.rs`), and on the same
//! port the other providers' protocols (`mock/anthropic.rs` for the Anthropic API, `mock/azure.rs`,
//! `mock/gemini.rs` for Vertex and the Gemini API, `mock/bedrock.rs`) and their OAuth token
//! endpoints (`mock/oauth.rs`).
//!
//! Tests and the load harness start one with [`MockUpstream::builder`]; it binds `127.0.0.1:0`,
//! serves HTTP/1.1 on the current tokio runtime, records what it receives and stops when dropped.
//! Streamed answers either replay a recorded OpenAI stream (`model: "fixture:<name>"`) byte for byte
//! or are synthesized from the same answer the non-streaming route gives.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};

mod anthropic;
mod azure;
mod bedrock;
mod gemini;
mod oauth;
mod responses;

/// A running mock upstream. Dropping it stops the accept loop and closes every open connection.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: AbortHandle,
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Configures a [`MockUpstream`]; every knob defaults to "behave like a healthy, instant upstream".
#[derive(Debug, Clone, Default)]
pub struct MockBuilder {
    api_key: Option<String>,
    latency: Duration,
    chunk_interval: Duration,
    fail_first: Option<(usize, StatusCode)>,
    always_fail: Option<StatusCode>,
    fail_one_in: Option<(usize, StatusCode)>,
    break_stream_after: Option<usize>,
    // Inverted so that `Default` records, which is what tests want; the load harness turns it off
    // because keeping every request of a long run would grow without bound.
    skip_recording: bool,
    listen: Option<SocketAddr>,
    /// Seconds until the OAuth tokens the mock issues expire.
    token_lifetime: Option<u64>,
    /// The AWS access key id and secret SigV4 requests must be signed with.
    aws_credentials: Option<(String, String)>,
}

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        /// Names of the recorded OpenAI streams in `bench/fixtures/openai/`, usable as `fixture:<name>`.
        pub const FIXTURES: &[&str] = &[$($name),*];

        /// The recorded OpenAI stream `name` (raw `text/event-stream` bytes), if there is one.
        pub fn fixture(name: &str) -> Option<&'static str> {
            match name {
                $($name => Some(include_str!(concat!("../fixtures/openai/", $name, ".sse"))),)*
                _ => None,
            }
        }
    };
}

fixtures!(
    "text_a",
    "text_b",
    "text_c",
    "text_logprobs",
    "length",
    "n3_choices",
    "tool_call",
    "tool_call_b",
    "tool_call_c",
    "parallel_tool_calls",
    "refusal",
    "refusal_logprobs",
);

/// Model ids listed by `GET /v1/models`.
pub const MODELS: &[&str] = &["mock-model", "gpt-4o-mini", "text-embedding-3-small"];

/// The arguments of every tool call the mock makes.
pub const TOOL_ARGUMENTS: &str = r#"{"location":"Paris"}"#;

/// A unit vector that depends only on `key` and `dimensions`: FNV-1a seeds a splitmix64 sequence.
/// The mock embeds a text input with `key` = its UTF-8 bytes, and a token-id input with `key` =
/// its ids as little-endian `u64`s, so tests can predict every vector.
pub fn embedding_vector(key: &[u8], dimensions: usize) -> Vec<f32> {
    let mut state =
        key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    // The top 53 bits, so the conversion to f64 is exact.
    let raw: Vec<f64> = (0..dimensions).map(|_| (next() >> 11) as f64 / (1_u64 << 53) as f64 * 2.0 - 1.0).collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    // Embeddings are f32 on the wire.
    raw.iter().map(|x| (x / norm) as f32).collect()
}

impl MockUpstream {
    pub fn builder() -> MockBuilder {
        MockBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL of this mock, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far, in arrival order (empty if recording was turned off).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorded().clone()
    }

    /// How many requests arrived, on any route; counted even when recording is off.
    pub fn request_count(&self) -> usize {
        self.shared.request_count.load(Ordering::Relaxed)
    }

    /// How many TCP connections the mock accepted, e.g. to check that a client reuses them.
    pub fn connection_count(&self) -> usize {
        self.shared.connection_count.load(Ordering::Relaxed)
    }

    /// How many tokens the mock's OAuth endpoints issued (service-account and Entra flows).
    pub fn token_requests(&self) -> usize {
        self.shared.recorded_tokens().len()
    }

    /// Streamed responses whose client went away before the last event was sent.
    pub fn cancelled_streams(&self) -> usize {
        self.shared.cancelled_streams.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` streams were cancelled; `false` if that did not happen `within`.
    pub async fn wait_cancelled_streams(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.cancelled_streams() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connections, so aborting it drops them all.
        self.server.abort();
    }
}

impl Recorded {
    /// The body parsed as JSON, or `Value::Null` if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl MockBuilder {
    /// Requires `Authorization: Bearer <key>` on every route; anything else gets a 401.
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_owned());
        self
    }

    /// Delay before the response headers, on every route.
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    /// Delay between two events of a streamed response.
    pub fn chunk_interval(mut self, d: Duration) -> Self {
        self.chunk_interval = d;
        self
    }

    /// The first `n` requests to `/v1/chat/completions` and `/v1/embeddings` (that pass the API key
    /// check) fail with `status` and an OpenAI error body; a 429 also carries `retry-after: 1`.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn fail_first(mut self, n: usize, status: u16) -> Self {
        self.fail_first = Some((n, error_status(status)));
        self
    }

    /// Every request to `/v1/chat/completions` and `/v1/embeddings` fails with `status`.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn always_fail(mut self, status: u16) -> Self {
        self.always_fail = Some(error_status(status));
        self
    }

    /// Every `n`th request to `/v1/chat/completions` and `/v1/embeddings` (the 1st, the `n+1`th, …)
    /// fails with `status`: `fail_one_in(2, 500)` fails half of them, alternately.
    ///
    /// # Panics
    /// If `n` is 0 or `status` is not a valid HTTP status code.
    pub fn fail_one_in(mut self, n: usize, status: u16) -> Self {
        assert!(n > 0, "mock upstream: fail_one_in needs n ≥ 1");
        self.fail_one_in = Some((n, error_status(status)));
        self
    }

    /// Streamed responses abort the connection after `events` events: no `[DONE]`, no chunked
    /// terminator, as when an upstream dies mid-stream.
    pub fn break_stream_after(mut self, events: usize) -> Self {
        self.break_stream_after = Some(events);
        self
    }

    /// Seconds until the OAuth tokens the mock issues expire (3600 by default).
    pub fn token_lifetime(mut self, seconds: u64) -> Self {
        self.token_lifetime = Some(seconds);
        self
    }

    /// Requires SigV4 signatures on the Bedrock routes to be made with these credentials: the
    /// mock computes the signature itself and compares. Without this, only the shape is checked.
    pub fn aws_credentials(mut self, access_key_id: &str, secret_access_key: &str) -> Self {
        self.aws_credentials = Some((access_key_id.to_owned(), secret_access_key.to_owned()));
        self
    }

    /// Whether to keep every request for [`MockUpstream::requests`] (on by default).
    pub fn record_requests(mut self, on: bool) -> Self {
        self.skip_recording = !on;
        self
    }

    /// Listens on `addr` instead of `127.0.0.1:0`; for the standalone `mock-upstream` server.
    /// Tests should leave this alone so they can run in parallel.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Binds `127.0.0.1:0` (or the `listen` address) and serves on the current tokio runtime.
    ///
    /// # Panics
    /// If the loopback listener cannot be bound; use [`MockBuilder::try_start`] to handle that.
    pub async fn start(self) -> MockUpstream {
        match self.try_start().await {
            Ok(mock) => mock,
            Err(err) => panic!("mock upstream: cannot bind its listener: {err}"),
        }
    }

    pub async fn try_start(self) -> std::io::Result<MockUpstream> {
        let addr = self.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config: self,
            requests: Mutex::default(),
            request_count: AtomicUsize::new(0),
            connection_count: AtomicUsize::new(0),
            failable_requests: AtomicUsize::new(0),
            cancelled_streams: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            tokens: Mutex::default(),
            responses: Mutex::default(),
        });
        let server = tokio::spawn(accept_loop(listener, Arc::clone(&shared))).abort_handle();
        Ok(MockUpstream { addr, shared, server })
    }
}

fn error_status(status: u16) -> StatusCode {
    match StatusCode::from_u16(status) {
        Ok(status) => status,
        Err(_) => panic!("mock upstream: {status} is not an HTTP status code"),
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;
// Unsync because the streaming body holds a tokio `Sleep`; hyper only needs `Send`.
type MockBody = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug)]
struct Shared {
    config: MockBuilder,
    requests: Mutex<Vec<Recorded>>,
    request_count: AtomicUsize,
    connection_count: AtomicUsize,
    /// Requests that `fail_first` counts, so the first n of them fail.
    failable_requests: AtomicUsize,
    cancelled_streams: AtomicUsize,
    next_id: AtomicU64,
    /// Bearer tokens the OAuth endpoints issued; the provider routes accept these.
    tokens: Mutex<Vec<String>>,
    /// Stored Responses API responses by id, with the input items they answered.
    responses: Mutex<std::collections::HashMap<String, (Value, Vec<Value>)>>,
}

impl Shared {
    fn recorded(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        // The vector is only ever appended to, so a panic elsewhere cannot leave it inconsistent.
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn recorded_tokens(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `Authorization: Bearer <token>` carries a token the mock issued.
    fn has_issued_token(&self, req: &Recorded) -> bool {
        let token = req.header("authorization").and_then(|v| v.strip_prefix("Bearer "));
        token.is_some_and(|t| self.recorded_tokens().iter().any(|issued| issued == t))
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors, usually; back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                shared.connection_count.fetch_add(1, Ordering::Relaxed);
                // Latency numbers are meaningless with Nagle's algorithm delaying small writes.
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&shared), req));
                    // Clients hanging up mid-response is how streams get cancelled: not an error here.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(ApiError::invalid(None, None, "Could not read the request body.").into_response());
    };
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts.headers,
        body,
    };
    shared.request_count.fetch_add(1, Ordering::Relaxed);
    if !shared.config.skip_recording {
        shared.recorded().push(recorded.clone());
    }
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    Ok(respond(&shared, &recorded).unwrap_or_else(ApiError::into_response))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Completions,
    Embeddings,
    Models,
}

fn respond(shared: &Arc<Shared>, req: &Recorded) -> Result<Response<MockBody>, ApiError> {
    let path = req.path.split('?').next().unwrap_or_default();
    if path.starts_with("/openai/") {
        return azure::respond(shared, req, path);
    }
    let gemini_api = path.starts_with("/v1beta/models/") || (path.starts_with("/v1/models/") && path.contains(':'));
    if gemini_api || path.contains("/publishers/google/models/") {
        return Ok(gemini::respond(shared, req, path));
    }
    if path.starts_with("/model/") {
        return Ok(bedrock::respond(shared, req, path));
    }
    if path == "/token" || path.ends_with("/oauth2/v2.0/token") {
        return Ok(oauth::respond(shared, req, path));
    }
    if path == "/v1/messages" || path == "/v1/messages/count_tokens" {
        return Ok(anthropic::respond(shared, req, path));
    }
    if path == "/v1/responses" || path.starts_with("/v1/responses/") {
        return responses::respond(shared, req, path);
    }
    let route = match (req.method.as_str(), path) {
        ("POST", "/v1/chat/completions") => Route::Chat,
        ("POST", "/v1/completions") => Route::Completions,
        ("POST", "/v1/embeddings") => Route::Embeddings,
        ("GET", "/v1/models") => Route::Models,
        (method, _) => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("Invalid URL ({method} {path})"),
                kind: "invalid_request_error",
                param: None,
                code: None,
            });
        }
    };
    check_api_key(&shared.config, req)?;
    if route == Route::Models {
        return Ok(models());
    }
    if let Some(status) = injected_failure(shared) {
        return Err(ApiError::injected(status));
    }
    let body: Value = serde_json::from_slice(&req.body).map_err(|_| {
        ApiError::invalid(
            None,
            None,
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    })?;
    if !body.is_object() {
        return Err(ApiError::invalid(None, None, "The request body must be a JSON object."));
    }
    match route {
        Route::Chat => chat(shared, &body),
        Route::Completions => completions(shared, &body),
        Route::Embeddings => embeddings(&body),
        Route::Models => Ok(models()),
    }
}

fn check_api_key(config: &MockBuilder, req: &Recorded) -> Result<(), ApiError> {
    let Some(key) = &config.api_key else {
        return Ok(());
    };
    let message = match req.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(value) if value.strip_prefix("Bearer ") == Some(key.as_str()) => return Ok(()),
        Some(_) => {
            "Incorrect API key provided. You can find your API key at \
                    https://platform.openai.com/account/api-keys."
        }
        None => {
            "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        }
    };
    Err(ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_owned(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    })
}

fn injected_failure(shared: &Shared) -> Option<StatusCode> {
    if let Some(status) = shared.config.always_fail {
        return Some(status);
    }
    let seen = shared.failable_requests.fetch_add(1, Ordering::Relaxed);
    if let Some((n, status)) = shared.config.fail_one_in
        && seen.is_multiple_of(n)
    {
        return Some(status);
    }
    let (n, status) = shared.config.fail_first?;
    (seen < n).then_some(status)
}

// ---------------------------------------------------------------------------------------------
// Chat completions

fn chat(shared: &Arc<Shared>, body: &Value) -> Result<Response<MockBody>, ApiError> {
    chat_as(shared, body, false)
}

/// A chat completion; `azure` adds Azure's content-filter fields and its empty first chunk.
fn chat_as(shared: &Arc<Shared>, body: &Value, azure: bool) -> Result<Response<MockBody>, ApiError> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(Some("model"), None, "you must provide a model parameter"))?;
    let messages = match body.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                Some("messages"),
                Some("missing_required_parameter"),
                "Missing required parameter: 'messages'.",
            ));
        }
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(ApiError::invalid(
                Some("messages"),
                Some("empty_array"),
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but \
                 got an empty array instead.",
            ));
        }
        Some(Value::Array(m)) => m,
        Some(_) => {
            return Err(ApiError::invalid(
                Some("messages"),
                Some("invalid_type"),
                "Invalid type for 'messages': expected an array of objects.",
            ));
        }
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);

    if stream && let Some(name) = model.strip_prefix("fixture:") {
        let text = fixture(name).ok_or_else(|| model_not_found(model))?;
        return Ok(sse(shared, replay(text, include_usage)));
    }

    let answer = Answer::new(body, messages)?;
    let id = format!("chatcmpl-mock-{}", shared.next_id());
    let created = unix_now();
    if stream {
        let mut events = answer.chunks(&id, model, created, include_usage);
        if azure {
            events = azure::stream_events(events, &id, created);
        }
        return Ok(sse(shared, events));
    }
    let message = match &answer.reply {
        Reply::Text(text) => json!({"role": "assistant", "content": text, "refusal": null}),
        Reply::ToolCall { name } => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": "call_mock_1",
                "type": "function",
                "function": {"name": name, "arguments": TOOL_ARGUMENTS},
            }],
            "refusal": null,
        }),
    };
    let mut completion = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": answer.finish_reason(),
            }],
            "usage": answer.usage(),
            // Lets tests check that a gateway passes unknown fields through in both directions.
            "x_mock": {"echo_unknown": body.get("x_probe").cloned().unwrap_or(Value::Null)},
    });
    if azure {
        azure::add_filter_results(&mut completion);
    }
    Ok(json_response(StatusCode::OK, &completion))
}

enum Reply {
    Text(String),
    ToolCall { name: String },
}

struct Answer {
    reply: Reply,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Answer {
    fn new(body: &Value, messages: &[Value]) -> Result<Self, ApiError> {
        let last = messages.last().unwrap_or(&Value::Null);
        let last_is_tool = last.get("role").and_then(Value::as_str) == Some("tool");
        let first_tool = body.get("tools").and_then(Value::as_array).and_then(|t| t.first());
        let reply = match first_tool {
            Some(tool) if !last_is_tool => {
                let name = tool.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(
                        Some("tools[0].function.name"),
                        Some("missing_required_parameter"),
                        "Missing required parameter: 'tools[0].function.name'.",
                    )
                })?;
                Reply::ToolCall { name: name.to_owned() }
            }
            _ if last_is_tool => Reply::Text(format!("tool said: {}", message_text(last))),
            _ => {
                let user = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
                Reply::Text(format!("echo: {}", user.map(message_text).unwrap_or_default()))
            }
        };
        let prompt_tokens = messages.iter().map(|m| word_count(&message_text(m))).sum();
        let completion_tokens = match &reply {
            Reply::Text(text) => word_count(text),
            Reply::ToolCall { .. } => word_count(TOOL_ARGUMENTS),
        };
        Ok(Self { reply, prompt_tokens, completion_tokens })
    }

    fn finish_reason(&self) -> &'static str {
        match self.reply {
            Reply::Text(_) => "stop",
            Reply::ToolCall { .. } => "tool_calls",
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    /// The answer as `chat.completion.chunk` events, shaped like OpenAI's own streams.
    fn chunks(&self, id: &str, model: &str, created: u64, include_usage: bool) -> Vec<Bytes> {
        let chunk = |delta: Value, finish_reason: Option<&str>| {
            event(&json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }],
            }))
        };
        let mut events = Vec::new();
        match &self.reply {
            Reply::Text(text) => {
                events.push(chunk(json!({"role": "assistant", "content": ""}), None));
                events.extend(words(text).map(|w| chunk(json!({"content": w}), None)));
            }
            Reply::ToolCall { name } => {
                events.push(chunk(
                    json!({
                        "role": "assistant",
                        "content": null,
                        "tool_calls": [{
                            "index": 0,
                            "id": "call_mock_1",
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }],
                    }),
                    None,
                ));
                events.extend(argument_fragments(TOOL_ARGUMENTS).map(|fragment| {
                    chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}), None)
                }));
            }
        }
        events.push(chunk(json!({}), Some(self.finish_reason())));
        if include_usage {
            events.push(event(&json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": self.usage(),
            })));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }
}

/// The text of a message: a string `content`, or its text parts joined.
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    }
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Splits `text` before every run of whitespace, so the pieces look like tokens (`" world"`) and
/// concatenate back to exactly `text`.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut prev_space = true;
        let cut = rest
            .char_indices()
            .find(|&(i, c)| {
                let boundary = i > 0 && c.is_whitespace() && !prev_space;
                prev_space = c.is_whitespace();
                boundary
            })
            .map_or(rest.len(), |(i, _)| i);
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

/// Tool-call arguments in small pieces, as OpenAI streams them.
fn argument_fragments(arguments: &str) -> impl Iterator<Item = &str> {
    const PIECE: usize = 4;
    // TOOL_ARGUMENTS is ASCII, so byte offsets are char boundaries.
    (0..arguments.len()).step_by(PIECE).map(move |i| &arguments[i..(i + PIECE).min(arguments.len())])
}

/// Splits a recorded stream into its events, leaving out the final usage chunk unless asked for,
/// as OpenAI only sends it with `stream_options.include_usage`.
fn replay(text: &'static str, include_usage: bool) -> Vec<Bytes> {
    text.split_inclusive("\n\n")
        .filter(|event| include_usage || !is_usage_event(event))
        .map(|event| Bytes::from_static(event.as_bytes()))
        .collect()
}

fn is_usage_event(event: &str) -> bool {
    let Some(data) = event.strip_prefix("data: ") else {
        return false;
    };
    serde_json::from_str::<Value>(data).is_ok_and(|chunk| {
        chunk.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty)
            && chunk.get("usage").is_some_and(Value::is_object)
    })
}

// ---------------------------------------------------------------------------------------------
// Legacy completions

/// `POST /v1/completions`: `echo: <prompt>`, cut at `max_tokens` words (16 by default, as OpenAI's),
/// the prompt put in front when `echo` is set.
fn completions(shared: &Arc<Shared>, body: &Value) -> Result<Response<MockBody>, ApiError> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(Some("model"), None, "you must provide a model parameter"))?;
    let prompt = match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_owned()
        }
        _ => {
            return Err(ApiError::invalid(
                Some("prompt"),
                Some("invalid_type"),
                "Invalid 'prompt': this mock takes one text prompt.",
            ));
        }
    };
    if body.get("messages").is_some() {
        return Err(ApiError::invalid(Some("messages"), None, "Unrecognized request argument supplied: messages"));
    }
    let max = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(16) as usize;
    let answer = format!("echo: {prompt}");
    let pieces: Vec<&str> = words(&answer).take(max).collect();
    let finish = if words(&answer).count() > max { "length" } else { "stop" };
    let echo = if body.get("echo").and_then(Value::as_bool) == Some(true) { prompt.clone() } else { String::new() };
    let (prompt_tokens, completion_tokens) = (word_count(&prompt), pieces.len());
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let id = format!("cmpl-mock-{}", shared.next_id());
    let created = unix_now();
    let choice = |text: String, finish: Option<&str>| json!({"text": text, "index": 0, "logprobs": null, "finish_reason": finish});
    let chunk = |choices: Value| json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        let mut whole = chunk(json!([choice(format!("{echo}{}", pieces.concat()), Some(finish))]));
        whole["usage"] = usage;
        return Ok(json_response(StatusCode::OK, &whole));
    }
    let mut events = Vec::new();
    if !echo.is_empty() {
        events.push(event(&chunk(json!([choice(echo, None)]))));
    }
    events.extend(pieces.iter().map(|p| event(&chunk(json!([choice((*p).to_owned(), None)])))));
    events.push(event(&chunk(json!([choice(String::new(), Some(finish))]))));
    if body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true) {
        let mut last = chunk(json!([]));
        last["usage"] = usage;
        events.push(event(&last));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Ok(sse(shared, events))
}

// ---------------------------------------------------------------------------------------------
// Streaming bodies

fn sse(shared: &Arc<Shared>, events: Vec<Bytes>) -> Response<MockBody> {
    streamed(shared, events, "text/event-stream")
}

/// A body sent one piece per poll (with `chunk_interval` between them, `break_stream_after`
/// applied, and cancellation counted), whatever the framing of the pieces.
fn streamed(shared: &Arc<Shared>, events: Vec<Bytes>, content_type: &'static str) -> Response<MockBody> {
    let state = EventStream {
        events: events.into_iter(),
        sent: 0,
        interval: shared.config.chunk_interval,
        break_after: shared.config.break_stream_after,
        broken: false,
        guard: CancelGuard { shared: Arc::clone(shared), done: false },
    };
    let stream = futures_util::stream::unfold(state, EventStream::next);
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The state of one streamed response, advanced one event per poll.
struct EventStream {
    events: std::vec::IntoIter<Bytes>,
    sent: usize,
    interval: Duration,
    break_after: Option<usize>,
    broken: bool,
    guard: CancelGuard,
}

impl EventStream {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, BoxError>, Self)> {
        if self.broken || self.events.as_slice().is_empty() {
            return None;
        }
        if self.sent > 0 && !self.interval.is_zero() {
            tokio::time::sleep(self.interval).await;
        }
        if self.break_after == Some(self.sent) {
            // Hand control back once so hyper flushes the events already yielded; an error
            // from the body then makes it drop the connection without the chunked terminator,
            // which is what a client sees when an upstream dies mid-stream.
            tokio::task::yield_now().await;
            self.broken = true;
            self.guard.done = true;
            return Some((Err("mock upstream: stream broken on purpose".into()), self));
        }
        let event = self.events.next()?;
        self.sent += 1;
        self.guard.done = self.events.as_slice().is_empty();
        Some((Ok(Frame::data(event)), self))
    }
}

/// Counts a cancelled stream when the body is dropped (the client went away) before the end.
struct CancelGuard {
    shared: Arc<Shared>,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            self.shared.cancelled_streams.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings

fn embeddings(body: &Value) -> Result<Response<MockBody>, ApiError> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(Some("model"), None, "you must provide a model parameter"))?;
    let inputs = embedding_inputs(body.get("input"))?;
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => 8,
        Some(v) => {
            v.as_u64().filter(|d| (1..=8192).contains(d)).and_then(|d| usize::try_from(d).ok()).ok_or_else(|| {
                ApiError::invalid(
                    Some("dimensions"),
                    Some("invalid_value"),
                    "Invalid 'dimensions': expected an integer between 1 and 8192.",
                )
            })?
        }
    };
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(ApiError::invalid(
                Some("encoding_format"),
                Some("invalid_value"),
                "Invalid 'encoding_format': expected 'float' or 'base64'.",
            ));
        }
    };
    let mut prompt_tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += input.tokens;
            let vector = embedding_vector(&input.key, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                // Through the f32's shortest decimal form, so the JSON reads like OpenAI's
                // ("-0.0069292835") rather than the f64 widening ("-0.006929283495992422").
                vector.iter().map(|x| x.to_string().parse::<f64>().map_or(Value::Null, Value::from)).collect()
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
    ))
}

struct EmbeddingInput {
    /// What the vector is derived from: the text, or the token ids.
    key: Vec<u8>,
    tokens: usize,
}

fn embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            Some("input"),
            Some("invalid_value"),
            "Invalid 'input': expected a non-empty string, array of strings, array of integers, \
             or array of integer arrays.",
        )
    };
    let text =
        |s: &str| (!s.is_empty()).then(|| EmbeddingInput { key: s.as_bytes().to_vec(), tokens: word_count(s).max(1) });
    let token_ids = |ids: &[Value]| -> Option<EmbeddingInput> {
        if ids.is_empty() {
            return None;
        }
        let key = ids.iter().map(Value::as_u64).collect::<Option<Vec<_>>>()?;
        Some(EmbeddingInput { key: key.iter().flat_map(|id| id.to_le_bytes()).collect(), tokens: key.len() })
    };
    match input {
        None | Some(Value::Null) => Err(ApiError::invalid(
            Some("input"),
            Some("missing_required_parameter"),
            "Missing required parameter: 'input'.",
        )),
        Some(Value::String(s)) => text(s).map(|i| vec![i]).ok_or_else(invalid),
        Some(Value::Array(items)) if items.first().is_some_and(Value::is_number) => {
            token_ids(items).map(|i| vec![i]).ok_or_else(invalid)
        }
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) => text(s),
                Value::Array(ids) => token_ids(ids),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

// ---------------------------------------------------------------------------------------------
// Models

fn models() -> Response<MockBody> {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "weir-mock"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

// ---------------------------------------------------------------------------------------------
// Responses and errors

/// An OpenAI error response: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(param: Option<&'static str>, code: Option<&'static str>, message: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.to_owned(),
            kind: "invalid_request_error",
            param,
            code,
        }
    }

    /// The error a real upstream would send with `status`, for `fail_first` and `always_fail`.
    fn injected(status: StatusCode) -> Self {
        let (message, kind, code) = match status.as_u16() {
            429 => (
                "Rate limit reached for requests (mock upstream). Please try again in 1s.",
                "requests",
                Some("rate_limit_exceeded"),
            ),
            500 => ("The server had an error while processing your request. Sorry about that!", "server_error", None),
            503 => ("The engine is currently overloaded, please try again later.", "server_error", None),
            s if s >= 500 => ("Upstream failure injected by the mock.", "server_error", None),
            _ => ("Request rejected by the mock.", "invalid_request_error", None),
        };
        Self { status, message: message.to_owned(), kind, param: None, code }
    }

    fn into_response(self) -> Response<MockBody> {
        let mut response = json_response(
            self.status,
            &json!({"error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }}),
        );
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn model_not_found(model: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("The model `{model}` does not exist or you do not have access to it."),
        kind: "invalid_request_error",
        param: None,
        code: Some("model_not_found"),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<MockBody> {
    let mut response =
        Response::new(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A whole body of bytes.
fn full_body(bytes: Bytes) -> MockBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

fn event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// What the cloud provider mocks answer

/// The mocks of the translated providers (Gemini, Bedrock) decide their answer the same way, from
/// what their protocol's request says, so that the gateway's translations can be compared across
/// providers. Special prompts trigger the unusual endings:
/// - `trigger-content-filter`: the answer is blocked by the provider's filter;
/// - `trigger-stream-exception`: a stream fails after its first events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Script {
    pub reply: ScriptReply,
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScriptReply {
    Text(String),
    /// One call per tool named, each with [`TOOL_ARGUMENTS`].
    Calls(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
    Filtered,
    Calls,
}

/// The prompt that makes a provider mock filter its answer.
pub const TRIGGER_CONTENT_FILTER: &str = "trigger-content-filter";
/// The prompt that makes a provider mock fail mid-stream.
pub const TRIGGER_STREAM_EXCEPTION: &str = "trigger-stream-exception";

impl Script {
    /// `tools`: the tools the model may call now (empty when tool calling is off); two or more
    /// make it call the first two in parallel.
    pub(crate) fn new(
        last_user: &str,
        tool_result: Option<&str>,
        tools: &[String],
        max_tokens: Option<u64>,
        prompt_tokens: usize,
    ) -> Self {
        let (reply, finish) = if last_user.contains(TRIGGER_CONTENT_FILTER) {
            (ScriptReply::Text(String::new()), Finish::Filtered)
        } else if let Some(result) = tool_result {
            (ScriptReply::Text(format!("tool said: {result}")), Finish::Stop)
        } else if !tools.is_empty() {
            (ScriptReply::Calls(tools.iter().take(2).cloned().collect()), Finish::Calls)
        } else {
            let text = format!("echo: {last_user}");
            match max_tokens.and_then(|m| usize::try_from(m).ok()) {
                Some(max) if word_count(&text) > max => {
                    let cut: String = words(&text).take(max).collect();
                    (ScriptReply::Text(cut), Finish::Length)
                }
                _ => (ScriptReply::Text(text), Finish::Stop),
            }
        };
        let completion_tokens = match &reply {
            ScriptReply::Text(t) => word_count(t),
            ScriptReply::Calls(calls) => calls.len() * word_count(TOOL_ARGUMENTS),
        };
        Self { reply, finish, prompt_tokens, completion_tokens }
    }

    /// The text reply cut into streamed pieces (one word each).
    pub(crate) fn pieces(&self) -> Vec<String> {
        match &self.reply {
            ScriptReply::Text(t) => words(t).map(str::to_owned).collect(),
            ScriptReply::Calls(_) => Vec::new(),
        }
    }
}
