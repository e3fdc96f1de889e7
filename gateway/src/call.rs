//! The model request in flight: one value that carries what was asked (the parsed request), who
//! asked, where it may go (its route), its plugin chain and its accounting guard through the stages
//! — admit, send, then answer whole or stream — the way pingora's proxy phases share one context.
//! `pipeline.rs` calls the stages in order; each stage records its own failure in accounting before
//! it returns the error, so the pipeline only has to pass errors on. A mirrored copy (a plugin's
//! `request.mirror`) is another `ModelCall` through the same stages. A stream that has to be
//! opened again on another target (it failed before its first content, or broke off mid-answer)
//! comes back to its `ModelCall` for it (`call/resume.rs`).

mod resume;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::IgnoredAny;

use crate::App;
use crate::accounting::{Accounting, Outcome};
use crate::api::{ClientRequest, ModelRequest, Surface};
use crate::auth::Principal;
use crate::body::{self, Body};
use crate::capture::{Payload, Record};
use crate::error::{Error, Kind};
use crate::metrics::UpstreamErrorLabels;
use crate::plugins::police::Policing;
use crate::plugins::view::RequestView;
use crate::plugins::{Admission, ApiKind, Chain, HookSet, LocalResponse, RequestInfo};
use crate::route::{self, AttemptEvent, Exchange, ModelRoute, RouteTarget};
use crate::stream::{RelayOptions, SseRelay};
use crate::surface::{self, Edge, Sink};
use resume::Resumption;

/// The largest non-streamed upstream response the gateway will buffer.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// Who sent a request and how it arrived: what `ModelCall::new` needs besides the parsed request.
#[derive(Debug)]
pub struct Arrival {
    pub request_id: Arc<str>,
    pub principal: Arc<Principal>,
    pub started: Instant,
    /// The client's headers (plugins see those they declared).
    pub headers: HeaderMap,
    /// The body as received (plugins that declare `needs-body` read it; the digest is taken of it).
    pub body: Bytes,
}

/// One model request between its arrival and its answer.
#[derive(Debug)]
pub struct ModelCall {
    app: Arc<App>,
    request: Arc<ClientRequest>,
    request_id: Arc<str>,
    principal: Arc<Principal>,
    route: Arc<ModelRoute>,
    chain: Arc<Chain>,
    /// The request as plugins see it; `None` when the chain is empty.
    view: Option<Arc<RequestView>>,
    acct: Accounting,
    /// A shadow copy of a client's request: no `on-request` or `on-response-headers`, and its
    /// answer is read to the end and thrown away.
    mirrored: bool,
    /// Upstream attempts so far, and when and where the last one was sent.
    attempts: u32,
    last_sent: Instant,
    last_target: Option<Arc<str>>,
    /// While a broken-off stream is being continued: what the targets are asked to continue.
    resumption: Option<Box<Resumption>>,
}

/// What admission decided.
#[derive(Debug)]
pub enum Admitted {
    /// Go on to an upstream (boxed: a call is large, and an answer is not).
    Continue(Box<ModelCall>),
    /// A plugin answered (a cache hit, say); nothing is sent upstream.
    Answered(Response<Body>),
}

/// A model call whose upstream has answered with a success status.
#[derive(Debug)]
pub struct Sent {
    call: ModelCall,
    upstream: Response<Incoming>,
    target: Arc<RouteTarget>,
}

impl ModelCall {
    /// Resolves the public model to its route and chain, and starts accounting.
    pub fn new(app: &Arc<App>, request: ClientRequest, arrival: Arrival) -> Result<Self, Error> {
        let route = app.routes.resolve(request.model())?;
        let chain = app.plugins.chain_for(request.model()).clone();
        let view = (!chain.is_empty()).then(|| plugin_view(&request, &arrival, &chain));
        let mut acct = Accounting::start(
            app.metrics.clone(),
            arrival.request_id.clone(),
            arrival.principal.clone(),
            request.operation(),
            request.surface(),
            route.label.clone(),
            arrival.started,
        );
        if let Some(view) = &view {
            acct.with_plugins(chain.clone(), view.clone());
        }
        Ok(Self {
            app: app.clone(),
            request: Arc::new(request),
            request_id: arrival.request_id,
            principal: arrival.principal,
            route,
            chain,
            view,
            acct,
            mirrored: false,
            attempts: 0,
            last_sent: Instant::now(),
            last_target: None,
            resumption: None,
        })
    }

    /// The view plugins have of this request, for the headers they add to its response.
    pub fn view(&self) -> Option<Arc<RequestView>> {
        self.view.clone()
    }

    /// Stage *admit*: plugins' `on-request`, before routing. They let the request go on (perhaps to
    /// other targets), answer it themselves, or reject it.
    pub async fn admit(mut self) -> Result<Admitted, Error> {
        let Some(view) = self.view.clone().filter(|_| self.chain.wants(HookSet::ON_REQUEST)) else {
            return Ok(Admitted::Continue(Box::new(self)));
        };
        // A plugin's rewrite, validated as the client's request was; the last valid one is the
        // request from here on.
        let mut rewritten: Option<ClientRequest> = None;
        let limit = self.app.config.server.max_body_bytes;
        let mut rewrite = |body: Bytes| -> Result<RequestInfo, String> {
            if body.len() > limit {
                return Err(format!("{} bytes, over the gateway's max_body_bytes of {limit}", body.len()));
            }
            let current = rewritten.as_ref().unwrap_or(&self.request);
            let next = current.reparse(&body).map_err(|e| match &e.param {
                Some(param) if !e.message.contains(&**param) => format!("{param}: {}", e.message),
                _ => e.message.to_string(),
            })?;
            let info = request_info(&next, &self.request_id, &self.principal, body.len());
            rewritten = Some(next);
            Ok(info)
        };
        let admission = self.chain.on_request(&view, &self.app.routes, &mut rewrite).await;
        if let Some(request) = rewritten {
            self.request = Arc::new(request);
        }
        match admission {
            Err(error) | Ok(Admission::Reject(error)) => {
                self.acct.fail(&error);
                Err(error)
            }
            Ok(Admission::Respond(local)) => {
                // Plugins answer in the canonical chat form; the client gets its own API's.
                let local = Edge::new(&self.request, false, self.sink()).local(local);
                self.acct.responded(local.status);
                self.acct.finish_now(Outcome::Ok).await;
                Ok(Admitted::Answered(local_response(local, self.request.stream().is_some())))
            }
            Ok(Admission::Continue { route: Some(to) }) => match self.app.routes.rerouted(&self.route, &to) {
                Some(rerouted) => {
                    self.route = rerouted;
                    Ok(Admitted::Continue(Box::new(self)))
                }
                None => {
                    let error = Error::internal(format!("plugin route {to:?} vanished"));
                    self.acct.fail(&error);
                    Err(error)
                }
            },
            Ok(Admission::Continue { route: None }) => Ok(Admitted::Continue(Box::new(self))),
        }
    }

    /// Sends the shadow copies plugins asked for in `on-request`, each in the background through
    /// the same stages, accounted on its own as `mirrored`.
    pub fn mirror(&self) {
        let Some(view) = &self.view else { return };
        for label in view.take_mirrors() {
            let Some(target) = self.app.routes.target(&label) else { continue };
            let mirror_view = Arc::new(view.for_mirror());
            let mut acct = Accounting::start(
                self.app.metrics.clone(),
                self.request_id.clone(),
                self.principal.clone(),
                self.request.operation(),
                self.request.surface(),
                self.route.label.clone(),
                Instant::now(),
            );
            acct.mirrored();
            acct.with_plugins(self.chain.clone(), mirror_view.clone());
            let copy = ModelCall {
                app: self.app.clone(),
                request: self.request.clone(),
                request_id: self.request_id.clone(),
                principal: self.principal.clone(),
                route: Arc::new(ModelRoute::single(self.route.label.clone(), target)),
                chain: self.chain.clone(),
                view: Some(mirror_view),
                acct,
                mirrored: true,
                attempts: 0,
                last_sent: Instant::now(),
                last_target: None,
                resumption: None,
            };
            tokio::spawn(copy.drain());
        }
    }

    /// A mirrored copy's whole life after admission: sent, its answer read and dropped.
    async fn drain(self) {
        // Failures are accounted by the stage that met them.
        let Ok(sent) = self.send().await else { return };
        if sent.streams() {
            let _ = sent.stream().into_body().collect().await;
        } else {
            let _ = sent.answer_whole().await;
        }
    }

    /// Stage *send*: the route's targets in turn (`route.rs`), until one answers.
    pub async fn send(mut self) -> Result<Sent, Error> {
        let (route, app) = (self.route.clone(), self.app.clone());
        let deadline = self.deadline();
        match route::send(&route, &app.metrics, deadline, &mut self).await {
            Ok((upstream, target)) => {
                self.acct.responded(upstream.status().as_u16());
                Ok(Sent { call: self, upstream, target })
            }
            Err(error) => {
                self.acct.fail(&error);
                Err(error)
            }
        }
    }

    /// When the whole exchange, stream included, must be over.
    fn deadline(&self) -> Instant {
        self.acct.started() + self.route.targets[0].upstream.timeouts.total
    }

    /// Whether the answer is a stream that plugins police event by event (`on-stream-event`).
    fn polices_stream(&self) -> bool {
        !self.mirrored
            && self.view.is_some()
            && self.request.stream().is_some()
            && self.chain.wants(HookSet::ON_STREAM_EVENT)
    }

    /// Where a Responses answer is stored: the client's own request only, in its team's scope.
    fn sink(&self) -> Option<Sink> {
        if self.mirrored {
            return None;
        }
        Sink::for_request(&self.request, &self.app.responses, &self.principal.team)
    }
}

impl Exchange for ModelCall {
    fn build(&self, target: &RouteTarget) -> Result<Request<Bytes>, Error> {
        let model = target.upstream_model(self.request.model());
        match &self.resumption {
            // A continuation is spliced as canonical chunks after what the client has, so every
            // target is asked in the canonical form, whichever API it speaks.
            Some(resumption) => {
                let continued = resumption.request_for(&self.request, target)?;
                target.upstream.request_from(&self.request, &continued, model)
            }
            // Stream plugins read canonical chunks: an upstream that speaks the client's API is
            // asked in the canonical form, so that every event can be policed.
            None if self.polices_stream() => {
                target.upstream.request_from(&self.request, self.request.canonical()?, model)
            }
            None => target.upstream.request(&self.request, model),
        }
    }

    fn streams(&self) -> bool {
        self.request.stream().is_some()
    }

    fn attempted(&mut self, target: &RouteTarget, event: AttemptEvent) {
        match event {
            AttemptEvent::Started => {
                self.attempts += 1;
                self.last_sent = Instant::now();
                self.last_target = Some(target.label.clone());
                self.acct.attempt_started(&target.label);
            }
            AttemptEvent::Finished { status, latency } => self.acct.attempt_finished(status, latency),
        }
    }

    async fn on_response_headers(&mut self, status: StatusCode) -> Result<Option<Arc<RouteTarget>>, Error> {
        let Some(view) =
            self.view.as_ref().filter(|_| !self.mirrored && self.chain.wants(HookSet::ON_RESPONSE_HEADERS))
        else {
            return Ok(None);
        };
        let Some(label) = self.chain.on_response_headers(view, status.as_u16()).await? else { return Ok(None) };
        let target = self.app.routes.target(&label);
        if target.is_none() {
            tracing::warn!(target = %label, "a plugin asked to retry on an unknown target; ignored");
        }
        Ok(target)
    }
}

impl Sent {
    /// Whether the client asked for a stream.
    pub fn streams(&self) -> bool {
        self.call.request.stream().is_some()
    }

    /// Whether the serving upstream speaks the client's API, so its answer is relayed as it is.
    fn native(&self) -> bool {
        self.target.upstream.native(self.call.request.surface(), self.target.upstream_model(self.call.request.model()))
    }

    /// Stage *stream*: the upstream's events relayed as they come (`stream.rs`), translated first
    /// for providers with their own format, and given to the client in its API (`surface.rs`);
    /// accounting finishes when the stream does. The call goes with the relay, which comes back to
    /// it for another target if it must.
    pub fn stream(self) -> Response<Body> {
        let Sent { call, upstream, target } = self;
        let options = RelayOptions {
            client_wants_usage: call.request.stream() == Some(true) && !call.mirrored,
            deadline: call.deadline(),
            choices: choices(&call.request),
            max_attempts: call.route.retry.max_attempts,
            failover: call.route.failover,
            prompt_estimate: u64::from(call.request.facts().prompt_tokens_estimate),
        };
        let opened = call.opened(upstream, &target, None);
        let police = call.view.as_ref().filter(|_| call.polices_stream()).and_then(|v| Policing::of(&call.chain, v));
        let relay = SseRelay::new(opened, Box::new(call), options).policed_by(police);
        // Events that arrive together go out in one write (`body::Coalesce`).
        let mut response = Response::new(BodyExt::boxed_unsync(crate::body::Coalesce::new(relay)));
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }

    /// Stage *answer whole*: the body read within the deadline, turned into OpenAI's shape and then
    /// the client's API (or relayed as it is), its usage accounted and plugins' `on-complete` run
    /// before it goes out (so a header they add, a cost say, still reaches the client).
    pub async fn answer_whole(self) -> Result<Response<Body>, Error> {
        if matches!(&*self.call.request, ClientRequest::Predict(_)) {
            return self.answer_prediction().await;
        }
        let deadline = self.call.deadline();
        let native = self.native();
        let sink = self.call.sink();
        let Sent { call, upstream, target } = self;
        let ModelCall { app, request, mut acct, view, chain, mirrored, .. } = call;
        // Plugins that see a whole answer before it goes out: the edge reads its canonical form
        // first and stores nothing until they are done with it.
        let on_response = view.filter(|_| !mirrored && chain.wants(HookSet::ON_RESPONSE));
        let (mut edge, sink) = match on_response {
            Some(_) => (Edge::new(&request, native, None), sink),
            None => (Edge::new(&request, native, sink), None),
        };
        let status = upstream.status();
        let content_type =
            upstream.headers().get(header::CONTENT_TYPE).cloned().filter(|_| native || !target.upstream.translates());
        let model = target.upstream_model(request.model());
        let wait = deadline.saturating_duration_since(Instant::now());
        let name = &target.upstream.name;
        let mut answer = Bytes::new();
        let whole = match read_upstream(upstream.into_body(), wait, name).await {
            // Bedrock and Gemini answers become OpenAI's shape; OpenAI-compatible ones and native
            // ones pass unchanged, once they are known to be a JSON object at all; then the edge
            // gives the client its API's answer.
            Ok(body) => target.upstream.response(request.operation(), model, body, native).and_then(|body| {
                if !is_json_object(&body) {
                    return Err(malformed_answer(name));
                }
                answer = body.clone();
                edge.whole(name, body, acct.captures() || on_response.is_some())
            }),
            Err(error) => Err(error),
        };
        // A stored answer goes out once the store has it (at most `[state.redis] timeout`).
        if let Some(stored) = edge.take_stored() {
            stored.await;
        }
        let mut whole = match whole {
            Ok(whole) => whole,
            Err(error) => return Err(failed_after_success(&app, &target, &mut acct, error)),
        };
        if let Some(view) = &on_response {
            let canonical = whole.canonical.clone().unwrap_or_default();
            let valid = |body: &[u8]| surface::invalid_replacement(&request, body).map_or(Ok(()), Err);
            let (replaced, body) = match chain.on_response(view, canonical.clone(), &valid).await {
                Ok(Some(replacement)) => (true, surface::with_usage_of(&replacement, &canonical)),
                Ok(None) => (false, answer),
                Err(refusal) => {
                    // The upstream's tokens were spent all the same.
                    if let Some(usage) = whole.usage {
                        acct.usage(usage);
                    }
                    acct.fail(&refusal);
                    return Err(refusal);
                }
            };
            // The answer as the client gets it, stored (Responses) as it is sent; a replacement
            // is canonical whatever the upstream spoke.
            let mut edge = Edge::new(&request, native && !replaced, sink);
            let usage = whole.usage;
            whole = match edge.whole(name, body, true) {
                Ok(again) => again,
                Err(error) => return Err(failed_after_success(&app, &target, &mut acct, error)),
            };
            if let Some(stored) = edge.take_stored() {
                stored.await;
            }
            whole.usage = usage;
        }
        if let Some(usage) = whole.usage {
            acct.usage(usage);
        }
        if let Some(canonical) = &whole.canonical {
            acct.capture(canonical);
        }
        acct.finish_now(Outcome::Ok).await;
        let mut response = Response::new(body::full(whole.body));
        *response.status_mut() = status;
        let content_type = content_type.filter(|_| whole.passed_through);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")));
        Ok(response)
    }
}

impl Sent {
    /// *Answer whole* for a prediction: the body read within the deadline, given the gateway's
    /// `:predict` shape (or relayed as it came for `:rawPredict`), the instances counted, and what
    /// served it named in `x-weir-deployed-model`.
    async fn answer_prediction(self) -> Result<Response<Body>, Error> {
        let deadline = self.call.deadline();
        let Sent { call, upstream, target } = self;
        let ModelCall { app, request, mut acct, request_id, principal, route, mirrored, .. } = call;
        let ClientRequest::Predict(prediction) = &*request else {
            return Err(Error::internal("not a prediction"));
        };
        let (parts, body) = upstream.into_parts();
        let wait = deadline.saturating_duration_since(Instant::now());
        let answer = match read_upstream(body, wait, &target.upstream.name).await {
            Ok(body) => target.upstream.predict_response(prediction, &parts.headers, body),
            Err(error) => Err(error),
        };
        let (body, content_type, deployed) = match answer {
            Ok(answer) => answer,
            Err(error) => return Err(failed_after_success(&app, &target, &mut acct, error)),
        };
        acct.predicted(prediction.instances(), deployed.as_deref());
        if let Some(capture) = &app.capture {
            let percent = app.config.models.iter().find(|m| *m.name == *route.label).map_or(0.0, |m| m.capture_percent);
            if capture.sampled(percent, &principal.team) {
                let limit = capture.max_payload();
                // What the upstream was sent (encoding it already succeeded once, for the request).
                let request = match prediction.upstream_body() {
                    Ok((sent, kind)) => Payload::of(&sent, kind.to_str().unwrap_or_default(), limit),
                    Err(_) => Payload::Omitted { content_type: String::new(), bytes: 0 },
                };
                let response = Payload::of(&body, content_type.to_str().unwrap_or_default(), limit);
                capture.offer(&Record {
                    ts_ms: crate::api::unix_now_ms(),
                    request_id: &request_id,
                    model: &route.label,
                    target: &target.label,
                    deployed: deployed.as_deref(),
                    team: &principal.team,
                    latency_ms: acct.started().elapsed().as_millis() as u64,
                    status: parts.status.as_u16(),
                    instances: prediction.instances(),
                    mirrored,
                    truncated: request.omitted() || response.omitted(),
                    request,
                    response,
                });
            }
        }
        acct.capture(&body);
        acct.finish_now(Outcome::Ok).await;
        let mut response = Response::new(body::full(body));
        *response.status_mut() = parts.status;
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
        if let Some(value) = deployed.and_then(|d| HeaderValue::from_str(&d).ok()) {
            response.headers_mut().insert("x-weir-deployed-model", value);
        }
        Ok(response)
    }
}

/// A failure after a success status: the upstream's too, as one before it would be.
fn failed_after_success(app: &App, target: &RouteTarget, acct: &mut Accounting, error: Error) -> Error {
    app.metrics
        .upstream_errors
        .get_or_create(&UpstreamErrorLabels { target: target.label.clone(), class: route::error_class(&error) })
        .inc();
    acct.fail(&error);
    error
}

/// The choices a request asks for (`n` of a chat or a legacy completion; Messages and Responses
/// have one answer per request).
fn choices(request: &ClientRequest) -> usize {
    let n = match request {
        ClientRequest::Canonical(ModelRequest::Chat(chat)) => chat.param("n"),
        ClientRequest::Completions(s) => s.request.param("n"),
        _ => None,
    };
    n.and_then(serde_json::Value::as_u64).map_or(1, |n| usize::try_from(n).unwrap_or(1))
}

/// The view plugins get of a request. The client's API key never reaches a plugin, whichever
/// header carried it.
fn plugin_view(request: &ClientRequest, arrival: &Arrival, chain: &Chain) -> Arc<RequestView> {
    let info = request_info(request, &arrival.request_id, &arrival.principal, arrival.body.len());
    let headers = if chain.needs_headers() {
        let mut headers = arrival.headers.clone();
        headers.remove(header::AUTHORIZATION);
        headers.remove(crate::auth::API_KEY);
        headers
    } else {
        HeaderMap::new()
    };
    Arc::new(RequestView::new(info, headers, arrival.body.clone()))
}

/// What plugins are told of a request (of a rewrite of it, too).
fn request_info(request: &ClientRequest, request_id: &str, principal: &Principal, body_len: usize) -> RequestInfo {
    let facts = request.facts();
    RequestInfo {
        request_id: request_id.to_owned(),
        api: match request.surface() {
            Surface::ChatCompletions => ApiKind::ChatCompletions,
            Surface::Embeddings => ApiKind::Embeddings,
            Surface::Completions => ApiKind::Completions,
            Surface::Messages => ApiKind::Messages,
            Surface::Responses => ApiKind::Responses,
            Surface::Predict => ApiKind::Predict,
        },
        model: request.model().to_owned(),
        stream: request.stream().is_some(),
        max_tokens: facts.max_tokens,
        temperature: facts.temperature,
        prompt_tokens_estimate: facts.prompt_tokens_estimate,
        body_len: u32::try_from(body_len).unwrap_or(u32::MAX),
        instances: match request {
            ClientRequest::Predict(prediction) => u32::try_from(prediction.instances()).unwrap_or(u32::MAX),
            _ => 0,
        },
        key_name: principal.key_name.clone(),
        team: principal.team.clone(),
        end_user: facts.end_user,
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

/// Whether a whole answer is a JSON object at all: an HTML error page from a proxy or a truncated
/// body is not, and no client could read it as an answer in any API. Its usage is read by the edge
/// (`surface.rs`), in the answer's own API; a body that is not an answer guesses none, deliberately:
/// nothing was served.
fn is_json_object(body: &[u8]) -> bool {
    body.trim_ascii_start().first() == Some(&b'{') && serde_json::from_slice::<IgnoredAny>(body).is_ok()
}

/// The error for a success status whose body is not an answer.
fn malformed_answer(upstream: &str) -> Error {
    Error::new(
        Kind::UpstreamFailed,
        format!("The upstream '{upstream}' answered with a success status but a body that is not a JSON answer."),
    )
    .code("upstream_error")
}
