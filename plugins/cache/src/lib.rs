//! `cache`: Weir's built-in exact-match response cache.
//!
//! A request is looked up by its tenant (the API key, or its team) and the host's canonical digest
//! of the request (model, messages, tools, sampling parameters; not `stream`, `stream_options` or
//! `user`), so the same question from the same tenant gets the same answer without an upstream call,
//! and one tenant never sees another's answer. By default only deterministic requests are cached:
//! chat completions that set `temperature` to 0, and embeddings; any request can opt in (or out) with
//! the header `x-weir-cache: on|off`. `Cache-Control: no-cache` skips the lookup but stores the
//! fresh answer; `no-store` does neither.
//!
//! The cache holds one `chat.completion` (or embeddings) JSON object per entry, whichever way it was
//! filled: a streamed miss is assembled from the upstream's events (text, tool calls, logprobs,
//! finish reasons, usage), and a streamed hit is replayed from the object as SSE events (with the
//! usage chunk only when the client asked for it, and `[DONE]`). Every client API is cached this
//! way — the host gives plugins answers in the canonical chat form and turns the cache's answer into
//! the client's API (a Messages stream replays as Messages events) — and per API, since the host's
//! digest starts with the API: a Messages request never gets a Responses client's answer. Only complete 200 answers are
//! stored. Every answer carries `x-weir-cache: hit | miss | bypass`; hits, misses, bypasses and
//! stores are counted per model.
//!
//! Entries live in the host's key-value store with a TTL, so they are shared by every instance of
//! the plugin and bounded by the store's size (`state.kv_max_bytes`); one entry is at most
//! `max_entry_bytes` (the store takes values up to 1 MiB).

mod convert;
mod policy;

use serde::Deserialize;
use weir_sdk::{ApiKind, Completion, Decision, HookSet, LocalResponse, Plugin, PluginInfo, Request, kv, metrics};

use policy::{Facts, Rules, Verdict};

/// The largest value the host's key-value store keeps.
const KV_MAX_VALUE: u32 = 1 << 20;
/// The longest TTL the store's `u32` milliseconds can express, in seconds (about 49 days).
const MAX_TTL_SECONDS: u32 = u32::MAX / 1000;
/// The response header saying what the cache did.
const STATUS_HEADER: &str = "x-weir-cache";
/// The per-request local that carries the entry's key from `on_request` to `on_complete`, set only
/// when the answer should be stored.
const STORE_KEY: &str = "store";

/// The plugin's config table. Unknown fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// How long an entry lives, in seconds.
    #[serde(default = "default_ttl_seconds")]
    ttl_seconds: u32,
    /// Answers larger than this (as stored JSON) are not cached.
    #[serde(default = "default_max_entry_bytes")]
    max_entry_bytes: u32,
    /// Cache chat completions that set `temperature` to 0.
    #[serde(default = "yes")]
    temperature_zero: bool,
    /// Cache embeddings.
    #[serde(default = "yes")]
    embeddings: bool,
    /// Cache predictions by their payload's digest: off unless the models are deterministic.
    #[serde(default)]
    predictions: bool,
    /// The request header that opts a request in (`on`) or out (`off`).
    #[serde(default = "default_header")]
    header: String,
    /// Whose answers are shared: each API key's own (`key`), or each team's (`team`).
    #[serde(default)]
    scope: Scope,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Scope {
    #[default]
    Key,
    Team,
}

fn default_ttl_seconds() -> u32 {
    3600
}

fn default_max_entry_bytes() -> u32 {
    KV_MAX_VALUE
}

fn yes() -> bool {
    true
}

fn default_header() -> String {
    STATUS_HEADER.to_owned()
}

/// The plugin, built from its config once per instance.
struct Cache {
    rules: Rules,
    ttl_ms: u32,
    max_entry_bytes: usize,
    header: String,
    scope: Scope,
}

impl Plugin for Cache {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        let de = &mut serde_json::Deserializer::from_str(config);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| match e.path().to_string() {
            path if path == "." => format!("cache config: {}", e.inner()),
            path => format!("cache config: {path}: {}", e.inner()),
        })?;
        if !(1..=MAX_TTL_SECONDS).contains(&config.ttl_seconds) {
            return Err(format!("cache config: ttl_seconds must be between 1 and {MAX_TTL_SECONDS}"));
        }
        if !(1..=KV_MAX_VALUE).contains(&config.max_entry_bytes) {
            return Err(format!(
                "cache config: max_entry_bytes must be between 1 and {KV_MAX_VALUE} (the key-value store's largest value)"
            ));
        }
        if config.header.is_empty() || !config.header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("cache config: header {:?} is not a valid header name", config.header));
        }
        let plugin = Cache {
            rules: Rules {
                temperature_zero: config.temperature_zero,
                embeddings: config.embeddings,
                predictions: config.predictions,
            },
            ttl_ms: config.ttl_seconds * 1000,
            max_entry_bytes: config.max_entry_bytes as usize,
            header: config.header.to_ascii_lowercase(),
            scope: config.scope,
        };
        // The body is read only for a streamed hit (to see `stream_options.include_usage`); the
        // response only for a miss that is to be stored.
        let info = PluginInfo::hooks(HookSet::ON_REQUEST | HookSet::ON_COMPLETE)
            .reading_headers([plugin.header.clone(), "cache-control".to_owned()])
            .needing_body()
            .needing_response();
        Ok((plugin, info))
    }

    fn on_request(&self, req: &Request) -> Decision {
        let info = req.info();
        let opt_in = req.header(&self.header);
        let cache_control = req.header("cache-control");
        let facts = Facts {
            embeddings: info.api == ApiKind::Embeddings,
            prediction: info.api == ApiKind::Predict,
            temperature: info.temperature,
            opt_in: opt_in.as_deref(),
            cache_control: cache_control.as_deref(),
        };
        let model = || ("model".to_owned(), info.model.clone());
        let verdict = policy::decide(self.rules, facts);
        if let Verdict::Bypass(reason) = verdict {
            metrics::counter_add("bypasses", &[model(), ("reason".into(), reason.label().into())], 1);
            req.add_response_header(STATUS_HEADER, "bypass");
            return Decision::Continue;
        }

        // The tenant first, then the digest (fixed length, last), so no two tenants share a key.
        let tenant = match self.scope {
            Scope::Key => format!("k:{}", info.key_name),
            Scope::Team => format!("t:{}", info.team),
        };
        let key = format!("{tenant}:{}", req.digest());
        if verdict == Verdict::Lookup
            && let Some(stored) = kv::get(&key)
            && let Some(response) = answer(req, info.stream, stored)
        {
            metrics::counter_add("hits", &[model()], 1);
            return Decision::Respond(response);
        }
        metrics::counter_add("misses", &[model()], 1);
        req.add_response_header(STATUS_HEADER, "miss");
        req.set_local(STORE_KEY, key.as_bytes());
        Decision::Continue
    }

    fn on_complete(&self, req: &Request, outcome: Completion) {
        let Some(key) = req.get_local(STORE_KEY) else { return };
        let Ok(key) = String::from_utf8(key) else { return };
        let info = req.info();
        let skipped = |reason: &str| {
            let labels = [("model".to_owned(), info.model.clone()), ("reason".to_owned(), reason.to_owned())];
            metrics::counter_add("store_skipped", &labels, 1);
        };
        if outcome.status != 200 || outcome.error_class.is_some() {
            return skipped("failed");
        }
        let body = req.response_body();
        if body.is_empty() {
            // Not captured: over the host's 8 MiB capture limit, or not an upstream's answer.
            return skipped("not_captured");
        }
        let stored = if info.stream {
            match convert::assemble(&body)
                .and_then(|c| serde_json::to_vec(&c).map_err(|_| convert::Incomplete::BadEvent))
            {
                Ok(json) => json,
                Err(_) => return skipped("incomplete"),
            }
        } else {
            // Cheap before thorough: a body over the cap is not worth parsing.
            if body.len() > self.max_entry_bytes {
                return skipped("too_large");
            }
            let whole = serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v.is_object() && v.get("error").is_none());
            if !whole {
                return skipped("incomplete");
            }
            body
        };
        if stored.len() > self.max_entry_bytes {
            return skipped("too_large");
        }
        kv::set(&key, &stored, self.ttl_ms);
        metrics::counter_add("stores", &[("model".to_owned(), info.model)], 1);
    }
}

/// The local response for a hit: the stored JSON as it is, or replayed as a stream. `None` if the
/// entry cannot be read (then the request goes upstream as a miss).
fn answer(req: &Request, stream: bool, stored: Vec<u8>) -> Option<LocalResponse> {
    let hit = (STATUS_HEADER.to_owned(), "hit".to_owned());
    if !stream {
        let headers = vec![("content-type".to_owned(), "application/json".to_owned()), hit];
        return Some(LocalResponse { status: 200, headers, body: stored });
    }
    let completion: serde_json::Value = serde_json::from_slice(&stored).ok()?;
    // Only a Chat Completions client asks for the usage chunk itself; for every other API the host
    // turns the replay into that API's events, which carry usage in their own way.
    let usage = req.info().api != ApiKind::ChatCompletions || policy::wants_usage(&req.body());
    let body = convert::replay(&completion, usage);
    let headers = vec![
        ("content-type".to_owned(), "text/event-stream".to_owned()),
        ("cache-control".to_owned(), "no-cache".to_owned()),
        hit,
    ];
    Some(LocalResponse { status: 200, headers, body })
}

weir_sdk::export_plugin!(Cache);
