//! The whole life of a request, top to bottom:
//!
//! accept (`server.rs`) → [`handle`]: request id, route by path → authenticate (`auth.rs`) → parse and
//! validate (`api/`) into one [`ClientRequest`] — Chat Completions and Embeddings as they are, the
//! Completions, Messages and Responses APIs with the canonical form they translate to (a Responses
//! request's earlier turns looked up in the team's stored responses here) → [`model_request`],
//! whose stages a [`ModelCall`]
//! goes through (`call.rs`): resolve the model → *admit*: plugins `on-request` (`plugins.rs`:
//! continue, reroute, reject, or answer now) → *send*: the attempt loop, retrying on the next
//! target, with plugins `on-response-headers` seeing each upstream status (`route.rs`,
//! `providers/`) → *stream* (`stream.rs`) or *answer whole* → accounting, exactly once, which runs
//! plugins `on-complete` (`accounting.rs`). Errors from any stage become a response in one place,
//! `Error::into_response_as`, in the error shape of the endpoint's API.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tracing::Instrument;

use crate::api::{
    self, ChatRequest, ClientRequest, CompletionsRequest, EmbeddingsRequest, MessagesRequest, ModelRequest,
    PredictRequest, ResponsesRequest, Surfaced, models, predict, responses,
};
use crate::body::{self, Body, RequestBody};
use crate::call::{Admitted, Arrival, ModelCall};
use crate::error::{Error, Kind, Shape, Side};
use crate::metrics::HttpLabels;
use crate::{App, Gateway};

/// What a path and method ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Embeddings,
    Completions,
    Messages,
    CountTokens,
    Responses,
    /// `POST /v1/models/{model}:predict` or `:rawPredict`
    Predict,
    /// `GET` or `DELETE /v1/responses/{id}`
    StoredResponse,
    /// `GET /v1/responses/{id}/input_items`
    InputItems,
    /// `POST /v1/responses/{id}/cancel`
    CancelResponse,
    Models,
    Model,
    Health,
    Ready,
    Metrics,
    Reload,
    WrongMethod(Shape),
    Unknown,
}

impl Endpoint {
    fn of(method: &Method, path: &str) -> Self {
        let path = path.strip_suffix('/').unwrap_or(path);
        const POST: &[Method] = &[Method::POST];
        const GET: &[Method] = &[Method::GET];
        let (endpoint, allowed) = match path {
            "/v1/chat/completions" | "/chat/completions" => (Endpoint::Chat, POST),
            "/v1/embeddings" | "/embeddings" => (Endpoint::Embeddings, POST),
            "/v1/completions" | "/completions" => (Endpoint::Completions, POST),
            "/v1/messages" => (Endpoint::Messages, POST),
            "/v1/messages/count_tokens" => (Endpoint::CountTokens, POST),
            "/v1/responses" | "/responses" => (Endpoint::Responses, POST),
            "/v1/models" | "/models" => (Endpoint::Models, GET),
            "/healthz" => (Endpoint::Health, GET),
            "/readyz" => (Endpoint::Ready, GET),
            "/metrics" => (Endpoint::Metrics, GET),
            "/admin/reload" => (Endpoint::Reload, POST),
            p if predict::route(p).is_some() => (Endpoint::Predict, POST),
            p if p.starts_with("/v1/models/") => (Endpoint::Model, GET),
            p if p.starts_with("/v1/responses/") => match p.trim_start_matches("/v1/responses/").split_once('/') {
                None => (Endpoint::StoredResponse, &[Method::GET, Method::DELETE][..]),
                Some((_, "input_items")) => (Endpoint::InputItems, GET),
                Some((_, "cancel")) => (Endpoint::CancelResponse, POST),
                Some(_) => return Endpoint::Unknown,
            },
            _ => return Endpoint::Unknown,
        };
        if allowed.contains(method) || (*method == Method::HEAD && allowed.contains(&Method::GET)) {
            endpoint
        } else {
            Endpoint::WrongMethod(endpoint.shape())
        }
    }

    fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Completions => "completions",
            Endpoint::Predict => "predict",
            Endpoint::Messages | Endpoint::CountTokens => "messages",
            Endpoint::Responses | Endpoint::StoredResponse | Endpoint::InputItems | Endpoint::CancelResponse => {
                "responses"
            }
            Endpoint::Models | Endpoint::Model => "models",
            Endpoint::Health | Endpoint::Ready => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::Reload => "admin",
            Endpoint::WrongMethod(_) | Endpoint::Unknown => "other",
        }
    }

    /// The error format of the endpoint's API.
    fn shape(self) -> Shape {
        match self {
            Endpoint::Messages | Endpoint::CountTokens | Endpoint::WrongMethod(Shape::Anthropic) => Shape::Anthropic,
            _ => Shape::OpenAi,
        }
    }
}

/// Serves one HTTP request. Never fails: every error becomes an OpenAI-shaped response here.
pub async fn handle(gateway: Arc<Gateway>, request: Request<impl RequestBody>) -> Result<Response<Body>, Infallible> {
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
        error.into_response_as(endpoint.shape())
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
    request: Request<impl RequestBody>,
    endpoint: Endpoint,
    request_id: Arc<str>,
    started: Instant,
) -> Result<Response<Body>, Error> {
    match endpoint {
        Endpoint::Chat
        | Endpoint::Embeddings
        | Endpoint::Completions
        | Endpoint::Messages
        | Endpoint::Responses
        | Endpoint::Predict => {
            if gateway.is_draining() {
                return Err(Error::new(Kind::ShuttingDown, "The gateway is shutting down; retry on another replica.")
                    .code("shutting_down"));
            }
            let principal = app.auth.authenticate_request(&request)?;
            let (parts, incoming) = request.into_parts();
            let limit = app.config.server.max_body_bytes;
            let body = api::read_body(incoming, &parts.headers, limit, app.config.server.header_read_timeout).await?;
            let request = match endpoint {
                Endpoint::Chat => ClientRequest::Canonical(ModelRequest::Chat(ChatRequest::parse(&body)?)),
                Endpoint::Embeddings => {
                    ClientRequest::Canonical(ModelRequest::Embeddings(EmbeddingsRequest::parse(&body)?))
                }
                Endpoint::Completions => ClientRequest::Completions(Surfaced::new(CompletionsRequest::parse(&body)?)),
                Endpoint::Messages => {
                    ClientRequest::Messages(Surfaced::new(MessagesRequest::parse(&body, &parts.headers)?))
                }
                Endpoint::Predict => {
                    let path = parts.uri.path();
                    let (model, verb) = predict::route(path.strip_suffix('/').unwrap_or(path))
                        .ok_or_else(|| Error::internal("a prediction path that does not parse"))?;
                    ClientRequest::Predict(PredictRequest::parse(model, verb, body.clone(), &parts.headers)?)
                }
                _ => {
                    let mut responses = ResponsesRequest::parse(&body)?;
                    // The conversation this one continues, from the team's stored responses.
                    if let Some(id) = &responses.previous_response_id {
                        let Some(previous) = app.responses.get(&principal.team, id).await.map_err(state_unavailable)?
                        else {
                            return Err(previous_not_found(id));
                        };
                        responses.history = previous.conversation();
                    }
                    ClientRequest::Responses(Surfaced::new(responses))
                }
            };
            let arrival = Arrival { request_id, principal, started, headers: parts.headers, body };
            model_request(app, request, arrival).await
        }
        Endpoint::CountTokens => {
            app.auth.authenticate_request(&request)?;
            let (parts, incoming) = request.into_parts();
            let limit = app.config.server.max_body_bytes;
            let body = api::read_body(incoming, &parts.headers, limit, app.config.server.header_read_timeout).await?;
            count_tokens(app, MessagesRequest::parse_count(&body, &parts.headers)?).await
        }
        Endpoint::StoredResponse | Endpoint::InputItems | Endpoint::CancelResponse => {
            let principal = app.auth.authenticate_request(&request)?;
            stored_response(app, endpoint, request.method(), request.uri(), &principal.team).await
        }
        Endpoint::Models => {
            app.auth.authenticate_request(&request)?;
            Ok(json(StatusCode::OK, models::list(app.routes.names())))
        }
        Endpoint::Model => {
            app.auth.authenticate_request(&request)?;
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
            let principal = app.auth.authenticate_request(&request)?;
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
        Endpoint::WrongMethod(_) => Err(Error::new(
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
async fn model_request(app: &Arc<App>, request: ClientRequest, arrival: Arrival) -> Result<Response<Body>, Error> {
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

/// `POST /v1/messages/count_tokens`: counted by the model's first target where it is Anthropic
/// (relayed as it is), else the gateway's own estimate (about four bytes of text per token).
async fn count_tokens(app: &Arc<App>, request: MessagesRequest) -> Result<Response<Body>, Error> {
    let route = app.routes.resolve(&request.model)?;
    let target = &route.targets[0];
    let model = target.upstream_model(&request.model).to_owned();
    let request = ClientRequest::Messages(Surfaced::new(request));
    if let Some(upstream_request) = target.upstream.count_tokens_request(&request, &model) {
        let wait = target.upstream.timeouts.first_byte;
        let response = target.upstream.send(upstream_request?, wait).await?;
        if !response.status().is_success() {
            return Err(target.upstream.error_from(response, wait).await);
        }
        let (parts, body) = response.into_parts();
        let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, 1 << 20))
            .await
            .map_err(|_| {
                Error::new(Kind::UpstreamFailed, "The upstream's token count could not be read.").code("upstream_error")
            })?
            .to_bytes();
        let mut out = json(parts.status, body.to_vec());
        if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
            out.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
        }
        return Ok(out);
    }
    let ClientRequest::Messages(s) = &request else { return Err(Error::internal("not a Messages request")) };
    let body = serde_json::json!({"input_tokens": s.request.estimate_tokens()});
    Ok(json(StatusCode::OK, body.to_string().into_bytes()))
}

fn previous_not_found(id: &str) -> Error {
    Error::new(Kind::NotFound, format!("Previous response with id '{id}' not found."))
        .param("previous_response_id")
        .code("previous_response_not_found")
}

/// Redis did not answer for a stored response, under `on_unavailable = "fail"`: the response may
/// exist, so not a 404 but a 503 to retry.
fn state_unavailable(unavailable: crate::state::Unavailable) -> Error {
    Error::new(Kind::StateUnavailable, "The gateway's stored responses are unavailable for a moment; retry shortly.")
        .code("state_unavailable")
        .retry_after(Some(1))
        .source(unavailable)
}

/// `GET` / `DELETE /v1/responses/{id}`, `GET …/input_items`, `POST …/cancel`: the team's own
/// stored responses; any other id (another team's included) is a 404.
async fn stored_response(
    app: &Arc<App>,
    endpoint: Endpoint,
    method: &Method,
    uri: &http::Uri,
    team: &str,
) -> Result<Response<Body>, Error> {
    let rest = uri.path().trim_start_matches("/v1/responses/").trim_end_matches('/');
    let id = rest.split('/').next().unwrap_or_default();
    let not_found = || {
        Error::new(Kind::NotFound, format!("No response found with id '{id}'.")).param("response_id").code("not_found")
    };
    if endpoint == Endpoint::StoredResponse && method == Method::DELETE {
        if !app.responses.delete(team, id).await.map_err(state_unavailable)? {
            return Err(not_found());
        }
        let body = serde_json::json!({"id": id, "object": "response.deleted", "deleted": true});
        return Ok(json(StatusCode::OK, body.to_string().into_bytes()));
    }
    let stored = app.responses.get(team, id).await.map_err(state_unavailable)?.ok_or_else(not_found)?;
    match endpoint {
        Endpoint::CancelResponse => Err(Error::bad_request(
            "Only background responses can be cancelled, and this gateway runs none in the background.",
        )
        .param("response_id")
        .code("invalid_request")),
        Endpoint::InputItems => {
            let query: Vec<(String, String)> =
                url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
            let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            let limit = match param("limit").map(str::parse::<usize>) {
                None => 20,
                Some(Ok(n)) if (1..=100).contains(&n) => n,
                Some(_) => {
                    return Err(Error::bad_request("'limit' must be between 1 and 100.")
                        .param("limit")
                        .code("invalid_value"));
                }
            };
            let mut items = responses::listed_items(stored.input.get(stored.own_from..).unwrap_or_default());
            if param("order") != Some("asc") {
                items.reverse();
            }
            if let Some(after) = param("after") {
                let skip = items.iter().position(|i| i.get("id").and_then(serde_json::Value::as_str) == Some(after));
                items.drain(..skip.map_or(0, |n| n + 1));
            }
            let has_more = items.len() > limit;
            items.truncate(limit);
            let id_of = |i: Option<&serde_json::Value>| i.and_then(|i| i.get("id")).cloned().unwrap_or_default();
            let body = serde_json::json!({
                "object": "list", "first_id": id_of(items.first()), "last_id": id_of(items.last()),
                "has_more": has_more, "data": items,
            });
            Ok(json(StatusCode::OK, body.to_string().into_bytes()))
        }
        _ => Ok(json(StatusCode::OK, serde_json::to_vec(&stored.response).unwrap_or_default())),
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
