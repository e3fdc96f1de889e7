//! An in-process mock upstream that speaks the real wire protocols, all on one port: OpenAI's
//! (`mock/openai.rs` for chat and embeddings, `mock/completions.rs` for legacy completions,
//! `mock/responses.rs` for the Responses API), Anthropic's (`mock/anthropic.rs`), Azure OpenAI's
//! (`mock/azure.rs`), Gemini's for Vertex and the Gemini API (`mock/gemini.rs`), Bedrock's
//! (`mock/bedrock.rs`, Claude's InvokeModel included), SageMaker Runtime's (`mock/sagemaker.rs`:
//! `InvokeEndpoint`, prediction traffic), Azure ML's (`mock/azureml.rs`: an online endpoint's
//! `/score`) and the OAuth token endpoints
//! (`mock/oauth.rs`). Each protocol's file has the same entry point, `respond(shared, req, path)`.
//!
//! This file holds what they share: the server (tests and the load harness start one with
//! [`MockUpstream::builder`]; it binds `127.0.0.1:0`, serves HTTP/1.1 on the current tokio runtime,
//! records what it receives and stops when dropped), the builder's fault knobs, the dispatch by
//! path, streamed bodies, and the [`Script`] the translated providers answer from.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};

mod anthropic;
mod azure;
mod azureml;
mod bedrock;
mod completions;
mod gemini;
mod oauth;
mod openai;
mod responses;
mod sagemaker;

pub use openai::{FIXTURES, MODELS, fixture};
pub use sagemaker::{VARIANTS as SAGEMAKER_VARIANTS, sagemaker_score};

use openai::{ApiError, check_api_key, model_not_found};

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
    /// OpenAI chat streams cut each word into pieces of at most this many bytes.
    piece_bytes: Option<usize>,
    fail_first: Option<(usize, StatusCode)>,
    always_fail: Option<StatusCode>,
    fail_one_in: Option<(usize, StatusCode)>,
    retry_after: Option<String>,
    reset_first: usize,
    reset_one_in: Option<usize>,
    break_stream_after: Option<usize>,
    stall_stream_after: Option<usize>,
    /// Only the first n streams break or stall; `None`: every one.
    faulty_streams: Option<usize>,
    /// Only every nth stream breaks or stalls.
    faulty_one_in: Option<usize>,
    first_token_delay: Duration,
    no_done: bool,
    refuse_prefill: bool,
    context_window: Option<usize>,
    giant_event: Option<usize>,
    // Inverted so that `Default` records, which is what tests want; the load harness turns it off
    // because keeping every request of a long run would grow without bound.
    skip_recording: bool,
    listen: Option<SocketAddr>,
    /// Seconds until the OAuth tokens the mock issues expire.
    token_lifetime: Option<u64>,
    /// The AWS access key id and secret SigV4 requests must be signed with.
    aws_credentials: Option<(String, String)>,
    /// Whole (non-streamed) answers are a 200 whose body is not JSON.
    not_json: bool,
}

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

    /// From now on every chat and embeddings request fails with `status` (`None`: healthy again),
    /// whatever the builder said; for tests of targets that go down and recover.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn set_failing(&self, status: Option<u16>) {
        let code = status.map_or(0, |s| error_status(s).as_u16());
        self.shared.failing.store(code, Ordering::Relaxed);
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

    /// OpenAI chat streams cut each word into pieces of at most `bytes` bytes (`" bob@ex"`,
    /// `"ample"`, …), as a tokenizer cuts an e-mail address or a number, so that text a policy
    /// looks for spans events.
    ///
    /// # Panics
    /// If `bytes` is 0.
    pub fn piece_bytes(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "a piece holds at least one byte");
        self.piece_bytes = Some(bytes);
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

    /// The `retry-after` value injected 429s carry (`"1"` by default): seconds, or an HTTP date.
    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_owned());
        self
    }

    /// The first `n` requests to a model route (chat, embeddings; any provider's) are read and
    /// then answered with a TCP reset (`SO_LINGER` 0): no response byte, as when an upstream
    /// crashes or a load balancer drops the connection.
    pub fn reset_first(mut self, n: usize) -> Self {
        self.reset_first = n;
        self
    }

    /// Every `n`th request to a model route (the 1st, the `n+1`th, …) is reset like
    /// [`Self::reset_first`]'s.
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn reset_one_in(mut self, n: usize) -> Self {
        assert!(n > 0, "mock upstream: reset_one_in needs n ≥ 1");
        self.reset_one_in = Some(n);
        self
    }

    /// Only every `n`th streamed response (the 1st, the `n+1`th, …) breaks, stalls or starts late.
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn faulty_one_in(mut self, n: usize) -> Self {
        assert!(n > 0, "mock upstream: faulty_one_in needs n ≥ 1");
        self.faulty_one_in = Some(n);
        self
    }

    /// Streamed responses send `events` events and then nothing more, keeping the connection open:
    /// an upstream that stalls mid-stream.
    pub fn stall_stream_after(mut self, events: usize) -> Self {
        self.stall_stream_after = Some(events);
        self
    }

    /// Only the first `n` streamed responses break, stall or start late (with
    /// [`Self::break_stream_after`], [`Self::stall_stream_after`] or [`Self::first_token_delay`]);
    /// later ones are whole.
    pub fn faulty_streams(mut self, n: usize) -> Self {
        self.faulty_streams = Some(n);
        self
    }

    /// Streamed responses send their headers at once but wait `d` before their first event: a slow
    /// first token.
    pub fn first_token_delay(mut self, d: Duration) -> Self {
        self.first_token_delay = d;
        self
    }

    /// OpenAI-style streams end cleanly after their last chunk (and usage chunk) without
    /// `data: [DONE]`, as some OpenAI-compatible servers do.
    pub fn no_done(mut self) -> Self {
        self.no_done = true;
        self
    }

    /// A conversation that ends with an assistant message (a prefill) is refused with the
    /// provider's 400, as models without prefill support do. Without this, Bedrock, Gemini and
    /// Anthropic continue a final assistant turn, and the OpenAI route continues one marked as vLLM
    /// (`continue_final_message`) or DeepSeek (`"prefix": true`) mark it; unmarked, it answers anew
    /// as OpenAI does.
    pub fn refuse_prefill(mut self) -> Self {
        self.refuse_prefill = true;
        self
    }

    /// Chats whose messages hold more than `words` words are refused as too long for the model's
    /// context window, in the provider's words (OpenAI's `context_length_exceeded`, Bedrock's
    /// `ValidationException`, Gemini's `INVALID_ARGUMENT`, Anthropic's "prompt is too long").
    pub fn context_window(mut self, words: usize) -> Self {
        self.context_window = Some(words);
        self
    }

    /// Streamed responses are one event of `bytes` bytes that never ends (no event boundary), sent
    /// 64 KiB at a time: an upstream that would fill the gateway's memory.
    pub fn giant_event(mut self, bytes: usize) -> Self {
        self.giant_event = Some(bytes);
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

    /// Non-streamed chat completions and embeddings answer `200 OK` with an HTML page instead of
    /// JSON, as a misconfigured proxy or load balancer in front of an upstream does.
    pub fn not_json(mut self, on: bool) -> Self {
        self.not_json = on;
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
            resets: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            failing: AtomicU16::new(0),
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
    /// Requests reset so far, for `reset_first`.
    resets: AtomicUsize,
    /// Streams started so far, for `faulty_streams`.
    streams: AtomicUsize,
    /// `set_failing`'s status; 0 when healthy.
    failing: AtomicU16,
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
                if shared.config.reset_first > 0 || shared.config.reset_one_in.is_some() {
                    // Closing then sends a reset rather than a FIN.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
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

/// A response, or `Err` to make hyper drop the connection without answering (a reset).
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<MockBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        // Before the path is looked at, so in the default protocol's shape.
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
    if resets(&shared, &recorded) {
        return Err("mock upstream: connection reset on purpose".into());
    }
    Ok(respond(&shared, &recorded))
}

/// Whether `req` is a model request to reset (`reset_first`, `reset_one_in`).
fn resets(shared: &Shared, req: &Recorded) -> bool {
    let path = req.path.split('?').next().unwrap_or_default();
    let model_route = path.ends_with("/completions")
        || path.ends_with("/embeddings")
        || path == "/v1/messages"
        || path == "/v1/responses"
        || path.starts_with("/model/")
        || path.starts_with("/endpoints/")
        || path == "/score"
        || path.contains(":predict")
        || path.contains(":rawPredict")
        || path.contains(":generateContent")
        || path.contains(":streamGenerateContent");
    let config = &shared.config;
    if !model_route || (config.reset_first == 0 && config.reset_one_in.is_none()) {
        return false;
    }
    let seen = shared.resets.fetch_add(1, Ordering::Relaxed);
    seen < config.reset_first || config.reset_one_in.is_some_and(|n| seen.is_multiple_of(n))
}

/// Picks the protocol by path; OpenAI's takes everything the others do not claim.
fn respond(shared: &Arc<Shared>, req: &Recorded) -> Response<MockBody> {
    let path = req.path.split('?').next().unwrap_or_default();
    if path == "/mock/stats" {
        // For clients in another process (the standalone `mock-upstream`, driven by the Python
        // package's tests), which cannot call `MockUpstream`'s methods.
        let stats = serde_json::json!({
            "requests": shared.request_count.load(Ordering::Relaxed),
            "connections": shared.connection_count.load(Ordering::Relaxed),
            "cancelled_streams": shared.cancelled_streams.load(Ordering::Relaxed),
        });
        return json_response(StatusCode::OK, &stats);
    }
    if path.starts_with("/openai/") {
        return azure::respond(shared, req, path);
    }
    let gemini_api = path.starts_with("/v1beta/models/") || (path.starts_with("/v1/models/") && path.contains(':'));
    let vertex_endpoint = path.starts_with("/v1/projects/") && path.contains("/endpoints/");
    if gemini_api || vertex_endpoint || path.contains("/publishers/google/models/") {
        return gemini::respond(shared, req, path);
    }
    if path.starts_with("/model/") {
        return bedrock::respond(shared, req, path);
    }
    if path.starts_with("/endpoints/") {
        return sagemaker::respond(shared, req, path);
    }
    if path == "/score" {
        return azureml::respond(shared, req);
    }
    if path == "/token" || path.ends_with("/oauth2/v2.0/token") {
        return oauth::respond(shared, req, path);
    }
    if path == "/v1/messages" || path == "/v1/messages/count_tokens" {
        return anthropic::respond(shared, req, path);
    }
    if path == "/v1/responses" || path.starts_with("/v1/responses/") {
        return responses::respond(shared, req, path);
    }
    openai::respond(shared, req, path)
}

fn injected_failure(shared: &Shared) -> Option<StatusCode> {
    let failing = shared.failing.load(Ordering::Relaxed);
    if failing != 0 {
        return StatusCode::from_u16(failing).ok();
    }
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

/// An injected failure's response with the `retry_after` knob's header, on a 429.
fn with_retry_after(shared: &Shared, status: StatusCode, mut response: Response<MockBody>) -> Response<MockBody> {
    if let Some(value) = shared.config.retry_after.as_deref().filter(|_| status == StatusCode::TOO_MANY_REQUESTS)
        && let Ok(value) = HeaderValue::from_str(value)
    {
        response.headers_mut().insert(http::header::RETRY_AFTER, value);
    }
    response
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// `word` cut into pieces of at most `bytes` bytes (more where a character is wider), on character
/// boundaries.
pub(crate) fn cut_bytes(word: &str, bytes: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = word;
    while !rest.is_empty() {
        let mut end = bytes.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (piece, tail) = rest.split_at(end);
        pieces.push(piece);
        rest = tail;
    }
    pieces
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

// ---------------------------------------------------------------------------------------------
// Streaming bodies

fn sse(shared: &Arc<Shared>, mut events: Vec<Bytes>) -> Response<MockBody> {
    if shared.config.no_done {
        events.retain(|e| &e[..] != b"data: [DONE]\n\n");
    }
    streamed(shared, events, "text/event-stream")
}

/// A body sent one piece per poll (with `chunk_interval` between them, `break_stream_after`
/// applied, and cancellation counted), whatever the framing of the pieces.
fn streamed(shared: &Arc<Shared>, mut events: Vec<Bytes>, content_type: &'static str) -> Response<MockBody> {
    let config = &shared.config;
    let nth = shared.streams.fetch_add(1, Ordering::Relaxed);
    let faulty =
        config.faulty_streams.is_none_or(|n| nth < n) && config.faulty_one_in.is_none_or(|n| nth.is_multiple_of(n));
    let mut fill = 0;
    if let Some(bytes) = config.giant_event {
        // One event that never ends: its start (an SSE `data:` line here, a frame's prelude from
        // the Bedrock mock), then filler (see `EventStream::next`).
        if content_type == "text/event-stream" {
            events = vec![Bytes::from_static(br#"data: {"choices":[{"index":0,"delta":{"content":""#)];
        }
        fill = bytes;
    }
    let state = EventStream {
        events: events.into_iter(),
        sent: 0,
        interval: config.chunk_interval,
        first_delay: if faulty { config.first_token_delay } else { Duration::ZERO },
        break_after: config.break_stream_after.filter(|_| faulty),
        stall_after: config.stall_stream_after.filter(|_| faulty),
        fill,
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
    first_delay: Duration,
    break_after: Option<usize>,
    stall_after: Option<usize>,
    /// Filler bytes still to send after the events (`giant_event`).
    fill: usize,
    broken: bool,
    guard: CancelGuard,
}

/// What a giant event is made of.
static FILLER: [u8; 64 * 1024] = [b'a'; 64 * 1024];

impl EventStream {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, BoxError>, Self)> {
        if self.broken {
            return None;
        }
        if self.events.as_slice().is_empty() {
            if self.fill == 0 {
                return None;
            }
            let n = self.fill.min(FILLER.len());
            self.fill -= n;
            self.guard.done = self.fill == 0;
            return Some((Ok(Frame::data(Bytes::from_static(&FILLER[..n]))), self));
        }
        if self.sent == 0 && !self.first_delay.is_zero() {
            tokio::time::sleep(self.first_delay).await;
        }
        if self.sent > 0 && !self.interval.is_zero() {
            tokio::time::sleep(self.interval).await;
        }
        if self.stall_after == Some(self.sent) {
            // Silent, the connection open, until the client gives up (which the guard counts).
            std::future::pending::<()>().await;
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
        self.guard.done = self.events.as_slice().is_empty() && self.fill == 0;
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

    /// The rest of the reply after `prefill`, its start: a model continuing a prefilled turn.
    pub(crate) fn continue_after(&mut self, prefill: &str) {
        if let ScriptReply::Text(text) = &mut self.reply
            && let Some(rest) = text.strip_prefix(prefill)
        {
            *text = rest.to_owned();
            self.completion_tokens = word_count(text);
        }
    }

    /// The text reply cut into streamed pieces (one word each).
    pub(crate) fn pieces(&self) -> Vec<String> {
        match &self.reply {
            ScriptReply::Text(t) => words(t).map(str::to_owned).collect(),
            ScriptReply::Calls(_) => Vec::new(),
        }
    }
}
