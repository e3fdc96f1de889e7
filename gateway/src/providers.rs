//! Stage: provider. One adapter per upstream kind, all shaped alike: build the upstream request from
//! the canonical (OpenAI) one, and classify a failed response into an [`Error`] (whose fault, whether
//! another target may succeed). [`UpstreamClient`] is the pooled HTTP client every adapter sends through.

pub mod openai;
pub mod worker;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use weir_config::{Timeouts, Upstream, UpstreamKind};

use crate::error::{Error, Kind};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// What a request asks of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Chat,
    Embeddings,
}

impl Operation {
    pub fn label(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// One configured upstream: its own connection pool (so its connect timeout is its own), its URLs and
/// credentials prepared once.
#[derive(Debug)]
pub struct UpstreamClient {
    pub name: String,
    pub kind: UpstreamKind,
    pub timeouts: Timeouts,
    /// Headers sent on every request, credentials included (marked sensitive).
    headers: HeaderMap,
    chat_uri: Uri,
    embeddings_uri: Uri,
    http: Client<Connector, Full<Bytes>>,
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
        let headers = match upstream.kind {
            UpstreamKind::OpenAi => openai::headers(upstream)?,
            UpstreamKind::Worker => worker::headers(upstream)?,
        };
        let uri = |path: &str| {
            format!("{}{path}", upstream.endpoint)
                .parse::<Uri>()
                .map_err(|e| Error::internal(format!("upstream {} has an unusable endpoint", upstream.name)).source(e))
        };
        Ok(Self {
            name: upstream.name.clone(),
            kind: upstream.kind,
            timeouts: upstream.timeouts,
            headers,
            chat_uri: uri("/chat/completions")?,
            embeddings_uri: uri("/embeddings")?,
            http,
        })
    }

    /// Builds the upstream request for `operation` with an already-encoded JSON body.
    pub fn request(&self, operation: Operation, body: Vec<u8>) -> Result<Request<Full<Bytes>>, Error> {
        let uri = match operation {
            Operation::Chat => self.chat_uri.clone(),
            Operation::Embeddings => self.embeddings_uri.clone(),
        };
        let mut request = Request::post(uri)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::internal("could not build the upstream request").source(e))?;
        *request.headers_mut() = self.headers.clone();
        Ok(request)
    }

    /// Sends a request and waits, at most `first_byte` (or `deadline` if sooner), for response headers.
    /// Transport failures are classified here; HTTP error statuses are returned as responses for the
    /// adapter to classify.
    pub async fn send(&self, request: Request<Full<Bytes>>, wait: Duration) -> Result<Response<Incoming>, Error> {
        match tokio::time::timeout(wait, self.http.request(request)).await {
            Err(_) => Err(Error::new(
                Kind::UpstreamTimeout,
                format!("The upstream '{}' did not respond within {}.", self.name, humanize(wait)),
            )
            .code("upstream_timeout")),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_connect() => Err(Error::new(
                Kind::UpstreamUnavailable,
                format!("The upstream '{}' could not be reached.", self.name),
            )
            .code("upstream_unavailable")
            .retryable(true)
            .source(e)),
            Ok(Err(e)) => Err(Error::new(
                Kind::UpstreamFailed,
                format!("The connection to the upstream '{}' failed before it answered.", self.name),
            )
            .code("upstream_error")
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
        match self.kind {
            UpstreamKind::OpenAi => openai::classify(&self.name, parts.status, &parts.headers, &body),
            UpstreamKind::Worker => worker::classify(&self.name, parts.status, &parts.headers, &body),
        }
    }
}

fn humanize(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// Marks a header value holding a credential so that it is never printed by `Debug`.
fn sensitive(value: &str) -> Result<HeaderValue, Error> {
    let mut v = HeaderValue::from_str(value).map_err(|_| Error::internal("a configured header value is not valid"))?;
    v.set_sensitive(true);
    Ok(v)
}
