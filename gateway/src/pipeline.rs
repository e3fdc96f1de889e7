//! The whole life of a request, top to bottom:
//!
//! accept (`server.rs`) → [`handle`]: request id, route by path → authenticate (`auth.rs`) → parse and
//! validate (`api/`) → plugins `on-request` (arrives with the plugin platform) → resolve the model to
//! targets and send, retrying on the next target (`route.rs`, `providers/`) → stream or relay the answer
//! back (`stream.rs`) → plugins `on-complete` (with the plugin platform) → accounting, exactly once
//! (`accounting.rs`). Errors from any stage become a response in one place, `Error::into_response`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tracing::Instrument;

use crate::App;
use crate::accounting::{Accounting, Outcome};
use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::api::{self, Usage, models};
use crate::auth::Principal;
use crate::body::{self, Body};
use crate::error::{Error, Kind, Side};
use crate::metrics::HttpLabels;
use crate::providers::Operation;
use crate::stream::{RelayOptions, SseRelay};

/// The largest non-streamed upstream response the gateway will buffer.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// What a path and method ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Embeddings,
    Models,
    Model,
    Health,
    Ready,
    Metrics,
    WrongMethod,
    Unknown,
}

impl Endpoint {
    fn of(method: &Method, path: &str) -> Self {
        let path = path.strip_suffix('/').unwrap_or(path);
        let (endpoint, allowed) = match path {
            "/v1/chat/completions" | "/chat/completions" => (Endpoint::Chat, Method::POST),
            "/v1/embeddings" | "/embeddings" => (Endpoint::Embeddings, Method::POST),
            "/v1/models" | "/models" => (Endpoint::Models, Method::GET),
            "/healthz" => (Endpoint::Health, Method::GET),
            "/readyz" => (Endpoint::Ready, Method::GET),
            "/metrics" => (Endpoint::Metrics, Method::GET),
            p if p.starts_with("/v1/models/") => (Endpoint::Model, Method::GET),
            _ => return Endpoint::Unknown,
        };
        if *method == allowed || (*method == Method::HEAD && allowed == Method::GET) {
            endpoint
        } else {
            Endpoint::WrongMethod
        }
    }

    fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models | Endpoint::Model => "models",
            Endpoint::Health | Endpoint::Ready => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::WrongMethod | Endpoint::Unknown => "other",
        }
    }
}

/// Serves one HTTP request. Never fails: every error becomes an OpenAI-shaped response here.
pub async fn handle(app: Arc<App>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let request_id = request_id(request.headers());
    let endpoint = Endpoint::of(request.method(), request.uri().path());
    let span = tracing::info_span!("request", id = &*request_id);
    let result = dispatch(&app, request, endpoint, request_id.clone(), started).instrument(span.clone()).await;
    let mut response = result.unwrap_or_else(|error| {
        // The one place errors are logged: a client's mistake is routine, anything else is worth a look.
        let _enter = span.enter();
        match error.side {
            Side::Client => tracing::debug!(status = error.http_status().as_u16(), error = %error, "request refused"),
            Side::Upstream => tracing::warn!(status = error.http_status().as_u16(), error = %error, "upstream failure"),
            Side::Internal => tracing::error!(status = error.http_status().as_u16(), error = %error, "internal error"),
        }
        error.into_response()
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    app.metrics
        .http_requests
        .get_or_create(&HttpLabels { route: endpoint.label(), status: response.status().as_u16() })
        .inc();
    Ok(response)
}

/// Routes by endpoint. Everything below returns `Result` and leaves error responses to [`handle`].
async fn dispatch(
    app: &Arc<App>,
    request: Request<Incoming>,
    endpoint: Endpoint,
    request_id: Arc<str>,
    started: Instant,
) -> Result<Response<Body>, Error> {
    match endpoint {
        Endpoint::Chat | Endpoint::Embeddings => {
            if app.is_draining() {
                return Err(Error::new(Kind::ShuttingDown, "The gateway is shutting down; retry on another replica.")
                    .code("shutting_down"));
            }
            let principal = app.auth.authenticate(request.headers())?;
            let (parts, incoming) = request.into_parts();
            let limit = app.config.server.max_body_bytes;
            let body = api::read_body(incoming, &parts.headers, limit, app.config.server.header_read_timeout).await?;
            let ctx = Ctx { app, request_id, principal, started };
            if endpoint == Endpoint::Chat {
                chat(&ctx, &ChatRequest::parse(&body)?).await
            } else {
                embeddings(&ctx, &EmbeddingsRequest::parse(&body)?).await
            }
        }
        Endpoint::Models => {
            app.auth.authenticate(request.headers())?;
            Ok(json(StatusCode::OK, models::list(app.router.names())))
        }
        Endpoint::Model => {
            app.auth.authenticate(request.headers())?;
            let id = request.uri().path().trim_start_matches("/v1/models/");
            match app.router.names().find(|n| *n == id) {
                Some(name) => Ok(json(StatusCode::OK, models::one(name))),
                None => Err(Error::new(Kind::NotFound, format!("The model `{id}` does not exist."))
                    .param("model")
                    .code("model_not_found")),
            }
        }
        Endpoint::Health => Ok(text(StatusCode::OK, "text/plain", "ok\n")),
        Endpoint::Ready if app.is_draining() => Ok(text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")),
        Endpoint::Ready => Ok(text(StatusCode::OK, "text/plain", "ready\n")),
        Endpoint::Metrics => {
            Ok(text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", app.metrics.render()))
        }
        Endpoint::WrongMethod => Err(Error::new(
            Kind::MethodNotAllowed,
            format!("{} is not allowed on {}.", request.method(), request.uri().path()),
        )
        .code("method_not_allowed")),
        Endpoint::Unknown => Err(Error::new(
            Kind::NotFound,
            format!("Unknown request URL: {} {}.", request.method(), request.uri().path()),
        )
        .code("unknown_url")),
    }
}

/// What every stage of one model request shares.
struct Ctx<'a> {
    app: &'a Arc<App>,
    request_id: Arc<str>,
    principal: Arc<Principal>,
    started: Instant,
}

async fn chat(ctx: &Ctx<'_>, chat: &ChatRequest) -> Result<Response<Body>, Error> {
    let stream = chat.is_stream().then_some(chat.client_wants_usage());
    model_request(ctx, Operation::Chat, &chat.model, stream, |model| chat.upstream_body(model)).await
}

async fn embeddings(ctx: &Ctx<'_>, request: &EmbeddingsRequest) -> Result<Response<Body>, Error> {
    model_request(ctx, Operation::Embeddings, &request.model, None, |model| request.upstream_body(model)).await
}

/// Route → provider → relay → accounting, for one parsed request. `stream` is `Some(client wants
/// usage)` for a streamed chat; `body_for` encodes the request for an upstream model name.
async fn model_request(
    ctx: &Ctx<'_>,
    operation: Operation,
    requested_model: &str,
    stream: Option<bool>,
    body_for: impl Fn(&str) -> Result<Vec<u8>, Error>,
) -> Result<Response<Body>, Error> {
    let app = ctx.app;
    let route = app.router.resolve(requested_model)?;
    let mut acct = Accounting::start(
        app.metrics.clone(),
        ctx.request_id.clone(),
        ctx.principal.clone(),
        operation.label(),
        route.label.clone(),
        ctx.started,
    );
    let deadline = ctx.started + route.targets[0].upstream.timeouts.total;
    let sent = app
        .router
        .send(
            &route,
            &app.metrics,
            deadline,
            |target| acct.target = target.label.clone(),
            |target| target.upstream.request(operation, body_for(target.upstream_model(requested_model))?),
        )
        .await;
    let (response, target) = match sent {
        Ok(sent) => sent,
        Err(error) => {
            acct.status = error.http_status().as_u16();
            acct.finish(Outcome::Error);
            return Err(error);
        }
    };
    let status = response.status();
    acct.status = status.as_u16();

    if let Some(client_wants_usage) = stream {
        let options = RelayOptions { client_wants_usage, idle: target.upstream.timeouts.idle, deadline };
        let relay = SseRelay::new(response.into_body(), options, acct, target.upstream.name.clone());
        let mut response = Response::new(BodyExt::boxed_unsync(relay));
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        return Ok(response);
    }

    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let wait = deadline.saturating_duration_since(Instant::now());
    let body = match read_upstream(response.into_body(), wait, &target.upstream.name).await {
        Ok(body) => body,
        Err(error) => {
            acct.status = error.http_status().as_u16();
            acct.finish(Outcome::Error);
            return Err(error);
        }
    };
    #[derive(Deserialize)]
    struct UsageOnly {
        #[serde(default)]
        usage: Option<Usage>,
    }
    acct.usage = serde_json::from_slice::<UsageOnly>(&body).ok().and_then(|u| u.usage);
    acct.finish(Outcome::Ok);
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")));
    Ok(response)
}

async fn read_upstream(body: Incoming, wait: Duration, upstream: &str) -> Result<Bytes, Error> {
    match tokio::time::timeout(wait, Limited::new(body, MAX_UPSTREAM_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(Error::new(
            Kind::UpstreamFailed,
            format!("The upstream '{upstream}' response could not be read completely."),
        )
        .code("upstream_error")
        .source(e)),
        Err(_) => Err(Error::new(Kind::UpstreamTimeout, format!("The upstream '{upstream}' did not finish in time."))
            .code("upstream_timeout")),
    }
}

/// The client's `x-request-id` when it is a sane token, else a new UUIDv7.
fn request_id(headers: &http::HeaderMap) -> Arc<str> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from(uuid::Uuid::now_v7().simple().to_string()))
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    text(status, "application/json", body)
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
