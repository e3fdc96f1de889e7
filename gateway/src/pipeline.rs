//! The whole life of a request, top to bottom:
//!
//! accept (`server.rs`) → [`handle`]: request id, route by path → authenticate (`auth.rs`) → parse and
//! validate (`api/`) into one [`ModelRequest`] → [`model_request`], whose stages a [`ModelCall`]
//! goes through (`call.rs`): resolve the model → *admit*: plugins `on-request` (`plugins.rs`:
//! continue, reroute, reject, or answer now) → *send*: the attempt loop, retrying on the next
//! target, with plugins `on-response-headers` seeing each upstream status (`route.rs`,
//! `providers/`) → *stream* (`stream.rs`) or *answer whole* → accounting, exactly once, which runs
//! plugins `on-complete` (`accounting.rs`). Errors from any stage become a response in one place,
//! `Error::into_response`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::api::{self, ChatRequest, EmbeddingsRequest, ModelRequest, models};
use crate::body::{self, Body};
use crate::call::{Admitted, Arrival, ModelCall};
use crate::error::{Error, Kind, Side};
use crate::metrics::HttpLabels;
use crate::{App, Gateway};

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
    Reload,
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
            "/admin/reload" => (Endpoint::Reload, Method::POST),
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
            Endpoint::Reload => "admin",
            Endpoint::WrongMethod | Endpoint::Unknown => "other",
        }
    }
}

/// Serves one HTTP request. Never fails: every error becomes an OpenAI-shaped response here.
pub async fn handle(gateway: Arc<Gateway>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    // The app is taken once: a reload during this request does not change what serves it.
    let app = gateway.current();
    let request_id = request_id(request.headers());
    let endpoint = Endpoint::of(request.method(), request.uri().path());
    let span = tracing::info_span!("request", id = &*request_id);
    let result =
        dispatch(&gateway, &app, request, endpoint, request_id.clone(), started).instrument(span.clone()).await;
    let mut response = result.unwrap_or_else(|error| {
        // The one place errors are logged: a client's mistake is routine, anything else is worth a look.
        let _enter = span.enter();
        match error.side {
            Side::Client => tracing::debug!(status = error.http_status().as_u16(), error = %error, "request refused"),
            Side::Upstream => tracing::warn!(status = error.http_status().as_u16(), error = %error, "upstream failure"),
            Side::Plugin => tracing::warn!(status = error.http_status().as_u16(), error = %error, "plugin failure"),
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
    gateway: &Arc<Gateway>,
    app: &Arc<App>,
    request: Request<Incoming>,
    endpoint: Endpoint,
    request_id: Arc<str>,
    started: Instant,
) -> Result<Response<Body>, Error> {
    match endpoint {
        Endpoint::Chat | Endpoint::Embeddings => {
            if gateway.is_draining() {
                return Err(Error::new(Kind::ShuttingDown, "The gateway is shutting down; retry on another replica.")
                    .code("shutting_down"));
            }
            let principal = app.auth.authenticate(request.headers())?;
            let (parts, incoming) = request.into_parts();
            let limit = app.config.server.max_body_bytes;
            let body = api::read_body(incoming, &parts.headers, limit, app.config.server.header_read_timeout).await?;
            let request = if endpoint == Endpoint::Chat {
                ModelRequest::Chat(ChatRequest::parse(&body)?)
            } else {
                ModelRequest::Embeddings(EmbeddingsRequest::parse(&body)?)
            };
            let arrival = Arrival { request_id, principal, started, headers: parts.headers, body };
            model_request(app, request, arrival).await
        }
        Endpoint::Models => {
            app.auth.authenticate(request.headers())?;
            Ok(json(StatusCode::OK, models::list(app.routes.names())))
        }
        Endpoint::Model => {
            app.auth.authenticate(request.headers())?;
            let id = request.uri().path().trim_start_matches("/v1/models/");
            match app.routes.names().find(|n| *n == id) {
                Some(name) => Ok(json(StatusCode::OK, models::one(name))),
                None => Err(Error::new(Kind::NotFound, format!("The model `{id}` does not exist."))
                    .param("model")
                    .code("model_not_found")),
            }
        }
        Endpoint::Health => Ok(text(StatusCode::OK, "text/plain", "ok\n")),
        Endpoint::Ready if gateway.is_draining() => {
            Ok(text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n"))
        }
        Endpoint::Ready => Ok(match gateway.process.shared().map(|shared| shared.readiness()) {
            None => text(StatusCode::OK, "text/plain", "ready\n"),
            Some((true, state)) => text(StatusCode::OK, "text/plain", format!("ready\n{state}")),
            Some((false, state)) => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready\n{state}")),
        }),
        Endpoint::Metrics => {
            Ok(text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", app.metrics.render()))
        }
        Endpoint::Reload => {
            let principal = app.auth.authenticate(request.headers())?;
            let allowed = app.auth.is_open() || app.config.admin_keys.iter().any(|k| *k == principal.key_name);
            if !allowed {
                return Err(Error::new(Kind::Policy, "This key may not call admin endpoints.")
                    .status(StatusCode::FORBIDDEN)
                    .code("admin_only"));
            }
            match gateway.reload().await {
                Ok(()) => {
                    tracing::info!("configuration reloaded through /admin/reload");
                    Ok(json(StatusCode::OK, br#"{"reloaded":true}"#.to_vec()))
                }
                Err(reason) => {
                    tracing::error!(%reason, "reload rejected; the previous configuration keeps serving");
                    Err(Error::bad_request(format!(
                        "Reload rejected, the previous configuration keeps serving: {reason}"
                    ))
                    .code("invalid_config"))
                }
            }
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

/// The stages of one model request, in order (`call.rs` holds them). Each stage accounts for its
/// own failure; headers plugins added reach the client on success and on failure alike.
async fn model_request(app: &Arc<App>, request: ModelRequest, arrival: Arrival) -> Result<Response<Body>, Error> {
    let call = ModelCall::new(app, request, arrival)?;
    let view = call.view();
    let result = async {
        // Plugins, before routing: go on (perhaps elsewhere), or answer now (a cache hit, a limit).
        let call = match call.admit().await? {
            Admitted::Continue(call) => call,
            Admitted::Answered(response) => return Ok(response),
        };
        call.mirror();
        // The route's targets in turn, plugins seeing each upstream status.
        let sent = call.send().await?;
        // The answer: relayed event by event, or read, translated and sent whole.
        if sent.streams() { Ok(sent.stream()) } else { sent.answer_whole().await }
    }
    .await;
    let Some(view) = view else { return result };
    let added = view.take_response_headers();
    match result {
        Ok(mut response) => {
            for (name, value) in added {
                response.headers_mut().append(name, value);
            }
            Ok(response)
        }
        Err(mut error) => {
            error.headers.extend(added);
            Err(error)
        }
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
