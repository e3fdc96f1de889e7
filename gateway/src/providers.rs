//! Stage: provider. One adapter per upstream kind, all shaped alike: build the upstream request from
//! the canonical (OpenAI) one, authorize it (a static header, a cached OAuth token, or a SigV4
//! signature), turn a whole answer or a stream back into OpenAI's shapes, and classify a failed
//! response into an [`Error`] (whose fault, whether another target may succeed). [`UpstreamClient`] is
//! the pooled HTTP client every adapter sends through, so timeouts, retries, cancellation and
//! accounting work the same for every provider.
//!
//! A client API other than Chat Completions reaches an upstream one of two ways, decided per target
//! by [`UpstreamClient::native`]: relayed as it is where the upstream speaks it (Completions to
//! OpenAI-compatible servers, Messages to Anthropic and to Bedrock's Claude models, Responses to
//! upstreams configured with `native_responses`) through the adapter's `native` request; otherwise
//! through its canonical form like a chat request.

pub mod anthropic;
mod aws;
pub mod azure;
pub mod azureml;
pub mod bedrock;
pub mod gemini;
pub mod openai;
pub mod sagemaker;

#[cfg(test)]
mod arbitrary;
#[cfg(test)]
mod golden;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use weir_config::{Prefill, Provider, Timeouts, Upstream, UpstreamKind};

use crate::api::predict::{self, Payload};
use crate::api::sse::Event;
use crate::api::{ClientRequest, ModelRequest, Operation, PredictRequest, Surface};
use crate::error::{Error, Kind};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
pub(crate) type HttpClient = Client<Connector, Full<Bytes>>;

/// One configured upstream: its own connection pool (so its connect timeout is its own), its URLs and
/// credentials prepared once.
#[derive(Debug)]
pub struct UpstreamClient {
    pub name: String,
    pub kind: UpstreamKind,
    pub timeouts: Timeouts,
    /// How it continues a partial answer (mid-stream failover).
    pub prefill: Prefill,
    /// Whether the Responses API is relayed to this upstream as it is.
    native_responses: bool,
    /// Headers sent on every request, static credentials included (marked sensitive).
    headers: HeaderMap,
    adapter: AnyAdapter,
    http: HttpClient,
}

/// Calls the same [`Adapter`] method on whichever adapter an upstream has.
macro_rules! dispatch {
    ($adapter:expr, $a:ident => $call:expr) => {
        match $adapter {
            AnyAdapter::OpenAi($a) => $call,
            AnyAdapter::Azure($a) => $call,
            AnyAdapter::Bedrock($a) => $call,
            AnyAdapter::Gemini($a) => $call,
            AnyAdapter::Anthropic($a) => $call,
            AnyAdapter::SageMaker($a) => $call,
            AnyAdapter::AzureMl($a) => $call,
        }
    };
}
/// The per-kind half of an upstream.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "one per configured upstream, built once; never moved on the hot path")]
enum AnyAdapter {
    OpenAi(openai::OpenAi),
    Azure(azure::Azure),
    Bedrock(bedrock::Bedrock),
    Gemini(gemini::Gemini),
    Anthropic(anthropic::Anthropic),
    SageMaker(sagemaker::SageMaker),
    AzureMl(azureml::AzureMl),
}

impl UpstreamClient {
    pub fn new(upstream: &Upstream) -> Result<Self, Error> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(upstream.timeouts.connect));
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal("TLS set-up failed").source(e))?
            .with_root_certificates(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() })
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(concat!("weir/", env!("CARGO_PKG_VERSION"))));
        for (name, value) in &upstream.headers {
            if value.expose().is_empty() {
                continue;
            }
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::internal(format!("upstream {}: header {name} is not valid", upstream.name)))?;
            headers.insert(name, sensitive(value.expose())?);
        }
        let adapter = match (&upstream.kind, &upstream.provider) {
            // Weir's own workers speak OpenAI's API: relayed like any OpenAI-compatible server.
            (UpstreamKind::OpenAi | UpstreamKind::Worker, _) => {
                AnyAdapter::OpenAi(openai::OpenAi::new(upstream, &mut headers)?)
            }
            (UpstreamKind::AzureOpenAi, Provider::Azure(azure)) => {
                AnyAdapter::Azure(azure::Azure::new(upstream, azure, &mut headers)?)
            }
            (UpstreamKind::Bedrock, Provider::Aws(bedrock)) => {
                AnyAdapter::Bedrock(bedrock::Bedrock::new(upstream, bedrock, &mut headers)?)
            }
            (UpstreamKind::Vertex | UpstreamKind::Gemini, provider) => {
                AnyAdapter::Gemini(gemini::Gemini::new(upstream, provider, &mut headers)?)
            }
            (UpstreamKind::Anthropic, Provider::Anthropic(anthropic)) => {
                AnyAdapter::Anthropic(anthropic::Anthropic::new(upstream, anthropic, &mut headers)?)
            }
            (UpstreamKind::SageMaker, Provider::Aws(aws)) => {
                AnyAdapter::SageMaker(sagemaker::SageMaker::new(upstream, aws))
            }
            (UpstreamKind::AzureMl, Provider::Azure(azure)) => {
                AnyAdapter::AzureMl(azureml::AzureMl::new(upstream, azure, &mut headers)?)
            }
            (kind, _) => {
                return Err(Error::internal(format!("upstream {}: no settings for kind {kind:?}", upstream.name)));
            }
        };
        Ok(Self {
            name: upstream.name.clone(),
            kind: upstream.kind,
            timeouts: upstream.timeouts,
            prefill: upstream.prefill,
            native_responses: upstream.native_responses,
            headers,
            adapter,
            http,
        })
    }

    /// Whether this upstream speaks `surface` itself for `model`, so that such a request is relayed
    /// as it is rather than through its canonical form.
    pub fn native(&self, surface: Surface, model: &str) -> bool {
        match (surface, &self.adapter) {
            (Surface::Completions, AnyAdapter::OpenAi(_) | AnyAdapter::Azure(_)) => true,
            (Surface::Messages, AnyAdapter::Anthropic(_)) => true,
            (Surface::Messages, AnyAdapter::Bedrock(_)) => bedrock::is_claude(model),
            (Surface::Responses, AnyAdapter::OpenAi(_) | AnyAdapter::Azure(_)) => self.native_responses,
            _ => false,
        }
    }

    /// Builds the upstream request for `request` with `model` the target's model name: relayed as
    /// the client sent it where the upstream speaks its API, else from its canonical form; streams
    /// ask for the usage chunk.
    pub fn request(&self, request: &ClientRequest, model: &str) -> Result<Request<Bytes>, Error> {
        if let ClientRequest::Predict(prediction) = request {
            return self.predict_request(prediction, model);
        }
        if self.native(request.surface(), model) {
            let (uri, body) = dispatch!(&self.adapter, a => a.native(request, model))?;
            self.finish_request(request, true, uri, body)
        } else {
            self.request_from(request, request.canonical()?, model)
        }
    }

    /// Builds the upstream request for `request` from `canonical`, its canonical form or one made
    /// from it (a continuation's prefilled conversation), whether or not this upstream speaks the
    /// client's API; the headers of that API (Anthropic's version and betas) still go with it.
    pub fn request_from(
        &self,
        request: &ClientRequest,
        canonical: &ModelRequest,
        model: &str,
    ) -> Result<Request<Bytes>, Error> {
        let (uri, body) = dispatch!(&self.adapter, a => a.request(canonical, model))?;
        self.finish_request(request, false, uri, body)
    }

    /// A prediction's upstream request: the payload as the client sent it (`instances` re-encoded),
    /// its content type and accept, and what the adapter adds; a 400 naming this upstream where
    /// its kind serves no predictions.
    fn predict_request(&self, request: &PredictRequest, model: &str) -> Result<Request<Bytes>, Error> {
        let (body, content_type) = request.upstream_body()?;
        let mut headers = self.headers.clone();
        headers.insert(header::CONTENT_TYPE, content_type);
        match request.accept() {
            Some(accept) => headers.insert(header::ACCEPT, accept),
            None => headers.remove(header::ACCEPT),
        };
        let Some(uri) = dispatch!(&self.adapter, a => a.predict(request, model, &mut headers)) else {
            return Err(Error::bad_request(format!(
                "The model `{}` is served by the upstream '{}' ({}), which does not serve predictions; \
                 predictions go to `worker`, `sagemaker`, `vertex` and `azureml` upstreams.",
                request.model,
                self.name,
                self.kind.name()
            ))
            .param("model")
            .code("unsupported_operation"));
        };
        let mut upstream = Request::post(uri?)
            .body(body)
            .map_err(|e| Error::internal("could not build the upstream request").source(e))?;
        *upstream.headers_mut() = headers;
        Ok(upstream)
    }

    /// A prediction's whole answer for the client: for `:predict` the gateway's shape
    /// (`api::predict::answer`), for `:rawPredict` the body as it came; with its content type,
    /// and what served it (SageMaker's invoked variant, a worker's model), when the upstream says.
    pub fn predict_response(
        &self,
        request: &PredictRequest,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(Bytes, HeaderValue, Option<String>), Error> {
        let deployed = dispatch!(&self.adapter, a => a.deployed(headers));
        match &request.payload {
            Payload::Instances(_) => {
                let (body, deployed) = predict::answer(&self.name, &request.model, &body, deployed)?;
                Ok((Bytes::from(body), HeaderValue::from_static("application/json"), deployed))
            }
            Payload::Raw(_) => {
                let content_type = headers
                    .get(header::CONTENT_TYPE)
                    .cloned()
                    .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
                Ok((body, content_type, deployed))
            }
        }
    }

    /// An upstream request to `uri` with `body`, the upstream's headers and the request's own.
    fn finish_request(
        &self,
        request: &ClientRequest,
        native: bool,
        uri: Uri,
        body: Vec<u8>,
    ) -> Result<Request<Bytes>, Error> {
        let mut upstream = Request::post(uri)
            .body(Bytes::from(body))
            .map_err(|e| Error::internal("could not build the upstream request").source(e))?;
        *upstream.headers_mut() = self.headers.clone();
        dispatch!(&self.adapter, a => a.headers(request, native, upstream.headers_mut()));
        Ok(upstream)
    }

    /// A Messages `count_tokens` request for `model`, where this upstream counts tokens itself
    /// (Anthropic); `None` elsewhere.
    pub fn count_tokens_request(&self, request: &ClientRequest, model: &str) -> Option<Result<Request<Bytes>, Error>> {
        let (AnyAdapter::Anthropic(adapter), ClientRequest::Messages(s)) = (&self.adapter, request) else {
            return None;
        };
        let build = || {
            let body = s.request.upstream_body(Some(model), false)?;
            let mut upstream = Request::post(adapter.count_tokens_uri())
                .body(Bytes::from(body))
                .map_err(|e| Error::internal("could not build the upstream request").source(e))?;
            *upstream.headers_mut() = self.headers.clone();
            adapter.headers(request, true, upstream.headers_mut());
            Ok(upstream)
        };
        Some(build())
    }

    /// Authorizes and sends a request, and waits at most `wait` for the response headers (getting a
    /// token counts against the same wait). Transport failures are classified here; HTTP error
    /// statuses are returned as responses for the adapter to classify.
    pub async fn send(&self, request: Request<Bytes>, wait: Duration) -> Result<Response<Incoming>, Error> {
        let exchange = async {
            let mut request = request;
            dispatch!(&self.adapter, a => a.authorize(&self.name, &self.http, &mut request).await)?;
            Ok::<_, Error>(self.http.request(request.map(Full::new)).await)
        };
        match tokio::time::timeout(wait, exchange).await {
            // Another target may answer in time (the attempt loop does not try this one again).
            Err(_) => Err(Error::new(
                Kind::UpstreamTimeout,
                format!("The upstream '{}' did not respond within {}.", self.name, humanize(wait)),
            )
            .code("upstream_timeout")
            .retryable(true)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(e))) if e.is_connect() => Err(Error::new(
                Kind::UpstreamUnavailable,
                format!("The upstream '{}' could not be reached.", self.name),
            )
            .code("upstream_unavailable")
            .retryable(true)
            .source(e)),
            // Reset or closed before the first byte of an answer (a stale pooled connection, a
            // restarting server): another attempt may well succeed.
            Ok(Ok(Err(e))) => Err(Error::new(
                Kind::UpstreamFailed,
                format!("The connection to the upstream '{}' closed before it answered.", self.name),
            )
            .code(CONNECTION_CLOSED)
            .retryable(true)
            .source(e)),
        }
    }

    /// Turns a non-2xx response into an error, reading at most 64 KiB of its body.
    pub async fn error_from(&self, response: Response<Incoming>, wait: Duration) -> Error {
        let (parts, body) = response.into_parts();
        let body = match tokio::time::timeout(wait, Limited::new(body, 64 * 1024).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => Bytes::new(),
        };
        dispatch!(&self.adapter, a => a.classify(&self.name, parts.status, &parts.headers, &body))
    }

    /// Whether answers must be translated into OpenAI's shapes (the relayed kinds pass through).
    pub fn translates(&self) -> bool {
        matches!(self.adapter, AnyAdapter::Bedrock(_) | AnyAdapter::Gemini(_) | AnyAdapter::Anthropic(_))
    }

    /// A whole (non-streamed) answer in OpenAI's shape, or as it came when `native`.
    pub fn response(&self, operation: Operation, model: &str, body: Bytes, native: bool) -> Result<Bytes, Error> {
        if native {
            return Ok(body);
        }
        dispatch!(&self.adapter, a => a.response(&self.name, operation, model, body))
    }

    /// What turns this upstream's streamed body into OpenAI `chat.completion.chunk` events — or,
    /// when `native`, into the client's API's own SSE events (Bedrock's frames); `None` relays the
    /// upstream's SSE as it is.
    pub fn translator(&self, model: &str, native: bool) -> Option<Translator> {
        if native {
            return dispatch!(&self.adapter, a => a.native_translator(&self.name));
        }
        dispatch!(&self.adapter, a => a.translator(&self.name, model))
    }
}

/// What every adapter does, in the order a request meets it; one implementation per upstream kind,
/// so that all of them have the same shape.
trait Adapter {
    /// The upstream URL and body for `request`, `model` being the target's model name.
    fn request(&self, request: &ModelRequest, model: &str) -> Result<(Uri, Vec<u8>), Error>;

    /// The request for an upstream that speaks the client's API (see [`UpstreamClient::native`]).
    fn native(&self, request: &ClientRequest, model: &str) -> Result<(Uri, Vec<u8>), Error> {
        let _ = model;
        Err(Error::internal(format!("no native {} request for this upstream kind", request.surface().label())))
    }

    /// The URL of a prediction for `model` (the target's model name), adding to `headers` what the
    /// platform wants beyond the payload's content type and accept; `None`, the default: this kind
    /// serves no predictions.
    fn predict(&self, request: &PredictRequest, model: &str, headers: &mut HeaderMap) -> Option<Result<Uri, Error>> {
        let _ = (request, model, headers);
        None
    }

    /// What served a prediction, when the platform says so in a response header (SageMaker's
    /// invoked production variant).
    fn deployed(&self, headers: &HeaderMap) -> Option<String> {
        let _ = headers;
        None
    }

    /// Headers a request needs beyond the upstream's static ones (Anthropic's version and betas).
    fn headers(&self, request: &ClientRequest, native: bool, headers: &mut HeaderMap) {
        let _ = (request, native, headers);
    }

    /// What turns a natively relayed stream into its API's SSE events, when the upstream frames
    /// them otherwise (Bedrock's event stream); `None` relays SSE as it is.
    fn native_translator(&self, upstream: &str) -> Option<Translator> {
        let _ = upstream;
        None
    }

    /// Adds what must be computed per request (an OAuth token, a SigV4 signature) just before
    /// sending; static credentials are already among the upstream's headers, so by default nothing.
    async fn authorize(&self, upstream: &str, http: &HttpClient, request: &mut Request<Bytes>) -> Result<(), Error> {
        let _ = (upstream, http, request);
        Ok(())
    }

    /// A whole answer, turned into OpenAI's shape; an upstream that speaks OpenAI's API is relayed
    /// as it answered.
    fn response(&self, upstream: &str, operation: Operation, model: &str, body: Bytes) -> Result<Bytes, Error> {
        let _ = (upstream, operation, model);
        Ok(body)
    }

    /// What turns a streamed answer into OpenAI chunks; `None`, the default, relays the
    /// upstream's own SSE.
    fn translator(&self, upstream: &str, model: &str) -> Option<Translator> {
        let _ = (upstream, model);
        None
    }

    /// Reads a failed response's body in the provider's own error format.
    fn detail(&self, headers: &HeaderMap, body: &[u8]) -> Detail;

    /// A failed response as an [`Error`], the same way for every provider (see [`classify`]).
    fn classify(&self, upstream: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Error {
        classify(upstream, status, headers, self.detail(headers, body))
    }
}

/// Turns a translated provider's stream into OpenAI events. Each event it yields is a whole
/// `data: …` event; it yields `data: [DONE]` only once the upstream's stream completed cleanly.
#[derive(Debug)]
pub enum Translator {
    Bedrock(bedrock::ChunkStream),
    Gemini(gemini::ChunkStream),
    Anthropic(crate::api::messages::Decoder),
    /// Not into OpenAI chunks: Bedrock's InvokeModel stream into Messages SSE events.
    BedrockMessages(bedrock::InvokeStream),
}

impl Translator {
    /// Feeds bytes from the upstream; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        match self {
            Translator::Bedrock(t) => t.push(bytes, out),
            Translator::Gemini(t) => t.push(bytes, out),
            Translator::Anthropic(t) => t.push(bytes, out),
            Translator::BedrockMessages(t) => t.push(bytes, out),
        }
    }

    /// The upstream body ended; returns the last events (the usage chunk and `[DONE]` when the
    /// stream was complete, nothing when it was cut short).
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        match self {
            Translator::Bedrock(t) => t.finish(out),
            Translator::Gemini(t) => t.finish(out),
            Translator::Anthropic(t) => t.finish(out),
            Translator::BedrockMessages(t) => t.finish(out),
        }
    }
}

/// What an upstream's error body says, in its own words, once its format has been read.
#[derive(Debug, Default)]
pub(crate) struct Detail {
    pub message: Option<String>,
    /// The upstream's error code, turned into an OpenAI-style `code` where one fits.
    pub code: Option<String>,
    pub param: Option<String>,
    /// Seconds to wait, when the body says so (Google's `RetryInfo`).
    pub retry_after: Option<u64>,
    /// The upstream says this is a throttling error whatever its status (Bedrock).
    pub throttled: bool,
    /// The upstream says the gateway's credentials are wrong whatever its status (Gemini answers an
    /// invalid API key with a 400).
    pub credentials_rejected: bool,
    /// The upstream says the model itself failed whatever its status (Bedrock's 424
    /// `ModelErrorException`): the provider's fault, worth another target.
    pub model_failed: bool,
}

const MAX_MESSAGE: usize = 1000;

/// The `code` of a connection that closed before the upstream answered.
pub(crate) const CONNECTION_CLOSED: &str = "upstream_connection_closed";

/// How long an upstream asks to be left alone: `retry-after-ms` (Azure, OpenAI), `retry-after` in
/// seconds (fractions allowed) or as an HTTP date, else what its error body said (`detail`).
fn retry_wait(headers: &HeaderMap, detail: Option<u64>) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let seconds = |s: f64| (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(86_400.0)));
    header("retry-after-ms")
        .and_then(|ms| ms.parse::<f64>().ok())
        .and_then(|ms| seconds(ms / 1000.0))
        .or_else(|| {
            let value = header(header::RETRY_AFTER.as_str())?;
            value.parse::<f64>().ok().and_then(seconds).or_else(|| {
                let at = httpdate::parse_http_date(value).ok()?;
                Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
            })
        })
        .or(detail.map(Duration::from_secs))
}

/// Whether a refusal says the request is longer than the model takes. Providers word it each their
/// own way: OpenAI and Azure give the code, vLLM "maximum context length", Bedrock "Input is too
/// long" (Claude: "prompt is too long"), Gemini "The input token count (…) exceeds the maximum
/// number of tokens allowed", Mistral "too large for model with … maximum context length".
fn context_exceeded(status: StatusCode, detail: &Detail) -> bool {
    if !matches!(status.as_u16(), 400 | 413 | 422) {
        return false;
    }
    if detail.code.as_deref() == Some(crate::error::CONTEXT_LENGTH_EXCEEDED) {
        return true;
    }
    let message = detail.message.as_deref().unwrap_or_default().to_ascii_lowercase();
    [
        "context length",
        "context_length",
        "context window",
        "input is too long",
        "prompt is too long",
        "exceeds the maximum number of tokens",
        "too many input tokens",
    ]
    .iter()
    .any(|phrase| message.contains(phrase))
}

/// Classifies a non-2xx upstream response, the same way for every provider: throttling → 429 with
/// `retry-after`; a request longer than the model's context window → 400 `context_length_exceeded`;
/// another request the upstream rejected → its status and message; rejected credentials → 502 that
/// never echoes them; 408 and 5xx → 502, retryable.
pub(crate) fn classify(upstream: &str, status: StatusCode, headers: &HeaderMap, detail: Detail) -> Error {
    let too_long = context_exceeded(status, &detail);
    let upstream_message: String = detail.message.unwrap_or_default().trim().chars().take(MAX_MESSAGE).collect();
    let wait = retry_wait(headers, detail.retry_after);
    if status == StatusCode::TOO_MANY_REQUESTS || detail.throttled {
        return Error::new(
            Kind::RateLimited,
            format!("The upstream '{upstream}' is rate limiting requests: {upstream_message}"),
        )
        .code(detail.code.unwrap_or_else(|| "rate_limit_exceeded".into()))
        .retryable(true)
        .retry_after_ms(wait);
    }
    if too_long {
        return Error::new(Kind::UpstreamRejected, upstream_message)
            .status(StatusCode::BAD_REQUEST)
            .param(detail.param.unwrap_or_else(|| "messages".into()))
            .code(crate::error::CONTEXT_LENGTH_EXCEEDED);
    }
    match status.as_u16() {
        _ if detail.credentials_rejected => Error::new(
            Kind::UpstreamAuth,
            format!("The upstream '{upstream}' rejected the gateway's credentials ({status}). This is a gateway configuration problem, not your API key."),
        )
        .code("upstream_auth_failed"),
        _ if detail.model_failed => Error::new(
            Kind::UpstreamFailed,
            format!("The upstream '{upstream}' failed with status {}: {upstream_message}", status.as_u16()),
        )
        .code("upstream_error")
        .retryable(true),
        401 | 403 => Error::new(
            Kind::UpstreamAuth,
            format!("The upstream '{upstream}' rejected the gateway's credentials ({status}). This is a gateway configuration problem, not your API key."),
        )
        .code("upstream_auth_failed"),
        408 | 500..=599 => Error::new(
            Kind::UpstreamFailed,
            format!("The upstream '{upstream}' failed with status {}: {upstream_message}", status.as_u16()),
        )
        .code("upstream_error")
        .status(status)
        .retryable(true),
        400..=499 => {
            let message = if upstream_message.is_empty() {
                format!("The upstream '{upstream}' rejected the request with status {}.", status.as_u16())
            } else {
                upstream_message
            };
            let mut e = Error::new(Kind::UpstreamRejected, message).status(status);
            e.param = detail.param.map(Into::into);
            e.code = detail.code.map(Into::into);
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

/// The error for an upstream answer that is not what its protocol promises.
pub(crate) fn malformed(upstream: &str, what: &str) -> Error {
    Error::new(Kind::UpstreamFailed, format!("The upstream '{upstream}' sent {what} the gateway could not read."))
        .code("upstream_error")
}

/// The error for credentials the gateway could not obtain (a token endpoint that refused or failed).
pub(crate) fn credentials_failed(upstream: &str, why: impl std::fmt::Display, retryable: bool) -> Error {
    Error::new(
        Kind::UpstreamAuth,
        format!("The gateway could not obtain credentials for the upstream '{upstream}': {why}."),
    )
    .code("upstream_auth_failed")
    .retryable(retryable)
}

fn humanize(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// A response header naming what served a prediction (a variant, a deployed model), when it is
/// a plausible name: not empty, at most 256 bytes.
fn deployed_header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty() && v.len() <= 256).map(str::to_owned)
}

/// Marks a header value holding a credential so that it is never printed by `Debug`.
fn sensitive(value: &str) -> Result<HeaderValue, Error> {
    let mut v = HeaderValue::from_str(value).map_err(|_| Error::internal("a configured header value is not valid"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Characters left as they are in a path segment: RFC 3986's unreserved set. Everything else,
/// `/`, `?`, `#`, `%` and `:` included, is percent-encoded, so a model name stays one segment.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A model name as one URL path segment of an upstream's URL: refused unless it is a plausible
/// name ([`crate::api::check_model_name`]), then percent-encoded, so that no name a client sends can
/// reach another path on the provider's host with the gateway's credentials.
pub(crate) fn path_segment(model: &str) -> Result<String, Error> {
    crate::api::check_model_name(model)?;
    Ok(percent_encoding::utf8_percent_encode(model, SEGMENT).to_string())
}

/// Joins a base URL and a path into a `Uri`.
fn uri(upstream: &Upstream, path: &str) -> Result<Uri, Error> {
    format!("{}{path}", upstream.endpoint)
        .parse::<Uri>()
        .map_err(|e| Error::internal(format!("upstream {} has an unusable endpoint", upstream.name)).source(e))
}

/// An OpenAI `chat.completion.chunk` (or usage chunk) as one SSE event.
pub(crate) use crate::api::sse::data_event as event;
pub(crate) use crate::api::sse::{done_event, error_event, event_too_large};
pub(crate) use crate::api::{completion_id, unix_now};

/// Appends `items` to the last turn when it has the same role, else starts a turn
/// `{"role": role, field: items}`: Converse and Gemini both want roles to alternate.
pub(crate) fn push_turn(turns: &mut Vec<serde_json::Value>, role: &str, field: &str, items: Vec<serde_json::Value>) {
    if items.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut()
        && last.get("role").and_then(serde_json::Value::as_str) == Some(role)
        && let Some(existing) = last.get_mut(field).and_then(serde_json::Value::as_array_mut)
    {
        existing.extend(items);
        return;
    }
    turns.push(serde_json::json!({"role": role, field: items}));
}

/// A message's content as provider parts: text parts as `{"text": …}`, images (which must be `data:`
/// URLs) as `image` makes them from their MIME type and base64 payload.
pub(crate) fn content_parts(
    message: &crate::api::chat::Message,
    param: &str,
    image: impl Fn(String, String) -> Result<serde_json::Value, Error>,
) -> Result<Vec<serde_json::Value>, Error> {
    use crate::api::chat::Part;
    message
        .parts()
        .map(|part| match part {
            Part::Text(text) => Ok(serde_json::json!({"text": text})),
            Part::ImageUrl(url) => {
                let (mime, data) = data_url(url, param)?;
                image(mime, data)
            }
        })
        .collect()
}

/// Splits a `data:` URL into its MIME type and base64 payload; remote URLs are refused, since
/// fetching a client-named URL from inside the gateway would be a server-side request forgery hole.
pub(crate) fn data_url(url: &str, param: &str) -> Result<(String, String), Error> {
    let refuse = || {
        Error::bad_request(
            "Only base64 `data:` image URLs are supported for this model's provider; the gateway does not fetch remote URLs.",
        )
        .param(param)
        .code("invalid_image_url")
    };
    let rest = url.strip_prefix("data:").ok_or_else(refuse)?;
    let (meta, data) = rest.split_once(',').ok_or_else(refuse)?;
    let mime = meta.strip_suffix(";base64").ok_or_else(refuse)?;
    Ok((if mime.is_empty() { "application/octet-stream".to_owned() } else { mime.to_owned() }, data.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use http::{HeaderMap, HeaderValue, StatusCode};

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_str(v).unwrap())).collect()
    }

    #[test]
    fn retry_after_is_read_as_precisely_as_the_upstream_gives_it() {
        let wait = |h: &[(&'static str, &str)]| retry_wait(&headers(h), None);
        assert_eq!(wait(&[("retry-after-ms", "1500"), ("retry-after", "9")]), Some(Duration::from_millis(1500)));
        assert_eq!(wait(&[("retry-after", "2.5")]), Some(Duration::from_millis(2500)));
        let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let by_date = wait(&[("retry-after", &at)]).unwrap();
        assert!((Duration::from_secs(28)..=Duration::from_secs(30)).contains(&by_date), "{by_date:?}");
        assert_eq!(wait(&[("retry-after", "soon")]), None);
        assert_eq!(retry_wait(&HeaderMap::new(), Some(13)), Some(Duration::from_secs(13)), "Google's RetryInfo");
        let e =
            classify("up", StatusCode::TOO_MANY_REQUESTS, &headers(&[("retry-after-ms", "1200")]), Detail::default());
        assert_eq!(
            (e.retry_wait(), e.http_status()),
            (Some(Duration::from_millis(1200)), StatusCode::TOO_MANY_REQUESTS)
        );
        assert!(e.into_response().headers()["retry-after"] == "2", "the client's header is in whole seconds");
    }

    #[test]
    fn every_providers_too_long_refusal_is_context_length_exceeded() {
        let openai = br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let vllm = br#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.","type":"BadRequestError","code":400}"#;
        let bedrock = br#"{"message":"Input is too long for requested model."}"#;
        let claude = br#"{"message":"prompt is too long: 210000 tokens > 200000 maximum"}"#;
        let gemini = br#"{"error":{"code":400,"message":"The input token count (1048577) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
        let bedrock_headers = headers(&[("x-amzn-errortype", "ValidationException:http://internal.amazon.com/")]);
        let cases = [
            ("openai", openai::detail(openai)),
            ("vllm", openai::detail(vllm)),
            ("bedrock", bedrock::detail(&bedrock_headers, bedrock)),
            ("claude", bedrock::detail(&bedrock_headers, claude)),
            ("gemini", gemini::detail(gemini)),
        ];
        for (name, detail) in cases {
            let e = classify("up", StatusCode::BAD_REQUEST, &HeaderMap::new(), detail);
            assert!(e.is_context_exceeded(), "{name}: {e}");
            assert_eq!((e.http_status(), e.retryable), (StatusCode::BAD_REQUEST, false), "{name}");
        }
        let other = openai::detail(br#"{"error":{"message":"Invalid 'temperature'.","code":"invalid_value"}}"#);
        assert!(!classify("up", StatusCode::BAD_REQUEST, &HeaderMap::new(), other).is_context_exceeded());
        let server = openai::detail(br#"{"error":{"message":"context length of the queue exceeded"}}"#);
        assert!(!classify("up", StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), server).is_context_exceeded());
    }
}
