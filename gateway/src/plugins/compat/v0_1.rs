//! The host side of `weir:plugin@0.1.0`: each of its imports delegating to the current one, with
//! the types that differ converted at the boundary.
//!
//! The one change a 0.1.0 guest could not follow is `api-kind`'s new cases (`completions`,
//! `messages`, `responses`, `predict`): it is told such requests are `chat-completions`, the nearest
//! API it knows — which is also the form it sees their answers in.

use wasmtime::Result;
use wasmtime::component::Resource;

use crate::plugins::bindings::v0_1::weir::plugin as old;
use crate::plugins::bindings::weir::plugin as new;
use crate::plugins::host::{HostState, RequestHandle};

// ---------------------------------------------------------------------------------------------
// Types: the current host's values for an old guest, and an old guest's for the host

fn api_kind(api: new::types::ApiKind) -> old::types::ApiKind {
    use new::types::ApiKind as N;
    use old::types::ApiKind as O;
    match api {
        N::Embeddings => O::Embeddings,
        N::ChatCompletions | N::Completions | N::Messages | N::Responses => O::ChatCompletions,
        // Of the two kinds a 0.1.0 guest knows, the one without generated tokens: its limits and
        // costs count a prediction as a request with no completion, not as a chat it could parse.
        N::Predict => O::Embeddings,
    }
}

fn request_info(i: new::types::RequestInfo) -> old::types::RequestInfo {
    old::types::RequestInfo {
        request_id: i.request_id,
        api: api_kind(i.api),
        model: i.model,
        stream: i.stream,
        max_tokens: i.max_tokens,
        temperature: i.temperature,
        prompt_tokens_estimate: i.prompt_tokens_estimate,
        body_len: i.body_len,
        key_name: i.key_name,
        team: i.team,
        end_user: i.end_user,
    }
}

/// The completion an old guest's `on-complete` receives.
pub fn completion(c: &new::hooks::Completion) -> old::hooks::Completion {
    old::hooks::Completion {
        status: c.status,
        target: c.target.clone(),
        usage: c.usage.map(|u| old::types::Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.cached_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }),
        ttft_ms: c.ttft_ms,
        total_ms: c.total_ms,
        error_class: c.error_class.clone(),
        attempts: c
            .attempts
            .iter()
            .map(|a| old::hooks::Attempt { target: a.target.clone(), status: a.status, latency_ms: a.latency_ms })
            .collect(),
        mirrored: c.mirrored,
    }
}

/// What an old guest's `init` said.
pub fn plugin_info(i: old::hooks::PluginInfo) -> new::hooks::PluginInfo {
    let mut hooks = new::hooks::HookSet::empty();
    for (was, is) in [
        (old::hooks::HookSet::ON_REQUEST, new::hooks::HookSet::ON_REQUEST),
        (old::hooks::HookSet::ON_RESPONSE_HEADERS, new::hooks::HookSet::ON_RESPONSE_HEADERS),
        (old::hooks::HookSet::ON_COMPLETE, new::hooks::HookSet::ON_COMPLETE),
    ] {
        if i.hooks.contains(was) {
            hooks |= is;
        }
    }
    new::hooks::PluginInfo {
        hooks,
        read_headers: i.read_headers,
        needs_body: i.needs_body,
        needs_response: i.needs_response,
        stream_hold_bytes: 0,
    }
}

/// What an old guest's `on-request` decided.
pub fn decision(d: old::hooks::Decision) -> new::hooks::Decision {
    use new::hooks::Decision as N;
    use old::hooks::Decision as O;
    match d {
        O::Continue => N::Continue,
        O::Route(target) => N::Route(target),
        O::RouteChain(targets) => N::RouteChain(targets),
        O::Reject(r) => N::Reject(new::hooks::Rejection {
            status: r.status,
            code: r.code,
            message: r.message,
            retry_after_ms: r.retry_after_ms,
        }),
        O::Respond(l) => N::Respond(new::hooks::LocalResponse { status: l.status, headers: l.headers, body: l.body }),
    }
}

/// What an old guest's `on-response-headers` decided.
pub fn response_action(a: old::hooks::ResponseAction) -> new::hooks::ResponseAction {
    match a {
        old::hooks::ResponseAction::Continue => new::hooks::ResponseAction::Continue,
        old::hooks::ResponseAction::Retry(target) => new::hooks::ResponseAction::Retry(target),
    }
}

// ---------------------------------------------------------------------------------------------
// The 0.1.0 imports, each the current one

impl old::types::Host for HostState {}
impl old::hooks::Host for HostState {}
impl old::request::Host for HostState {}

impl old::request::HostRequest for HostState {
    async fn info(&mut self, req: Resource<RequestHandle>) -> Result<old::types::RequestInfo> {
        new::request::HostRequest::info(self, req).await.map(request_info)
    }

    async fn header(&mut self, req: Resource<RequestHandle>, name: String) -> Result<Option<String>> {
        new::request::HostRequest::header(self, req, name).await
    }

    async fn body(&mut self, req: Resource<RequestHandle>) -> Result<Vec<u8>> {
        new::request::HostRequest::body(self, req).await
    }

    async fn digest(&mut self, req: Resource<RequestHandle>) -> Result<String> {
        new::request::HostRequest::digest(self, req).await
    }

    async fn add_response_header(&mut self, req: Resource<RequestHandle>, name: String, value: String) -> Result<()> {
        new::request::HostRequest::add_response_header(self, req, name, value).await
    }

    async fn mirror(&mut self, req: Resource<RequestHandle>, target: String) -> Result<()> {
        new::request::HostRequest::mirror(self, req, target).await
    }

    async fn response_body(&mut self, req: Resource<RequestHandle>) -> Result<Vec<u8>> {
        new::request::HostRequest::response_body(self, req).await
    }

    async fn get_local(&mut self, req: Resource<RequestHandle>, key: String) -> Result<Option<Vec<u8>>> {
        new::request::HostRequest::get_local(self, req, key).await
    }

    async fn set_local(&mut self, req: Resource<RequestHandle>, key: String, value: Vec<u8>) -> Result<()> {
        new::request::HostRequest::set_local(self, req, key, value).await
    }

    async fn drop(&mut self, req: Resource<RequestHandle>) -> Result<()> {
        new::request::HostRequest::drop(self, req).await
    }
}

impl old::kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>> {
        new::kv::Host::get(self, key).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u32) -> Result<()> {
        new::kv::Host::set(self, key, value, ttl_ms).await
    }

    async fn delete(&mut self, key: String) -> Result<()> {
        new::kv::Host::delete(self, key).await
    }

    async fn add(&mut self, key: String, delta: i64, ttl_ms: u32) -> Result<i64> {
        new::kv::Host::add(self, key, delta, ttl_ms).await
    }
}

impl old::quota::Host for HostState {
    async fn reserve(
        &mut self,
        key: String,
        amount: u64,
        limit: old::quota::Limit,
    ) -> Result<Result<old::quota::Grant, old::quota::Denial>> {
        let limit = new::quota::Limit { amount: limit.amount, window_ms: limit.window_ms };
        Ok(match new::quota::Host::reserve(self, key, amount, limit).await? {
            Ok(g) => Ok(old::quota::Grant { reservation: g.reservation, remaining: g.remaining, reset_ms: g.reset_ms }),
            Err(d) => Err(old::quota::Denial { retry_after_ms: d.retry_after_ms, remaining: d.remaining }),
        })
    }

    async fn settle(&mut self, reservation: u64, actual: u64) -> Result<()> {
        new::quota::Host::settle(self, reservation, actual).await
    }
}

impl old::metrics::Host for HostState {
    async fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, delta: u64) -> Result<()> {
        new::metrics::Host::counter_add(self, name, labels, delta).await
    }

    async fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) -> Result<()> {
        new::metrics::Host::gauge_set(self, name, labels, value).await
    }

    async fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) -> Result<()> {
        new::metrics::Host::histogram_observe(self, name, labels, value).await
    }
}

impl old::ledger::Host for HostState {
    async fn append(&mut self, e: old::ledger::Entry) -> Result<()> {
        let entry = new::ledger::Entry {
            request_id: e.request_id,
            key_name: e.key_name,
            team: e.team,
            model: e.model,
            target: e.target,
            prompt_tokens: e.prompt_tokens,
            completion_tokens: e.completion_tokens,
            cached_tokens: e.cached_tokens,
            cost_pico_usd: e.cost_pico_usd,
        };
        new::ledger::Host::append(self, entry).await
    }

    async fn spent(&mut self, who: old::ledger::Spender, name: String, since_ms: u64) -> Result<u64> {
        let who = match who {
            old::ledger::Spender::Key => new::ledger::Spender::Key,
            old::ledger::Spender::Team => new::ledger::Spender::Team,
        };
        new::ledger::Host::spent(self, who, name, since_ms).await
    }
}

impl old::catalog::Host for HostState {
    async fn price(&mut self, model: String) -> Result<Option<old::catalog::ModelPrice>> {
        Ok(new::catalog::Host::price(self, model).await?.map(|p| old::catalog::ModelPrice {
            input: p.input,
            output: p.output,
            cached_input: p.cached_input,
        }))
    }

    async fn target_stats(&mut self, target: String) -> Result<Option<old::catalog::TargetHealth>> {
        Ok(new::catalog::Host::target_stats(self, target).await?.map(|t| old::catalog::TargetHealth {
            healthy: t.healthy,
            in_flight: t.in_flight,
            latency_ms: t.latency_ms,
            error_rate: t.error_rate,
        }))
    }

    async fn targets(&mut self, model: String) -> Result<Vec<String>> {
        new::catalog::Host::targets(self, model).await
    }

    async fn now_ms(&mut self) -> Result<u64> {
        new::catalog::Host::now_ms(self).await
    }

    async fn random_u64(&mut self) -> Result<u64> {
        new::catalog::Host::random_u64(self).await
    }
}

impl old::log::Host for HostState {
    async fn log(&mut self, level: old::log::Level, message: String) -> Result<()> {
        let level = match level {
            old::log::Level::Trace => new::log::Level::Trace,
            old::log::Level::Debug => new::log::Level::Debug,
            old::log::Level::Info => new::log::Level::Info,
            old::log::Level::Warn => new::log::Level::Warn,
            old::log::Level::Error => new::log::Level::Error,
        };
        new::log::Host::log(self, level, message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_apis_read_as_chat_completions_to_an_old_guest() {
        use new::types::ApiKind as N;
        assert_eq!(api_kind(N::Embeddings), old::types::ApiKind::Embeddings);
        for api in [N::ChatCompletions, N::Completions, N::Messages, N::Responses] {
            assert_eq!(api_kind(api), old::types::ApiKind::ChatCompletions);
        }
    }
}
