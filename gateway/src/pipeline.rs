//! The whole life of a request, top to bottom:
//!
//! accept (`server.rs`) → [`handle`]: request id, route by path → authenticate (`auth.rs`) → parse and
//! validate (`api/`) → resolve the model → plugins `on-request` (`plugins.rs`: continue, reroute,
//! reject, or answer now) → send, retrying on the next target, with plugins `on-response-headers`
//! seeing each upstream status (`route.rs`, `providers/`) → stream or relay the answer back
//! (`stream.rs`) → accounting, exactly once, which runs plugins `on-complete` (`accounting.rs`).
//! Errors from any stage become a response in one place, `Error::into_response`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tracing::Instrument;

use crate::accounting::{Accounting, Outcome};
use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::api::{self, Facts, Usage, models};
use crate::auth::Principal;
use crate::body::{self, Body};
use crate::error::{Error, Kind, Side};
use crate::metrics::HttpLabels;
use crate::plugins::view::RequestView;
use crate::plugins::{Admission, ApiKind, Attempt, Chain, HookSet, LocalResponse, RequestInfo};
use crate::providers::Operation;
use crate::route::{AttemptEvent, ModelRoute, RouteTarget};
use crate::stream::{RelayOptions, SseRelay};
use crate::{App, Gateway};

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
            let ctx = Ctx { app, request_id, principal, started, headers: parts.headers, body: body.clone() };
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
        Endpoint::Ready if gateway.is_draining() => {
            Ok(text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n"))
        }
        Endpoint::Ready => Ok(text(StatusCode::OK, "text/plain", "ready\n")),
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

/// What every stage of one model request shares.
struct Ctx<'a> {
    app: &'a Arc<App>,
    request_id: Arc<str>,
    principal: Arc<Principal>,
    started: Instant,
    headers: HeaderMap,
    body: Bytes,
}

async fn chat(ctx: &Ctx<'_>, chat: &ChatRequest) -> Result<Response<Body>, Error> {
    let stream = chat.is_stream().then_some(chat.client_wants_usage());
    let facts = chat.facts();
    model_request(ctx, Operation::Chat, &chat.model, stream, facts, |model| chat.upstream_body(model)).await
}

async fn embeddings(ctx: &Ctx<'_>, request: &EmbeddingsRequest) -> Result<Response<Body>, Error> {
    let facts = request.facts();
    model_request(ctx, Operation::Embeddings, &request.model, None, facts, |model| request.upstream_body(model)).await
}

/// The view plugins get of this request, built only when a chain will use it.
fn plugin_view(
    ctx: &Ctx<'_>,
    operation: Operation,
    model: &str,
    stream: bool,
    facts: Facts,
    chain: &Chain,
) -> Arc<RequestView> {
    let info = RequestInfo {
        request_id: ctx.request_id.to_string(),
        api: match operation {
            Operation::Chat => ApiKind::ChatCompletions,
            Operation::Embeddings => ApiKind::Embeddings,
        },
        model: model.to_owned(),
        stream,
        max_tokens: facts.max_tokens,
        temperature: facts.temperature,
        prompt_tokens_estimate: facts.prompt_tokens_estimate,
        body_len: u32::try_from(ctx.body.len()).unwrap_or(u32::MAX),
        key_name: ctx.principal.key_name.clone(),
        team: ctx.principal.team.clone(),
        end_user: facts.end_user,
    };
    let headers = if chain.needs_headers() { ctx.headers.clone() } else { HeaderMap::new() };
    Arc::new(RequestView::new(info, headers, ctx.body.clone()))
}

/// Route → plugins → provider → relay → accounting, for one parsed request. `stream` is `Some(client
/// wants usage)` for a streamed chat; `body_for` encodes the request for an upstream model name.
async fn model_request(
    ctx: &Ctx<'_>,
    operation: Operation,
    requested_model: &str,
    stream: Option<bool>,
    facts: Facts,
    body_for: impl Fn(&str) -> Result<Vec<u8>, Error>,
) -> Result<Response<Body>, Error> {
    let app = ctx.app;
    let mut route = app.router.resolve(requested_model)?;
    let chain = app.plugins.chain_for(requested_model).clone();
    let view =
        (!chain.is_empty()).then(|| plugin_view(ctx, operation, requested_model, stream.is_some(), facts, &chain));
    let mut acct = Accounting::start(
        app.metrics.clone(),
        ctx.request_id.clone(),
        ctx.principal.clone(),
        operation.label(),
        route.label.clone(),
        ctx.started,
    );
    if let Some(view) = &view {
        acct.plugins = Some((chain.clone(), view.clone()));
        acct.capture = chain.needs_response().then(Vec::new);
    }
    let result =
        relay(ctx, operation, requested_model, stream, body_for, &mut route, view.as_ref(), &chain, acct).await;
    // Headers plugins added reach the client on success and on failure alike.
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

#[expect(clippy::too_many_arguments, reason = "one call site; the stages' inputs, named")]
async fn relay(
    ctx: &Ctx<'_>,
    operation: Operation,
    requested_model: &str,
    stream: Option<bool>,
    body_for: impl Fn(&str) -> Result<Vec<u8>, Error>,
    route: &mut Arc<ModelRoute>,
    view: Option<&Arc<RequestView>>,
    chain: &Arc<Chain>,
    mut acct: Accounting,
) -> Result<Response<Body>, Error> {
    let app = ctx.app;
    let fail = |mut acct: Accounting, error: Error| {
        acct.status = error.http_status().as_u16();
        acct.error_class = Some(error.kind.label());
        acct.finish(Outcome::Error);
        Err(error)
    };

    // Plugins, before routing.
    if let Some(view) = view.filter(|_| chain.wants(HookSet::ON_REQUEST)) {
        match chain.on_request(view, &app.router).await {
            Err(error) => return fail(acct, error),
            Ok(Admission::Reject(error)) => return fail(acct, error),
            Ok(Admission::Respond(local)) => {
                acct.status = local.status;
                acct.finish_now(Outcome::Ok).await;
                return Ok(local_response(local, stream.is_some()));
            }
            Ok(Admission::Continue { route: Some(to) }) => match app.router.rerouted(&route.label, &to) {
                Some(rerouted) => *route = rerouted,
                None => return fail(acct, Error::internal(format!("plugin route {to:?} vanished"))),
            },
            Ok(Admission::Continue { route: None }) => {}
        }
        for target in view.take_mirrors() {
            let Some(target) = app.router.target(&target).cloned() else { continue };
            let model = target.upstream_model(requested_model).to_owned();
            match body_for(&model) {
                Ok(body) => {
                    let mirror =
                        Mirror { app: app.clone(), operation, stream, target, model, body, chain: chain.clone() };
                    tokio::spawn(mirror.run(
                        ctx.request_id.clone(),
                        ctx.principal.clone(),
                        route.label.clone(),
                        view.clone(),
                    ));
                }
                Err(error) => tracing::debug!(%error, "could not build a mirrored request"),
            }
        }
    }

    let deadline = ctx.started + route.targets[0].upstream.timeouts.total;
    let response_hooks = view.filter(|_| chain.wants(HookSet::ON_RESPONSE_HEADERS)).map(|view| (&**chain, view));
    let keep_attempts = view.is_some();
    let sent = app
        .router
        .send(
            route,
            &app.metrics,
            deadline,
            |target, event| record_attempt(&mut acct, target, event, keep_attempts),
            response_hooks,
            |target| {
                let model = target.upstream_model(requested_model);
                target.upstream.request(operation, model, body_for(model)?)
            },
        )
        .await;
    let (response, target) = match sent {
        Ok(sent) => sent,
        Err(error) => return fail(acct, error),
    };
    let status = response.status();
    acct.status = status.as_u16();

    if let Some(client_wants_usage) = stream {
        let options = RelayOptions { client_wants_usage, idle: target.upstream.timeouts.idle, deadline };
        let translator = target.upstream.translator(target.upstream_model(requested_model));
        let relay = SseRelay::new(response.into_body(), translator, options, acct, target.upstream.name.clone());
        let mut response = Response::new(BodyExt::boxed_unsync(relay));
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        return Ok(response);
    }

    let content_type = response.headers().get(header::CONTENT_TYPE).cloned().filter(|_| !target.upstream.translates());
    let wait = deadline.saturating_duration_since(Instant::now());
    let body = match read_upstream(response.into_body(), wait, &target.upstream.name).await {
        Ok(body) => body,
        Err(error) => return fail(acct, error),
    };
    // Bedrock and Gemini answers become OpenAI's shape; OpenAI-compatible ones pass unchanged.
    let body = match target.upstream.response(operation, target.upstream_model(requested_model), body) {
        Ok(body) => body,
        Err(error) => return fail(acct, error),
    };
    acct.usage = serde_json::from_slice::<UsageOnly>(&body).ok().and_then(|u| u.usage);
    acct.capture(&body);
    // Plugins' `on-complete` runs before the body goes out, so a header it adds (a cost, say)
    // still reaches this client.
    acct.finish_now(Outcome::Ok).await;
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")));
    Ok(response)
}

/// Accounting's view of one attempt: the target being tried and, for plugins, how it went.
fn record_attempt(acct: &mut Accounting, target: &RouteTarget, event: AttemptEvent, keep: bool) {
    match event {
        AttemptEvent::Started => acct.target = target.label.clone(),
        AttemptEvent::Finished { status, latency } if keep => acct.attempts.push(Attempt {
            target: target.label.to_string(),
            status: status.unwrap_or(0),
            latency_ms: u32::try_from(latency.as_millis()).unwrap_or(u32::MAX),
        }),
        AttemptEvent::Finished { .. } => {}
    }
}

/// A shadow copy of a request that a plugin asked for (`request.mirror`): sent to one target in
/// the background, its answer read to the end and thrown away, accounted as `mirrored`.
struct Mirror {
    app: Arc<App>,
    operation: Operation,
    stream: Option<bool>,
    target: Arc<RouteTarget>,
    /// The model name the target knows, which `body` already carries.
    model: String,
    body: Vec<u8>,
    chain: Arc<Chain>,
}

impl Mirror {
    async fn run(self, request_id: Arc<str>, principal: Arc<Principal>, label: Arc<str>, view: Arc<RequestView>) {
        let app = &self.app;
        let mut acct = Accounting::start(
            app.metrics.clone(),
            request_id,
            principal,
            self.operation.label(),
            label,
            Instant::now(),
        );
        acct.mirrored = true;
        acct.plugins = Some((self.chain.clone(), Arc::new(view.for_mirror())));
        let route = ModelRoute { label: acct.model.clone(), targets: vec![self.target.clone()] };
        let deadline = acct.started + self.target.upstream.timeouts.total;
        let body = Bytes::from(self.body);
        let sent = app
            .router
            .send(
                &route,
                &app.metrics,
                deadline,
                |target, event| record_attempt(&mut acct, target, event, true),
                None,
                |target| target.upstream.request(self.operation, &self.model, body.to_vec()),
            )
            .await;
        let (response, target) = match sent {
            Ok(sent) => sent,
            Err(error) => {
                acct.status = error.http_status().as_u16();
                acct.error_class = Some(error.kind.label());
                return acct.finish(Outcome::Error);
            }
        };
        acct.status = response.status().as_u16();
        if self.stream.is_some() {
            let options = RelayOptions { client_wants_usage: false, idle: target.upstream.timeouts.idle, deadline };
            // Draining the relay runs accounting when the stream ends, as for a client.
            let translator = target.upstream.translator(&self.model);
            let relay = SseRelay::new(response.into_body(), translator, options, acct, target.upstream.name.clone());
            let _ = relay.collect().await;
            return;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let body = read_upstream(response.into_body(), wait, &target.upstream.name)
            .await
            .and_then(|body| target.upstream.response(self.operation, &self.model, body));
        match body {
            Ok(body) => {
                acct.usage = serde_json::from_slice::<UsageOnly>(&body).ok().and_then(|u| u.usage);
                acct.finish(Outcome::Ok);
            }
            Err(error) => {
                acct.error_class = Some(error.kind.label());
                acct.finish(Outcome::Error);
            }
        }
    }
}

/// A plugin's own answer (e.g. a cache hit).
fn local_response(local: LocalResponse, stream: bool) -> Response<Body> {
    let mut response = Response::new(body::full(local.body));
    *response.status_mut() = StatusCode::from_u16(local.status).unwrap_or(StatusCode::OK);
    let default_type = if stream { "text/event-stream" } else { "application/json" };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(default_type));
    for (name, value) in local.headers {
        if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            response.headers_mut().insert(name, value);
        }
    }
    response
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

/// The usage of a whole JSON answer.
#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<Usage>,
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
