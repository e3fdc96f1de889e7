//! Raw → typed: every check in one pass, every problem collected with its field path.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::FieldError;
use crate::raw::{RawConfig, RawTimeouts};
use crate::typed::*;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;
const MIN_KEY_LEN: usize = 16;
const MAX_ATTEMPTS: i64 = 10;
const DEFAULT_PLUGIN_MEMORY: u64 = 16 * 1024 * 1024;
const MAX_PLUGIN_MEMORY: u64 = 4 * 1024 * 1024 * 1024;

/// Parses a size such as `16MiB`, `512KiB`, `1GiB` or `65536`.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size; write e.g. \"16MiB\""))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} in {text:?}; use B, KiB, MiB or GiB")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"))
}

const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    first_byte: Duration::from_secs(120),
    total: Duration::from_secs(600),
    idle: Duration::from_secs(60),
};

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), message: message.into() });
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.push(path, "must be longer than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.push(path, format!("{text:?} is not a duration ({e}); write e.g. \"250ms\", \"30s\" or \"5m\""));
                default
            }
        }
    }

    fn timeouts(&mut self, path: &str, raw: &RawTimeouts, base: Timeouts) -> Timeouts {
        Timeouts {
            connect: self.duration(&format!("{path}connect"), raw.connect.as_deref(), base.connect),
            first_byte: self.duration(&format!("{path}first_byte"), raw.first_byte.as_deref(), base.first_byte),
            total: self.duration(&format!("{path}total"), raw.total.as_deref(), base.total),
            idle: self.duration(&format!("{path}idle"), raw.idle.as_deref(), base.idle),
        }
    }
}

impl Errors {
    /// A provider field that must be set and not empty.
    fn required(&mut self, p: &str, field: &str, value: &Option<String>, why: &str) -> String {
        match value.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => v.to_owned(),
            None => {
                self.push(format!("{p}.{field}"), format!("is required: {why}"));
                String::new()
            }
        }
    }

    /// A base URL: http(s), a host, no query or fragment; returned without a trailing slash.
    fn endpoint(&mut self, path: &str, text: &str) -> String {
        match url::Url::parse(text) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                self.push(path, format!("{text:?} must be an http:// or https:// URL"));
                String::new()
            }
            Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                self.push(path, "must be a base URL without a query or fragment");
                String::new()
            }
            Ok(url) if url.host_str().is_none() => {
                self.push(path, "has no host");
                String::new()
            }
            Ok(url) => url.as_str().trim_end_matches('/').to_owned(),
            Err(e) => {
                self.push(path, format!("{text:?} is not a URL ({e}); write e.g. \"https://api.openai.com/v1\""));
                String::new()
            }
        }
    }
}

/// The provider-specific fields of an upstream: each allowed only for its kind, each required one named.
fn provider_settings(
    errs: &mut Errors,
    p: &str,
    kind: UpstreamKind,
    u: &crate::raw::RawUpstream,
    base_dir: &Path,
) -> Provider {
    let present = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
    let fields: [(&str, bool, &[UpstreamKind]); 16] = [
        ("region", present(&u.region), &[UpstreamKind::Bedrock]),
        ("access_key_id", present(&u.access_key_id), &[UpstreamKind::Bedrock]),
        ("secret_access_key", present(&u.secret_access_key), &[UpstreamKind::Bedrock]),
        ("session_token", present(&u.session_token), &[UpstreamKind::Bedrock]),
        ("profile", present(&u.profile), &[UpstreamKind::Bedrock]),
        ("project", present(&u.project), &[UpstreamKind::Vertex]),
        ("location", present(&u.location), &[UpstreamKind::Vertex]),
        ("credentials_file", present(&u.credentials_file), &[UpstreamKind::Vertex, UpstreamKind::Bedrock]),
        ("api_version", present(&u.api_version), &[UpstreamKind::AzureOpenAi]),
        ("tenant_id", present(&u.tenant_id), &[UpstreamKind::AzureOpenAi]),
        ("client_id", present(&u.client_id), &[UpstreamKind::AzureOpenAi]),
        ("client_secret", present(&u.client_secret), &[UpstreamKind::AzureOpenAi]),
        ("token_endpoint", present(&u.token_endpoint), &[UpstreamKind::AzureOpenAi]),
        ("deployments", !u.deployments.is_empty(), &[UpstreamKind::AzureOpenAi]),
        ("native_responses", u.native_responses.is_some(), &[UpstreamKind::OpenAi, UpstreamKind::AzureOpenAi]),
        ("anthropic_version", present(&u.anthropic_version), &[UpstreamKind::Anthropic]),
    ];
    for (field, set, kinds) in fields {
        if set && !kinds.contains(&kind) {
            let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            errs.push(format!("{p}.{field}"), format!("applies only to kind = {:?}", names.join(" | ")));
        }
    }
    let secret = |v: &Option<String>| v.clone().filter(|v| !v.is_empty()).map(Secret::new);
    match kind {
        UpstreamKind::OpenAi | UpstreamKind::Worker => Provider::Plain,
        UpstreamKind::Gemini => {
            errs.required(p, "api_key", &u.api_key, "the Gemini API key, sent as x-goog-api-key");
            Provider::Plain
        }
        UpstreamKind::Anthropic => {
            errs.required(p, "api_key", &u.api_key, "the Anthropic API key, sent as x-api-key");
            Provider::Anthropic(Anthropic {
                version: u
                    .anthropic_version
                    .clone()
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "2023-06-01".to_owned()),
            })
        }
        UpstreamKind::Vertex => Provider::Vertex(Vertex {
            project: errs.required(p, "project", &u.project, "the Google Cloud project id"),
            location: errs.required(
                p,
                "location",
                &u.location,
                "a Vertex AI location such as \"us-central1\" or \"global\"",
            ),
            credentials_file: u.credentials_file.as_deref().filter(|f| !f.is_empty()).map(|f| base_dir.join(f)),
        }),
        UpstreamKind::Bedrock => {
            let region = errs.required(p, "region", &u.region, "the AWS region, e.g. \"us-east-1\"");
            let explicit = present(&u.api_key) || present(&u.access_key_id);
            for (field, set) in [("profile", present(&u.profile)), ("credentials_file", present(&u.credentials_file))] {
                if explicit && set {
                    errs.push(
                        format!("{p}.{field}"),
                        "applies only to the AWS credential chain (without api_key or access_key_id)",
                    );
                }
            }
            let credentials = match (secret(&u.api_key), u.access_key_id.as_deref().filter(|k| !k.is_empty())) {
                (Some(_), Some(_)) => {
                    errs.push(
                        format!("{p}.api_key"),
                        "set either api_key (a Bedrock API key) or access_key_id, not both",
                    );
                    AwsCredentials::ApiKey(Secret::new(String::new()))
                }
                (Some(key), None) => AwsCredentials::ApiKey(key),
                (None, Some(id)) => AwsCredentials::Static {
                    access_key_id: id.to_owned(),
                    secret_access_key: Secret::new(errs.required(
                        p,
                        "secret_access_key",
                        &u.secret_access_key,
                        "the secret that goes with access_key_id",
                    )),
                    session_token: secret(&u.session_token),
                },
                (None, None) => AwsCredentials::Chain {
                    profile: u.profile.clone().filter(|p| !p.is_empty()),
                    credentials_file: u.credentials_file.as_deref().filter(|f| !f.is_empty()).map(|f| base_dir.join(f)),
                },
            };
            Provider::Bedrock(Bedrock { region, credentials })
        }
        UpstreamKind::AzureOpenAi => {
            let auth = match (secret(&u.api_key), present(&u.client_id) || present(&u.tenant_id)) {
                (Some(_), true) => {
                    errs.push(
                        format!("{p}.api_key"),
                        "set either api_key or Entra ID (tenant_id, client_id, client_secret), not both",
                    );
                    AzureAuth::ApiKey(Secret::new(String::new()))
                }
                (Some(key), false) => AzureAuth::ApiKey(key),
                (None, true) => {
                    let token_endpoint = match u.token_endpoint.as_deref().filter(|t| !t.is_empty()) {
                        Some(t) => errs.endpoint(&format!("{p}.token_endpoint"), t),
                        None => format!(
                            "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
                            errs.required(p, "tenant_id", &u.tenant_id, "the Entra ID tenant of the client")
                        ),
                    };
                    AzureAuth::Entra {
                        token_endpoint,
                        client_id: errs.required(p, "client_id", &u.client_id, "the Entra ID application (client) id"),
                        client_secret: Secret::new(errs.required(
                            p,
                            "client_secret",
                            &u.client_secret,
                            "the client's secret",
                        )),
                    }
                }
                (None, false) => {
                    errs.push(
                        format!("{p}.api_key"),
                        "is required (or tenant_id, client_id and client_secret for Entra ID)",
                    );
                    AzureAuth::ApiKey(Secret::new(String::new()))
                }
            };
            let api_version = u.api_version.clone().filter(|v| !v.is_empty() && v != "v1");
            Provider::Azure(Azure { api_version, deployments: u.deployments.clone(), auth })
        }
    }
}

/// Where a cloud upstream lives when `endpoint` is not set.
fn default_endpoint(kind: UpstreamKind, provider: &Provider) -> Option<String> {
    match (kind, provider) {
        (UpstreamKind::Bedrock, Provider::Bedrock(b)) => {
            Some(format!("https://bedrock-runtime.{}.amazonaws.com", b.region))
        }
        (UpstreamKind::Vertex, Provider::Vertex(v)) if v.location == "global" => {
            Some("https://aiplatform.googleapis.com".to_owned())
        }
        (UpstreamKind::Vertex, Provider::Vertex(v)) => {
            Some(format!("https://{}-aiplatform.googleapis.com", v.location))
        }
        (UpstreamKind::Gemini, _) => Some("https://generativelanguage.googleapis.com".to_owned()),
        (UpstreamKind::Anthropic, _) => Some("https://api.anthropic.com".to_owned()),
        _ => None,
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
}

pub(crate) fn validate(raw: RawConfig, base_dir: &Path) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());

    // [server]
    let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        errs.push(
            "server.listen",
            format!("{listen_text:?} is not an address; write e.g. \"127.0.0.1:8080\" or \"[::]:8080\""),
        );
        DEFAULT_LISTEN.parse().expect("the default listen address parses")
    });
    let max_body_bytes = match raw.server.max_body_bytes {
        None => DEFAULT_MAX_BODY,
        Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(n) => {
            errs.push("server.max_body_bytes", format!("must be positive, got {n}"));
            DEFAULT_MAX_BODY
        }
    };
    let tls = raw.server.tls.map(|t| Tls { cert: base_dir.join(t.cert), key: base_dir.join(t.key) });
    let server = Server {
        listen,
        tls,
        max_body_bytes,
        header_read_timeout: errs.duration(
            "server.header_read_timeout",
            raw.server.header_read_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        shutdown_grace: errs.duration(
            "server.shutdown_grace",
            raw.server.shutdown_grace.as_deref(),
            Duration::from_secs(30),
        ),
    };

    // [timeouts], [retry], [log]
    let timeouts = errs.timeouts("timeouts.", &raw.timeouts, DEFAULT_TIMEOUTS);
    let max_attempts = match raw.retry.max_attempts {
        None => 3,
        Some(n) if (1..=MAX_ATTEMPTS).contains(&n) => u32::try_from(n).unwrap_or(3),
        Some(n) => {
            errs.push("retry.max_attempts", format!("must be between 1 and {MAX_ATTEMPTS}, got {n}"));
            3
        }
    };
    let retry = Retry {
        max_attempts,
        backoff_base: errs.duration("retry.backoff_base", raw.retry.backoff_base.as_deref(), Duration::from_millis(50)),
        backoff_max: errs.duration("retry.backoff_max", raw.retry.backoff_max.as_deref(), Duration::from_secs(2)),
    };
    let format = match raw.log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errs.push("log.format", format!("{other:?} is not a log format; use \"text\" or \"json\""));
            LogFormat::Text
        }
    };
    let log = Logging { format, level: raw.log.level.unwrap_or_else(|| "info".to_owned()) };

    // [[upstreams]]
    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    let mut upstream_names = HashSet::new();
    for (i, u) in raw.upstreams.into_iter().enumerate() {
        let p = format!("upstreams[{i}]");
        if !is_name(&u.name) {
            errs.push(format!("{p}.name"), format!("{:?} is not a valid name (letters, digits and -_.:/)", u.name));
        } else if !upstream_names.insert(u.name.clone()) {
            errs.push(format!("{p}.name"), format!("upstream {:?} is defined twice", u.name));
        }
        let kind = match u.kind.as_str() {
            "openai" => UpstreamKind::OpenAi,
            "worker" => UpstreamKind::Worker,
            "azure-openai" => UpstreamKind::AzureOpenAi,
            "bedrock" => UpstreamKind::Bedrock,
            "vertex" => UpstreamKind::Vertex,
            "gemini" => UpstreamKind::Gemini,
            "anthropic" => UpstreamKind::Anthropic,
            other => {
                errs.push(
                    format!("{p}.kind"),
                    format!("unknown kind {other:?}; supported: {}", UpstreamKind::NAMES.join(", ")),
                );
                UpstreamKind::OpenAi
            }
        };
        let provider = provider_settings(&mut errs, &p, kind, &u, base_dir);
        let local_worker = match (kind, u.model, &u.endpoint) {
            (UpstreamKind::Worker, Some(model), None) => {
                let device = u.device.unwrap_or_else(|| "auto".to_owned());
                let valid = matches!(device.as_str(), "auto" | "cpu" | "cuda")
                    || device.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
                if !valid {
                    errs.push(format!("{p}.device"), format!("{device:?} is not a device; use auto, cpu or cuda:N"));
                }
                if model.trim().is_empty() {
                    errs.push(
                        format!("{p}.model"),
                        "is empty; name a model directory, python:PACKAGE/DIR or builtin:NAME",
                    );
                }
                // A directory resolves against the config file's folder, like every other path.
                let model = if model.starts_with("python:") || model.starts_with("builtin:") {
                    model
                } else {
                    base_dir.join(&model).to_string_lossy().into_owned()
                };
                Some(LocalWorker { model, device })
            }
            (UpstreamKind::Worker, Some(_), Some(_)) => {
                errs.push(
                    format!("{p}.model"),
                    "give either endpoint (a running worker) or model (one the gateway starts), not both",
                );
                None
            }
            (_, Some(_), _) => {
                errs.push(format!("{p}.model"), "only kind = \"worker\" upstreams take a model");
                None
            }
            (_, None, _) => {
                if u.device.is_some() {
                    errs.push(format!("{p}.device"), "only a worker with a model takes a device");
                }
                None
            }
        };
        let endpoint = match (u.endpoint.as_deref(), default_endpoint(kind, &provider)) {
            (Some(endpoint), _) => errs.endpoint(&format!("{p}.endpoint"), endpoint),
            (None, _) if local_worker.is_some() => String::new(),
            (None, Some(default)) => default,
            (None, None) => {
                let hint = if kind == UpstreamKind::Worker { " (or, for a worker, a model to serve)" } else { "" };
                errs.push(format!("{p}.endpoint"), format!("is required for this kind{hint}"));
                String::new()
            }
        };
        let mut headers = Vec::with_capacity(u.headers.len());
        for (name, value) in u.headers {
            let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid_name {
                errs.push(format!("{p}.headers.{name}"), "is not a valid header name");
            } else if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                errs.push(format!("{p}.headers.{name}"), "header values cannot contain line breaks");
            } else {
                headers.push((name.to_ascii_lowercase(), Secret::new(value)));
            }
        }
        let api_key = u.api_key.filter(|k| !k.is_empty()).map(Secret::new);
        let timeouts = errs.timeouts(&format!("{p}.timeouts."), &u.timeouts, timeouts);
        let native_responses = u.native_responses.unwrap_or(false);
        if native_responses && matches!(&provider, Provider::Azure(a) if a.api_version.is_some()) {
            errs.push(
                format!("{p}.native_responses"),
                "applies only to the /openai/v1 surface of Azure OpenAI (without api_version)",
            );
        }
        upstreams.push(Upstream {
            name: u.name,
            kind,
            endpoint,
            api_key,
            headers,
            timeouts,
            local_worker,
            provider,
            native_responses,
        });
    }

    // [[models]]
    let mut models = Vec::with_capacity(raw.models.len());
    let mut model_chains = Vec::with_capacity(raw.models.len());
    let mut model_names = HashSet::new();
    for (i, m) in raw.models.into_iter().enumerate() {
        let p = format!("models[{i}]");
        if m.name.trim().is_empty() {
            errs.push(format!("{p}.name"), "must not be empty");
        } else if !model_names.insert(m.name.clone()) {
            errs.push(format!("{p}.name"), format!("model {:?} is defined twice", m.name));
        }
        if m.targets.is_empty() {
            errs.push(format!("{p}.targets"), "needs at least one target");
        }
        let wildcard = m.name == WILDCARD_MODEL;
        let mut targets = Vec::with_capacity(m.targets.len());
        for (j, t) in m.targets.into_iter().enumerate() {
            let tp = format!("{p}.targets[{j}]");
            let Some(upstream) = upstreams.iter().position(|u| u.name == t.upstream) else {
                let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                errs.push(
                    format!("{tp}.upstream"),
                    format!("unknown upstream {:?}; defined upstreams: [{}]", t.upstream, known.join(", ")),
                );
                continue;
            };
            match &t.model {
                Some(name) if name.trim().is_empty() => errs.push(format!("{tp}.model"), "must not be empty"),
                None if !wildcard => errs.push(
                    format!("{tp}.model"),
                    "is required: the model name to send upstream (only the \"*\" entry may pass names through)",
                ),
                _ => {}
            }
            targets.push(Target { upstream, model: t.model });
        }
        models.push(Model { name: m.name, targets, plugins: None });
        model_chains.push(m.plugins);
    }

    // [[keys]]
    let mut keys = Vec::with_capacity(raw.keys.len());
    let mut key_names = HashSet::new();
    let mut key_hashes = HashSet::new();
    for (i, k) in raw.keys.into_iter().enumerate() {
        let p = format!("keys[{i}]");
        if !is_name(&k.name) {
            errs.push(format!("{p}.name"), format!("{:?} is not a valid name (letters, digits and -_.:/)", k.name));
        } else if !key_names.insert(k.name.clone()) {
            errs.push(format!("{p}.name"), format!("key {:?} is defined twice", k.name));
        }
        if k.team.trim().is_empty() {
            errs.push(format!("{p}.team"), "must not be empty");
        }
        let sha256 = match (k.key, k.key_sha256) {
            (Some(plain), None) if plain.len() < MIN_KEY_LEN => {
                errs.push(format!("{p}.key"), format!("is too short: API keys need at least {MIN_KEY_LEN} characters"));
                None
            }
            (Some(plain), None) => Some(Sha256::digest(plain.as_bytes()).into()),
            (None, Some(hash)) => {
                let mut out = [0u8; 32];
                match hex::decode_to_slice(hash.trim(), &mut out) {
                    Ok(()) => Some(out),
                    Err(_) => {
                        errs.push(format!("{p}.key_sha256"), "must be 64 hex digits (`weir key hash` prints them)");
                        None
                    }
                }
            }
            _ => {
                errs.push(p.clone(), "needs exactly one of `key` (e.g. \"${ENV_VAR}\") or `key_sha256`");
                None
            }
        };
        if let Some(sha256) = sha256 {
            if !key_hashes.insert(sha256) {
                errs.push(p, "has the same key as an earlier entry");
            }
            keys.push(ApiKey { name: k.name, team: k.team, sha256 });
        }
    }
    if key_hashes.is_empty() && errs.0.is_empty() && !listen.ip().is_loopback() {
        errs.push(
            "keys",
            format!(
                "no API keys are configured, which is allowed only on a loopback address, but server.listen is {listen}; \
                 add a [[keys]] entry or listen on 127.0.0.1"
            ),
        );
    }

    // [[plugins]], chain, per-model chains
    let mut plugins = Vec::with_capacity(raw.plugins.len());
    for (i, p) in raw.plugins.into_iter().enumerate() {
        let path = format!("plugins[{i}]");
        if !is_name(&p.name) {
            errs.push(format!("{path}.name"), format!("{:?} is not a valid name (letters, digits and -_.:/)", p.name));
        } else if plugins.iter().any(|q: &PluginConfig| q.name == p.name) {
            errs.push(format!("{path}.name"), format!("plugin {:?} is defined twice", p.name));
        }
        let source = match p.source.strip_prefix("builtin:") {
            Some(name) if !name.is_empty() => PluginSource::Builtin(name.to_owned()),
            Some(_) => {
                errs.push(format!("{path}.source"), "`builtin:` needs a plugin name, e.g. \"builtin:router\"");
                PluginSource::Builtin(String::new())
            }
            None if p.source.ends_with(".wasm") => PluginSource::File(base_dir.join(&p.source)),
            None => {
                errs.push(
                    format!("{path}.source"),
                    format!("{:?} is neither `builtin:NAME` nor a path to a `.wasm` component", p.source),
                );
                PluginSource::File(PathBuf::new())
            }
        };
        let on_error = match p.on_error.as_deref() {
            None | Some("closed") => OnError::Closed,
            Some("open") => OnError::Open,
            Some(other) => {
                errs.push(format!("{path}.on_error"), format!("{other:?} is not \"open\" or \"closed\""));
                OnError::Closed
            }
        };
        let deadline = errs.duration(&format!("{path}.deadline"), p.deadline.as_deref(), Duration::from_millis(10));
        let memory = match p.memory.as_deref().map(parse_bytes) {
            None => DEFAULT_PLUGIN_MEMORY,
            Some(Ok(n)) if (64 * 1024..=MAX_PLUGIN_MEMORY).contains(&n) => n,
            Some(Ok(n)) => {
                errs.push(format!("{path}.memory"), format!("{n} bytes is outside 64KiB..=4GiB"));
                DEFAULT_PLUGIN_MEMORY
            }
            Some(Err(e)) => {
                errs.push(format!("{path}.memory"), e);
                DEFAULT_PLUGIN_MEMORY
            }
        };
        let instances = match p.instances.as_deref() {
            None | Some("pooled") => InstanceMode::Pooled,
            Some("fresh") => InstanceMode::Fresh,
            Some(other) => {
                errs.push(format!("{path}.instances"), format!("{other:?} is not \"pooled\" or \"fresh\""));
                InstanceMode::Pooled
            }
        };
        let recycle_after = match p.recycle_after {
            None => 10_000,
            Some(n) if n > 0 => n as u64,
            Some(n) => {
                errs.push(format!("{path}.recycle_after"), format!("must be positive, got {n}"));
                10_000
            }
        };
        let config_json = match serde_json::to_string(&p.config.unwrap_or_default()) {
            Ok(json) => json,
            Err(e) => {
                errs.push(format!("{path}.config"), format!("cannot be expressed as JSON: {e}"));
                String::from("{}")
            }
        };
        plugins.push(PluginConfig {
            name: p.name,
            source,
            on_error,
            deadline,
            memory,
            instances,
            recycle_after,
            config_json,
        });
    }
    let resolve_chain = |errs: &mut Errors, path: &str, names: &[String]| -> Vec<usize> {
        let mut chain = Vec::with_capacity(names.len());
        for (j, name) in names.iter().enumerate() {
            match plugins.iter().position(|p| &p.name == name) {
                Some(k) if chain.contains(&k) => {
                    errs.push(format!("{path}[{j}]"), format!("plugin {name:?} is listed twice"))
                }
                Some(k) => chain.push(k),
                None => {
                    let known: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
                    errs.push(
                        format!("{path}[{j}]"),
                        format!("unknown plugin {name:?}; defined plugins: [{}]", known.join(", ")),
                    );
                }
            }
        }
        chain
    };
    let chain = match &raw.chain {
        Some(names) => resolve_chain(&mut errs, "chain", names),
        None => (0..plugins.len()).collect(),
    };
    for (i, names) in model_chains.into_iter().enumerate() {
        if let Some(names) = names {
            models[i].plugins = Some(resolve_chain(&mut errs, &format!("models[{i}].plugins"), &names));
        }
    }

    // [prices]
    let mut prices = BTreeMap::new();
    for (name, p) in raw.prices {
        let mut micros = |field: &str, usd: f64| -> u64 {
            if usd.is_finite() && usd >= 0.0 {
                (usd * 1e6).round() as u64
            } else {
                errs.push(format!("prices.{name}.{field}"), format!("must be a non-negative number of USD, got {usd}"));
                0
            }
        };
        let price = Price {
            input: micros("input", p.input),
            output: micros("output", p.output),
            cached_input: micros("cached_input", p.cached_input.unwrap_or(p.input)),
        };
        prices.insert(name, price);
    }

    // [state], [admin]
    let kv_max_bytes = match raw.state.kv_max_bytes {
        None => 64 * 1024 * 1024,
        Some(n) if n > 0 => n as u64,
        Some(n) => {
            errs.push("state.kv_max_bytes", format!("must be positive, got {n}"));
            0
        }
    };
    let responses_max_bytes = match raw.state.responses_max_bytes.as_deref().map(parse_bytes) {
        None => 256 * 1024 * 1024,
        Some(Ok(n)) if n >= 64 * 1024 => n,
        Some(Ok(n)) => {
            errs.push("state.responses_max_bytes", format!("{n} bytes is too small; give at least 64KiB"));
            256 * 1024 * 1024
        }
        Some(Err(e)) => {
            errs.push("state.responses_max_bytes", e);
            256 * 1024 * 1024
        }
    };
    let state = State {
        ledger: base_dir.join(raw.state.ledger.as_deref().unwrap_or("weir-ledger.jsonl")),
        plugin_cache: base_dir.join(raw.state.plugin_cache.as_deref().unwrap_or(".weir-cache")),
        kv_max_bytes,
        responses: base_dir.join(raw.state.responses.as_deref().unwrap_or("weir-responses.jsonl")),
        responses_max_bytes,
        responses_ttl: errs.duration(
            "state.responses_ttl",
            raw.state.responses_ttl.as_deref(),
            Duration::from_secs(30 * 24 * 3600),
        ),
    };
    for (i, name) in raw.admin.keys.iter().enumerate() {
        if !keys.iter().any(|k| &k.name == name) {
            errs.push(format!("admin.keys[{i}]"), format!("unknown key {name:?}"));
        }
    }

    if errs.0.is_empty() {
        Ok(Config {
            server,
            retry,
            log,
            upstreams,
            models,
            keys,
            plugins,
            chain,
            prices,
            state,
            admin_keys: raw.admin.keys,
            source: None,
        })
    } else {
        Err(errs.0)
    }
}
