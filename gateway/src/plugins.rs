//! Stage: plugins. The wasmtime host for policy plugins and the chain the pipeline runs them in:
//! `on-request` before routing, `on-response-headers` for each upstream answer, `on-complete` from
//! accounting. A plugin that traps, runs past its deadline or hits its memory cap is a *fault*: the
//! request goes on (`on_error = "open"`) or fails (`"closed"`), the fault is counted, and nothing
//! else is affected. A plugin's own decisions (reject, respond, route) are not faults.

mod bindings;
mod clock;
mod compat;
mod gate;
mod host;
mod instance;
mod output;
pub mod police;
mod quarantine;
pub mod scaffold;
pub mod view;
mod wasm;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use weir_config::{Config, OnError, Price};

pub use bindings::weir::plugin::hooks::{
    AnswerAction, Attempt, Completion, Decision, HookSet, LocalResponse, Rejection, ResponseAction,
};
pub use bindings::weir::plugin::types::{ApiKind, RequestInfo, Usage as PluginUsage};
use instance::LoadedPlugin;
pub use instance::{LoadProblem, PluginLoadError};
use view::RequestView;
pub use wasm::WasmEngine;

use crate::error::{Error, Kind};
use crate::metrics::Metrics;
use crate::route::table::RouteTable;
use crate::state::kv::Kv;
use crate::state::ledger::Ledger;
use crate::state::quota::Quota;

/// The largest local response a plugin may return.
const MAX_LOCAL_RESPONSE: usize = 16 << 20;

mod builtins {
    //! The table written by the build script: `plugins/<name>` and `plugins/examples/<name>`,
    //! compiled to components and included in the binary.
    include!(concat!(env!("OUT_DIR"), "/builtins.rs"));
}

/// A built-in plugin's component, by name (`source = "builtin:<name>"`).
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    builtins::BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// The names of the built-in plugins, for error messages.
pub fn builtin_names() -> Vec<&'static str> {
    builtins::BUILTINS.iter().map(|(n, _)| *n).collect()
}

/// Why `builtin:<name>` cannot be loaded, in words.
fn missing_builtin(name: &str) -> String {
    if builtins::BUILTINS_BUILT {
        format!("no built-in plugin {name:?}; built-in plugins: [{}]", builtin_names().join(", "))
    } else {
        "this weir was built without its built-in plugins (the wasm32-wasip2 target was missing): run `rustup target add wasm32-wasip2` and rebuild".to_owned()
    }
}

/// What plugins reach through host imports. Everything but the routes and prices outlives a
/// config reload, so limits, caches and the ledger carry on across swaps.
#[derive(Debug)]
pub struct Services {
    pub kv: Kv,
    pub quota: Arc<Quota>,
    pub ledger: Arc<Ledger>,
    pub metrics: Arc<Metrics>,
    pub routes: Arc<RouteTable>,
    pub prices: BTreeMap<String, Price>,
}

impl Services {
    /// The price of a target (`upstream/model`) or model: the config's `[prices]` by the exact
    /// name, then by the model part of a target, then Weir's defaults for the model.
    pub fn price(&self, name: &str) -> Option<Price> {
        if let Some(price) = self.prices.get(name) {
            return Some(*price);
        }
        let model = name.split_once('/').map_or(name, |(_, model)| model);
        self.prices.get(model).copied().or_else(|| weir_config::default_price(model))
    }
}

/// Which hook a call was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    OnRequest,
    OnResponseHeaders,
    OnResponse,
    OnStreamEvent,
    OnComplete,
}

impl Hook {
    pub fn label(self) -> &'static str {
        match self {
            Hook::OnRequest => "on_request",
            Hook::OnResponseHeaders => "on_response_headers",
            Hook::OnResponse => "on_response",
            Hook::OnStreamEvent => "on_stream_event",
            Hook::OnComplete => "on_complete",
        }
    }
}

/// How a plugin failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Trap,
    Deadline,
    Memory,
    Instantiate,
    /// It returned something the host cannot act on (an unknown target, a bad status, an
    /// oversized local response).
    BadDecision,
    /// Not a fault of its own: the plugin is quarantined after repeated faults, and its hook was
    /// skipped (counted in `weir_plugin_skipped`, not as a fault).
    Quarantined,
    /// A state call the shared state (Redis) did not answer, under `on_unavailable = "fail"`.
    StateUnavailable,
}

impl FaultKind {
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Deadline => "deadline",
            FaultKind::Memory => "memory",
            FaultKind::Instantiate => "instantiate",
            FaultKind::BadDecision => "bad_decision",
            FaultKind::Quarantined => "quarantined",
            FaultKind::StateUnavailable => "state_unavailable",
        }
    }
}

/// A plugin fault, with the plugin's name (counted and logged where it was found, by
/// `LoadedPlugin::fault`).
#[derive(Debug)]
pub struct Fault {
    pub plugin: Arc<str>,
    pub hook: Hook,
    pub kind: FaultKind,
    /// The cause, in one line.
    pub detail: String,
    pub on_error: OnError,
}

impl Fault {
    /// For a closed plugin, the error that fails the request; an open one's fault is passed over.
    fn resolve(self) -> Result<(), Error> {
        match (self.on_error, self.kind) {
            (OnError::Open, _) => Ok(()),
            (OnError::Closed, FaultKind::Quarantined) => Err(Error::new(
                Kind::PluginFault,
                format!(
                    "The policy plugin '{}' is quarantined after repeated faults ({}) and is configured to fail closed.",
                    self.plugin, self.detail
                ),
            )
            .code("plugin_quarantined")),
            (OnError::Closed, kind) => Err(Error::new(
                Kind::PluginFault,
                format!("The policy plugin '{}' failed ({}) and is configured to fail closed.", self.plugin, kind.label()),
            )
            .code("plugin_error")),
        }
    }
}

/// What the chain decided before routing.
#[derive(Debug)]
pub enum Admission {
    /// Go on: to a public model (one name) or to targets in order, if a plugin routed the request.
    Continue { route: Option<Vec<String>> },
    /// Answer with this error (a plugin's rejection).
    Reject(Error),
    /// Answer with this response, without an upstream.
    Respond(LocalResponse),
}

/// An ordered list of plugins.
#[derive(Debug, Default)]
pub struct Chain {
    plugins: Vec<Arc<LoadedPlugin>>,
    /// The union of the plugins' hooks, to skip whole stages cheaply.
    hooks: HookSet,
}

impl Chain {
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn wants(&self, hook: HookSet) -> bool {
        self.hooks.contains(hook)
    }

    /// Headers any plugin of the chain declared, so the view carries only those.
    pub fn needs_headers(&self) -> bool {
        self.plugins.iter().any(|p| !p.meta.read_headers.is_empty())
    }

    /// Whether any plugin of the chain reads the response in `on-complete`.
    pub fn needs_response(&self) -> bool {
        self.plugins.iter().any(|p| p.meta.needs_response)
    }

    /// Runs `on-request` through the chain. A body a plugin set (`request.set-body`) goes to
    /// `rewrite` when its hook returns: the new request's facts, or why it is not a valid one
    /// (that plugin's fault).
    pub async fn on_request(
        &self,
        view: &Arc<RequestView>,
        routes: &RouteTable,
        rewrite: &mut (dyn FnMut(Bytes) -> Result<RequestInfo, String> + Send),
    ) -> Result<Admission, Error> {
        let mut route = None;
        for plugin in self.plugins.iter().filter(|p| p.hooks.contains(HookSet::ON_REQUEST)) {
            if let Some(skipped) = plugin.quarantined(Hook::OnRequest) {
                skipped.resolve()?;
                continue;
            }
            let decision = plugin.on_request(view).await;
            // Taken whatever the hook did, so that a faulting plugin's rewrite is dropped with it.
            let rewritten = view.take_rewrite();
            let decision = match decision {
                Ok(d) => d,
                Err(fault) => {
                    fault.resolve()?;
                    continue;
                }
            };
            if let Some(body) = rewritten.filter(|_| view.info().api != ApiKind::Predict) {
                match rewrite(body.clone()) {
                    Ok(info) => view.rewritten(info, body),
                    Err(why) => {
                        plugin.bad_decision(Hook::OnRequest, format!("rewrote the request badly: {why}")).resolve()?;
                        continue;
                    }
                }
            }
            match decision {
                Decision::Continue => {}
                Decision::Route(target) => {
                    if routes.target(&target).is_none() && routes.names().all(|n| n != target) {
                        plugin
                            .bad_decision(Hook::OnRequest, format!("routed to unknown target {target:?}"))
                            .resolve()?;
                        continue;
                    }
                    route = Some(vec![target]);
                }
                Decision::RouteChain(targets) => {
                    if let Some(bad) = targets.iter().find(|t| routes.target(t).is_none()) {
                        plugin.bad_decision(Hook::OnRequest, format!("routed to unknown target {bad:?}")).resolve()?;
                        continue;
                    }
                    if targets.is_empty() {
                        plugin.bad_decision(Hook::OnRequest, "routed to no target at all".to_owned()).resolve()?;
                        continue;
                    }
                    route = Some(targets);
                }
                Decision::Reject(r) => match rejection(r) {
                    Ok(error) => return Ok(Admission::Reject(error)),
                    Err(detail) => plugin.bad_decision(Hook::OnRequest, detail).resolve()?,
                },
                Decision::Respond(local) => {
                    if local.body.len() > MAX_LOCAL_RESPONSE || StatusCode::from_u16(local.status).is_err() {
                        let detail = format!("local response of {} bytes, status {}", local.body.len(), local.status);
                        plugin.bad_decision(Hook::OnRequest, detail).resolve()?;
                        continue;
                    }
                    return Ok(Admission::Respond(local));
                }
            }
        }
        Ok(Admission::Continue { route })
    }

    /// Runs `on-response-headers`; returns a target to retry on, if a plugin asked for one.
    pub async fn on_response_headers(&self, view: &Arc<RequestView>, status: u16) -> Result<Option<String>, Error> {
        for plugin in self.plugins.iter().filter(|p| p.hooks.contains(HookSet::ON_RESPONSE_HEADERS)) {
            if let Some(skipped) = plugin.quarantined(Hook::OnResponseHeaders) {
                skipped.resolve()?;
                continue;
            }
            match plugin.on_response_headers(view, status).await {
                Ok(ResponseAction::Continue) => {}
                Ok(ResponseAction::Retry(target)) => return Ok(Some(target)),
                Err(fault) => fault.resolve()?,
            }
        }
        Ok(None)
    }

    /// Runs `on-response` through the chain on a whole answer in the canonical chat form: each
    /// plugin sees the answer as the one before it left it. `Some` replacement if any plugin made
    /// one; a refusal is the error the client gets instead. `valid` says why a replacement is not
    /// an answer of the request's API (that plugin's fault).
    pub async fn on_response(
        &self,
        view: &Arc<RequestView>,
        answer: Bytes,
        valid: &(dyn Fn(&[u8]) -> Result<(), String> + Sync),
    ) -> Result<Option<Bytes>, Error> {
        let mut current = answer;
        let mut replaced = false;
        for plugin in self.plugins.iter().filter(|p| p.hooks.contains(HookSet::ON_RESPONSE)) {
            if let Some(skipped) = plugin.quarantined(Hook::OnResponse) {
                skipped.resolve()?;
                continue;
            }
            match plugin.on_response(view, current.clone()).await {
                Ok(AnswerAction::Continue) => {}
                Ok(AnswerAction::Replace(body)) => {
                    if body.len() > MAX_LOCAL_RESPONSE {
                        let detail = format!("replaced the answer with {} bytes", body.len());
                        plugin.bad_decision(Hook::OnResponse, detail).resolve()?;
                        continue;
                    }
                    if let Err(why) = valid(&body) {
                        plugin.bad_decision(Hook::OnResponse, format!("replaced the answer badly: {why}")).resolve()?;
                        continue;
                    }
                    current = Bytes::from(body);
                    replaced = true;
                }
                Ok(AnswerAction::Refuse(r)) => match rejection(r) {
                    Ok(error) => return Err(error),
                    Err(detail) => plugin.bad_decision(Hook::OnResponse, detail).resolve()?,
                },
                Err(fault) => fault.resolve()?,
            }
        }
        Ok(replaced.then_some(current))
    }

    /// Runs `on-complete`. Faults are counted and logged; the request is over either way.
    pub async fn on_complete(&self, view: &Arc<RequestView>, completion: &Completion) {
        for plugin in self.plugins.iter().filter(|p| p.hooks.contains(HookSet::ON_COMPLETE)) {
            if plugin.quarantined(Hook::OnComplete).is_some() {
                continue;
            }
            if let Err(fault) = plugin.on_complete(view, completion).await {
                let _ = fault.resolve();
            }
        }
    }
}

/// A plugin's refusal as the error the client gets, or why its status cannot be one.
fn rejection(r: Rejection) -> Result<Error, String> {
    let Ok(status) = StatusCode::from_u16(r.status) else {
        return Err(format!("rejected with invalid status {}", r.status));
    };
    if !(status.is_client_error() || status.is_server_error()) {
        return Err(format!("rejected with non-error status {status}"));
    }
    let retry_after = r.retry_after_ms.map(|ms| u64::from(ms).div_ceil(1000));
    Ok(Error::new(Kind::Policy, r.message).status(status).code(r.code).retry_after(retry_after))
}

/// Every chain of one configuration: the default one and the models' own.
#[derive(Debug, Default)]
pub struct Plugins {
    default: Arc<Chain>,
    per_model: HashMap<String, Arc<Chain>>,
}

impl Plugins {
    /// Loads every plugin of `config` (compiling on blocking threads, off the request path) and
    /// builds the chains. Any plugin that fails to load fails the whole set, so a bad
    /// version is never swapped in.
    pub async fn load(
        config: &Config,
        wasm: &Arc<WasmEngine>,
        services: &Arc<Services>,
    ) -> Result<Self, PluginLoadError> {
        let mut loaded: Vec<Arc<LoadedPlugin>> = Vec::with_capacity(config.plugins.len());
        for plugin in &config.plugins {
            loaded.push(LoadedPlugin::load(wasm, plugin, services.clone()).await?);
        }
        let chain = |indexes: &[usize]| {
            let plugins: Vec<_> = indexes.iter().map(|&i| loaded[i].clone()).collect();
            let hooks = plugins.iter().fold(HookSet::empty(), |acc, p| acc | p.hooks);
            Arc::new(Chain { plugins, hooks })
        };
        let per_model =
            config.models.iter().filter_map(|m| Some((m.name.clone(), chain(m.plugins.as_deref()?)))).collect();
        Ok(Self { default: chain(&config.chain), per_model })
    }

    /// The chain for a requested model name.
    pub fn chain_for(&self, model: &str) -> &Arc<Chain> {
        self.per_model.get(model).unwrap_or(&self.default)
    }
}
