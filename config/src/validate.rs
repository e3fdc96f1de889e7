//! Raw → typed: every check in one pass, every problem collected with its field path. `validate`
//! calls one function per section of the file, in file order; each returns its typed section.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::raw::{
    RawAdmin, RawCapture, RawConfig, RawFailover, RawKey, RawLog, RawModel, RawPlugin, RawPrice, RawRetry, RawServer,
    RawState, RawTimeouts, RawUpstream,
};
use crate::typed::*;
use crate::{Env, FieldError};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;
/// Client connections open at once (`server.max_connections`).
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const MIN_KEY_LEN: usize = 16;
const MAX_ATTEMPTS: i64 = 10;
const DEFAULT_PLUGIN_MEMORY: u64 = 16 * 1024 * 1024;
/// The largest memory cap a plugin may be given: the gateway's pooling allocator reserves a slot
/// this big per instance, so a larger cap could not be honoured and is refused rather than cut.
pub const MAX_PLUGIN_MEMORY: u64 = 256 * 1024 * 1024;

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
    first_token: None,
};

const DEFAULT_RETRY: Retry = Retry {
    max_attempts: 3,
    backoff_base: Duration::from_millis(50),
    backoff_max: Duration::from_secs(2),
    same_target: 1,
    retry_after_max: Duration::from_secs(10),
};

const DEFAULT_FAILOVER: Failover =
    Failover { mid_stream: MidStream::Off, max_attempts: 2, max_delay: Duration::from_secs(10) };

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
            first_token: self.optional_duration(
                &format!("{path}first_token"),
                raw.first_token.as_deref(),
                base.first_token,
            ),
        }
    }

    fn optional_duration(&mut self, path: &str, value: Option<&str>, default: Option<Duration>) -> Option<Duration> {
        match value {
            None => default,
            Some(text) => Some(self.duration(path, Some(text), Duration::ZERO)).filter(|d| !d.is_zero()),
        }
    }

    /// An integer in `range`, or `default` when absent.
    fn count(&mut self, path: &str, value: Option<i64>, range: std::ops::RangeInclusive<i64>, default: u32) -> u32 {
        match value {
            None => default,
            Some(n) if range.contains(&n) => u32::try_from(n).unwrap_or(default),
            Some(n) => {
                self.push(path, format!("must be between {} and {}, got {n}", range.start(), range.end()));
                default
            }
        }
    }

    /// `[retry]` (or a model's `retry`) over `base`, field by field.
    fn retry(&mut self, path: &str, raw: &RawRetry, base: Retry) -> Retry {
        Retry {
            max_attempts: self.count(
                &format!("{path}max_attempts"),
                raw.max_attempts,
                1..=MAX_ATTEMPTS,
                base.max_attempts,
            ),
            backoff_base: self.duration(&format!("{path}backoff_base"), raw.backoff_base.as_deref(), base.backoff_base),
            backoff_max: self.duration(&format!("{path}backoff_max"), raw.backoff_max.as_deref(), base.backoff_max),
            same_target: self.count(
                &format!("{path}same_target"),
                raw.same_target,
                0..=MAX_ATTEMPTS - 1,
                base.same_target,
            ),
            retry_after_max: match raw.retry_after_max.as_deref() {
                // "0s" is allowed here: never wait for a Retry-After.
                Some(text) if humantime::parse_duration(text).is_ok_and(|d| d.is_zero()) => Duration::ZERO,
                other => self.duration(&format!("{path}retry_after_max"), other, base.retry_after_max),
            },
        }
    }

    /// `[failover]` (or a model's `failover`) over `base`, field by field.
    fn failover(&mut self, path: &str, raw: &RawFailover, base: Failover) -> Failover {
        let mid_stream = match raw.mid_stream.as_deref() {
            None => base.mid_stream,
            Some("off") => MidStream::Off,
            Some("continue") => MidStream::Continue,
            Some(other) => {
                self.push(format!("{path}mid_stream"), format!("{other:?} is not \"off\" or \"continue\""));
                base.mid_stream
            }
        };
        Failover {
            mid_stream,
            max_attempts: self.count(
                &format!("{path}max_attempts"),
                raw.max_attempts,
                1..=MAX_ATTEMPTS,
                base.max_attempts,
            ),
            max_delay: self.duration(&format!("{path}max_delay"), raw.max_delay.as_deref(), base.max_delay),
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
fn provider_settings(errs: &mut Errors, p: &str, kind: UpstreamKind, u: &RawUpstream, base_dir: &Path) -> Provider {
    let present = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
    const AWS: &[UpstreamKind] = &[UpstreamKind::Bedrock, UpstreamKind::SageMaker];
    const AZURE: &[UpstreamKind] = &[UpstreamKind::AzureOpenAi, UpstreamKind::AzureMl];
    let fields: [(&str, bool, &[UpstreamKind]); 16] = [
        ("region", present(&u.region), AWS),
        ("access_key_id", present(&u.access_key_id), AWS),
        ("secret_access_key", present(&u.secret_access_key), AWS),
        ("session_token", present(&u.session_token), AWS),
        ("profile", present(&u.profile), AWS),
        ("project", present(&u.project), &[UpstreamKind::Vertex]),
        ("location", present(&u.location), &[UpstreamKind::Vertex]),
        (
            "credentials_file",
            present(&u.credentials_file),
            &[UpstreamKind::Vertex, UpstreamKind::Bedrock, UpstreamKind::SageMaker],
        ),
        ("api_version", present(&u.api_version), &[UpstreamKind::AzureOpenAi]),
        ("tenant_id", present(&u.tenant_id), AZURE),
        ("client_id", present(&u.client_id), AZURE),
        ("client_secret", present(&u.client_secret), AZURE),
        ("token_endpoint", present(&u.token_endpoint), AZURE),
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
        UpstreamKind::SageMaker if present(&u.api_key) => {
            errs.push(format!("{p}.api_key"), "SageMaker has no API keys: set access_key_id and secret_access_key, or leave both out for the AWS credential chain");
            Provider::Plain
        }
        UpstreamKind::Bedrock | UpstreamKind::SageMaker => {
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
            Provider::Aws(Aws { region, credentials })
        }
        UpstreamKind::AzureOpenAi | UpstreamKind::AzureMl => {
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
        (UpstreamKind::Bedrock, Provider::Aws(b)) => {
            Some(format!("https://bedrock-runtime.{}.amazonaws.com", b.region))
        }
        (UpstreamKind::SageMaker, Provider::Aws(a)) => {
            Some(format!("https://runtime.sagemaker.{}.amazonaws.com", a.region))
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

/// `[state] backend` and `[state.redis]`. The hold TTL must outlast the longest request, or a
/// request still running would see its reservation given back.
fn backend(errs: &mut Errors, raw: &RawState, base_dir: &Path, longest_request: Duration) -> Backend {
    let redis = raw.redis.as_ref();
    match raw.backend.as_deref() {
        None | Some("embedded") => {
            if redis.is_some() && raw.backend.is_none() {
                errs.push("state.backend", "[state.redis] is set but the backend is embedded; add backend = \"redis\"");
            }
            return Backend::Embedded;
        }
        Some("redis") => {}
        Some(other) => {
            errs.push("state.backend", format!("{other:?} is not \"embedded\" or \"redis\""));
            return Backend::Embedded;
        }
    }
    let Some(r) = redis else {
        errs.push("state.redis", "backend = \"redis\" needs a [state.redis] table with at least `url`");
        return Backend::Embedded;
    };
    let url_ok = |errs: &mut Errors, path: String, url: &str| {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            errs.push(path, format!("{url:?} is not a redis:// or rediss:// (TLS) URL"));
        }
    };
    let nodes = |errs: &mut Errors, what: &str| {
        if r.nodes.is_empty() {
            errs.push("state.redis.nodes", format!("mode = \"{what}\" needs at least one node URL"));
        }
        for (i, n) in r.nodes.iter().enumerate() {
            url_ok(errs, format!("state.redis.nodes[{i}]"), n);
        }
        r.nodes.clone()
    };
    let topology = match r.mode.as_deref() {
        None | Some("standalone") => {
            let url = r.url.clone().unwrap_or_default();
            if url.is_empty() {
                errs.push("state.redis.url", "required for mode = \"standalone\" (e.g. \"redis://127.0.0.1:6379\")");
            } else {
                url_ok(errs, "state.redis.url".into(), &url);
            }
            RedisTopology::Standalone { url }
        }
        Some("cluster") => RedisTopology::Cluster { nodes: nodes(errs, "cluster") },
        Some("sentinel") => {
            let master = r.sentinel_master.clone().unwrap_or_default();
            if master.is_empty() {
                errs.push(
                    "state.redis.sentinel_master",
                    "required for mode = \"sentinel\": the monitored master's name",
                );
            }
            RedisTopology::Sentinel { master, nodes: nodes(errs, "sentinel") }
        }
        Some(other) => {
            errs.push("state.redis.mode", format!("{other:?} is not \"standalone\", \"cluster\" or \"sentinel\""));
            RedisTopology::Standalone { url: String::new() }
        }
    };
    if r.url.is_some() && !matches!(topology, RedisTopology::Standalone { .. }) {
        errs.push("state.redis.url", "only for mode = \"standalone\"; cluster and sentinel use `nodes`");
    }
    let on_unavailable = match r.on_unavailable.as_deref() {
        None | Some("embedded") => OnUnavailable::Embedded,
        Some("fail") => OnUnavailable::Fail,
        Some(other) => {
            errs.push("state.redis.on_unavailable", format!("{other:?} is not \"embedded\" or \"fail\""));
            OnUnavailable::Embedded
        }
    };
    let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "weir:".to_owned());
    if key_prefix.contains(['{', '}']) {
        errs.push("state.redis.key_prefix", "must not contain { or }: Weir places Redis Cluster hash tags itself");
    }
    let hold_ttl =
        errs.duration("state.redis.hold_ttl", r.hold_ttl.as_deref(), longest_request + Duration::from_secs(60));
    if hold_ttl < longest_request {
        errs.push(
            "state.redis.hold_ttl",
            format!("{hold_ttl:?} is shorter than the longest request (timeouts.total = {longest_request:?}); reservations would be given back while requests still run"),
        );
    }
    let timeout = errs.duration("state.redis.timeout", r.timeout.as_deref(), Duration::from_millis(20));
    Backend::Redis(Redis {
        topology,
        username: r.username.clone().filter(|u| !u.is_empty()),
        password: r.password.clone().filter(|p| !p.is_empty()).map(Secret::new),
        tls_ca: r.tls_ca.as_deref().filter(|p| !p.is_empty()).map(|p| base_dir.join(p)),
        key_prefix,
        timeout,
        connect_timeout: errs.duration(
            "state.redis.connect_timeout",
            r.connect_timeout.as_deref(),
            Duration::from_secs(2),
        ),
        on_unavailable,
        ready_requires_redis: r.ready_requires_redis.unwrap_or(false),
        hold_ttl,
    })
}

/// Checks every section in file order (so problems are listed as they appear), then assembles the
/// typed config only if none had a problem.
pub(crate) fn validate(raw: RawConfig, base_dir: &Path, env: &dyn Env) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());
    let server = server(&mut errs, raw.server, base_dir);
    let timeouts = errs.timeouts("timeouts.", &raw.timeouts, DEFAULT_TIMEOUTS);
    let retry = errs.retry("retry.", &raw.retry, DEFAULT_RETRY);
    let failover = errs.failover("failover.", &raw.failover, DEFAULT_FAILOVER);
    let log = log(&mut errs, raw.log);
    let upstreams = upstreams(&mut errs, raw.upstreams, timeouts, base_dir);
    let (mut models, model_chains) = models(&mut errs, raw.models, &upstreams, retry, failover);
    let keys = keys(&mut errs, raw.keys, server.listen);
    let plugins = plugins(&mut errs, raw.plugins, base_dir);
    let chain = chains(&mut errs, raw.chain.as_deref(), model_chains, &plugins, &mut models);
    let prices = prices(&mut errs, raw.prices);
    let longest_request = upstreams.iter().map(|u| u.timeouts.total).max().unwrap_or(DEFAULT_TIMEOUTS.total);
    let state = state(&mut errs, &raw.state, base_dir, env, longest_request);
    admin(&mut errs, &raw.admin, &keys);
    let capture = capture(&mut errs, raw.capture, base_dir);
    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(Config {
        server,
        retry,
        failover,
        log,
        upstreams,
        models,
        keys,
        plugins,
        chain,
        prices,
        state,
        admin_keys: raw.admin.keys,
        capture,
        source: None,
    })
}

/// `[capture]`.
fn capture(errs: &mut Errors, raw: RawCapture, base_dir: &Path) -> Capture {
    let mut bytes = |field: &str, text: Option<&str>, default: u64, least: u64| match text.map(parse_bytes) {
        None => default,
        Some(Ok(n)) if n >= least => n,
        Some(Ok(n)) => {
            errs.push(format!("capture.{field}"), format!("{n} bytes is too small; give at least {least}"));
            default
        }
        Some(Err(e)) => {
            errs.push(format!("capture.{field}"), e);
            default
        }
    };
    let max_file_bytes = bytes("max_file_bytes", raw.max_file_bytes.as_deref(), 64 << 20, 4096);
    let max_payload_bytes = bytes("max_payload_bytes", raw.max_payload_bytes.as_deref(), 256 << 10, 0);
    let max_files = match raw.max_files {
        None => 4,
        Some(n @ 1..=1000) => n as u32,
        Some(n) => {
            errs.push("capture.max_files", format!("must be from 1 to 1000, got {n}"));
            4
        }
    };
    Capture {
        path: base_dir.join(raw.path.as_deref().unwrap_or("weir-capture.jsonl")),
        max_file_bytes,
        max_files,
        max_payload_bytes,
        exclude_teams: raw.exclude_teams,
    }
}

/// `[server]`.
fn server(errs: &mut Errors, raw: RawServer, base_dir: &Path) -> Server {
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        errs.push(
            "server.listen",
            format!("{listen_text:?} is not an address; write e.g. \"127.0.0.1:8080\" or \"[::]:8080\""),
        );
        DEFAULT_LISTEN.parse().expect("the default listen address parses")
    });
    let max_body_bytes = match raw.max_body_bytes {
        None => DEFAULT_MAX_BODY,
        Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(n) => {
            errs.push("server.max_body_bytes", format!("must be positive, got {n}"));
            DEFAULT_MAX_BODY
        }
    };
    let tls = raw.tls.map(|t| Tls { cert: base_dir.join(t.cert), key: base_dir.join(t.key) });
    Server {
        listen,
        tls,
        max_body_bytes,
        header_read_timeout: errs.duration(
            "server.header_read_timeout",
            raw.header_read_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        idle_timeout: errs.duration("server.idle_timeout", raw.idle_timeout.as_deref(), Duration::from_secs(60)),
        max_connections: match raw.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            Some(n) => {
                errs.push("server.max_connections", format!("must be positive, got {n}"));
                DEFAULT_MAX_CONNECTIONS
            }
        },
        shutdown_grace: errs.duration("server.shutdown_grace", raw.shutdown_grace.as_deref(), Duration::from_secs(30)),
    }
}

/// `[log]`.
fn log(errs: &mut Errors, raw: RawLog) -> Logging {
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errs.push("log.format", format!("{other:?} is not a log format; use \"text\" or \"json\""));
            LogFormat::Text
        }
    };
    Logging { format, level: raw.level.unwrap_or_else(|| "info".to_owned()) }
}

/// `[[upstreams]]`; `timeouts` are the `[timeouts]` each one may override.
fn upstreams(errs: &mut Errors, raw: Vec<RawUpstream>, timeouts: Timeouts, base_dir: &Path) -> Vec<Upstream> {
    let mut upstreams = Vec::with_capacity(raw.len());
    let mut names = HashSet::new();
    for (i, u) in raw.into_iter().enumerate() {
        let p = format!("upstreams[{i}]");
        if !is_name(&u.name) {
            errs.push(format!("{p}.name"), format!("{:?} is not a valid name (letters, digits and -_.:/)", u.name));
        } else if !names.insert(u.name.clone()) {
            errs.push(format!("{p}.name"), format!("upstream {:?} is defined twice", u.name));
        }
        upstreams.push(upstream(errs, &p, u, timeouts, base_dir));
    }
    upstreams
}

/// One `[[upstreams]]` entry at path `p`, its name already checked.
fn upstream(errs: &mut Errors, p: &str, u: RawUpstream, timeouts: Timeouts, base_dir: &Path) -> Upstream {
    let kind = match u.kind.as_str() {
        "openai" => UpstreamKind::OpenAi,
        "worker" => UpstreamKind::Worker,
        "azure-openai" => UpstreamKind::AzureOpenAi,
        "bedrock" => UpstreamKind::Bedrock,
        "vertex" => UpstreamKind::Vertex,
        "gemini" => UpstreamKind::Gemini,
        "anthropic" => UpstreamKind::Anthropic,
        "sagemaker" => UpstreamKind::SageMaker,
        "azureml" => UpstreamKind::AzureMl,
        other => {
            errs.push(
                format!("{p}.kind"),
                format!("unknown kind {other:?}; supported: {}", UpstreamKind::NAMES.join(", ")),
            );
            UpstreamKind::OpenAi
        }
    };
    let provider = provider_settings(errs, p, kind, &u, base_dir);
    let local_worker = local_worker(errs, p, kind, &u, base_dir);
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
    let prefill = match u.prefill.as_deref() {
        None if matches!(
            kind,
            UpstreamKind::Bedrock | UpstreamKind::Vertex | UpstreamKind::Gemini | UpstreamKind::Anthropic
        ) =>
        {
            Prefill::Assistant
        }
        None | Some("none") => Prefill::None,
        Some("assistant") => Prefill::Assistant,
        Some("continue-final-message") => Prefill::ContinueFinalMessage,
        Some("prefix") => Prefill::Prefix,
        Some(other) => {
            errs.push(format!("{p}.prefill"), format!("{other:?} is not one of {}", Prefill::NAMES.join(", ")));
            Prefill::None
        }
    };
    let native_responses = u.native_responses.unwrap_or(false);
    if native_responses && matches!(&provider, Provider::Azure(a) if a.api_version.is_some()) {
        errs.push(
            format!("{p}.native_responses"),
            "applies only to the /openai/v1 surface of Azure OpenAI (without api_version)",
        );
    }
    Upstream {
        name: u.name,
        kind,
        endpoint,
        api_key,
        headers,
        timeouts,
        prefill,
        local_worker,
        provider,
        native_responses,
    }
}

/// The worker the gateway starts itself for a `kind = "worker"` upstream that names a `model`.
fn local_worker(
    errs: &mut Errors,
    p: &str,
    kind: UpstreamKind,
    u: &RawUpstream,
    base_dir: &Path,
) -> Option<LocalWorker> {
    match (kind, &u.model, &u.endpoint) {
        (UpstreamKind::Worker, Some(model), None) => {
            let device = u.device.clone().unwrap_or_else(|| "auto".to_owned());
            let valid = matches!(device.as_str(), "auto" | "cpu" | "cuda")
                || device.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
            if !valid {
                errs.push(format!("{p}.device"), format!("{device:?} is not a device; use auto, cpu or cuda:N"));
            }
            if model.trim().is_empty() {
                errs.push(format!("{p}.model"), "is empty; name a model directory, python:PACKAGE/DIR or builtin:NAME");
            }
            // A directory resolves against the config file's folder, like every other path.
            let model = if model.starts_with("python:") || model.starts_with("builtin:") {
                model.clone()
            } else {
                base_dir.join(model).to_string_lossy().into_owned()
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
    }
}

/// `[[models]]`, with each model's own chain (`plugins`) still by name: plugins come later in the
/// file's checks, and [`chains`] resolves them. A model's `retry` and `failover` go over the file's.
fn models(
    errs: &mut Errors,
    raw: Vec<RawModel>,
    upstreams: &[Upstream],
    retry: Retry,
    failover: Failover,
) -> (Vec<Model>, Vec<Option<Vec<String>>>) {
    let mut models = Vec::with_capacity(raw.len());
    let mut model_chains = Vec::with_capacity(raw.len());
    let mut names = HashSet::new();
    // A target's context window, by `upstream/model`: one value wherever the target is listed.
    let mut windows: BTreeMap<(usize, String), (u32, String)> = BTreeMap::new();
    for (i, m) in raw.into_iter().enumerate() {
        let p = format!("models[{i}]");
        if m.name.trim().is_empty() {
            errs.push(format!("{p}.name"), "must not be empty");
        } else if !names.insert(m.name.clone()) {
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
            let context_window = match t.context_window {
                None => None,
                Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => u32::try_from(n).ok(),
                Some(n) => {
                    errs.push(format!("{tp}.context_window"), format!("must be a positive number of tokens, got {n}"));
                    None
                }
            };
            if let (Some(window), Some(model)) = (context_window, &t.model) {
                match windows.get(&(upstream, model.clone())) {
                    Some((other, at)) if *other != window => errs.push(
                        format!("{tp}.context_window"),
                        format!("{window} differs from the {other} given for the same target at {at}"),
                    ),
                    Some(_) => {}
                    None => {
                        windows.insert((upstream, model.clone()), (window, format!("{tp}.context_window")));
                    }
                }
            }
            targets.push(Target { upstream, model: t.model, context_window });
        }
        let model_retry = errs.retry(&format!("{p}.retry."), m.retry.as_ref().unwrap_or(&RawRetry::default()), retry);
        let model_failover =
            errs.failover(&format!("{p}.failover."), m.failover.as_ref().unwrap_or(&RawFailover::default()), failover);
        let first_token = m
            .timeouts
            .as_ref()
            .and_then(|t| errs.optional_duration(&format!("{p}.timeouts.first_token"), t.first_token.as_deref(), None));
        models.push(Model {
            name: m.name,
            targets,
            plugins: None,
            retry: model_retry,
            first_token,
            failover: model_failover,
            capture_percent: match m.capture {
                None => 0.0,
                Some(percent) if (0.0..=100.0).contains(&percent) => percent,
                Some(percent) => {
                    errs.push(format!("{p}.capture"), format!("must be a percentage from 0 to 100, got {percent}"));
                    0.0
                }
            },
        });
        model_chains.push(m.plugins);
    }
    (models, model_chains)
}

/// `[[keys]]`, and the rule that only a loopback listener may serve without them.
fn keys(errs: &mut Errors, raw: Vec<RawKey>, listen: SocketAddr) -> Vec<ApiKey> {
    let mut keys = Vec::with_capacity(raw.len());
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, k) in raw.into_iter().enumerate() {
        let p = format!("keys[{i}]");
        if !is_name(&k.name) {
            errs.push(format!("{p}.name"), format!("{:?} is not a valid name (letters, digits and -_.:/)", k.name));
        } else if !names.insert(k.name.clone()) {
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
            if !hashes.insert(sha256) {
                errs.push(p, "has the same key as an earlier entry");
            }
            keys.push(ApiKey { name: k.name, team: k.team, sha256 });
        }
    }
    // Said only when nothing else is wrong: a broken `[[keys]]` entry explains the missing keys better.
    if hashes.is_empty() && errs.0.is_empty() && !listen.ip().is_loopback() {
        errs.push(
            "keys",
            format!(
                "no API keys are configured, which is allowed only on a loopback address, but server.listen is {listen}; \
                 add a [[keys]] entry or listen on 127.0.0.1"
            ),
        );
    }
    keys
}

/// `[[plugins]]`, each with its defaults.
fn plugins(errs: &mut Errors, raw: Vec<RawPlugin>, base_dir: &Path) -> Vec<PluginConfig> {
    let mut plugins = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let path = format!("plugins[{i}]");
        if !is_name(&p.name) {
            errs.push(format!("{path}.name"), format!("{:?} is not a valid name (letters, digits and -_.:/)", p.name));
        } else if plugins.iter().any(|q: &PluginConfig| q.name == p.name) {
            errs.push(format!("{path}.name"), format!("plugin {:?} is defined twice", p.name));
        }
        plugins.push(plugin(errs, &path, p, base_dir));
    }
    plugins
}

/// One `[[plugins]]` entry at `path`, its name already checked.
fn plugin(errs: &mut Errors, path: &str, p: RawPlugin, base_dir: &Path) -> PluginConfig {
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
            errs.push(
                format!("{path}.memory"),
                format!("{n} bytes is outside 64KiB..=256MiB (the most a plugin instance may have)"),
            );
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
    let quarantine = Quarantine {
        faults: match p.quarantine.faults {
            None => 10,
            Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => n as u32,
            Some(n) => {
                errs.push(format!("{path}.quarantine.faults"), format!("must be 0 (never) or more, got {n}"));
                10
            }
        },
        window: errs.duration(
            &format!("{path}.quarantine.window"),
            p.quarantine.window.as_deref(),
            Duration::from_secs(10),
        ),
        cooldown: errs.duration(
            &format!("{path}.quarantine.cooldown"),
            p.quarantine.cooldown.as_deref(),
            Duration::from_secs(30),
        ),
    };
    let config_json = match serde_json::to_string(&p.config.unwrap_or_default()) {
        Ok(json) => json,
        Err(e) => {
            errs.push(format!("{path}.config"), format!("cannot be expressed as JSON: {e}"));
            String::from("{}")
        }
    };
    PluginConfig { name: p.name, source, on_error, deadline, memory, instances, recycle_after, quarantine, config_json }
}

/// `chain` (the default chain; every plugin in file order when absent) and each model's own chain,
/// names resolved to indexes into `plugins`. Returns the default chain and sets the models'.
fn chains(
    errs: &mut Errors,
    default: Option<&[String]>,
    model_chains: Vec<Option<Vec<String>>>,
    plugins: &[PluginConfig],
    models: &mut [Model],
) -> Vec<usize> {
    let chain = match default {
        Some(names) => resolve_chain(errs, "chain", names, plugins),
        None => (0..plugins.len()).collect(),
    };
    for (i, names) in model_chains.into_iter().enumerate() {
        if let Some(names) = names {
            models[i].plugins = Some(resolve_chain(errs, &format!("models[{i}].plugins"), &names, plugins));
        }
    }
    chain
}

fn resolve_chain(errs: &mut Errors, path: &str, names: &[String], plugins: &[PluginConfig]) -> Vec<usize> {
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
}

/// `[prices]`: USD per million tokens → millionths of a dollar.
fn prices(errs: &mut Errors, raw: BTreeMap<String, RawPrice>) -> BTreeMap<String, Price> {
    let mut prices = BTreeMap::new();
    for (name, p) in raw {
        // Token prices per million tokens in micro-dollars (a picodollar a token); prediction
        // prices in picodollars.
        let mut scaled = |field: &str, usd: f64, scale: f64| -> u64 {
            if usd.is_finite() && usd >= 0.0 {
                (usd * scale).round() as u64
            } else {
                errs.push(format!("prices.{name}.{field}"), format!("must be a non-negative number of USD, got {usd}"));
                0
            }
        };
        let price = Price {
            input: scaled("input", p.input, 1e6),
            output: scaled("output", p.output, 1e6),
            cached_input: scaled("cached_input", p.cached_input.unwrap_or(p.input), 1e6),
            per_request: scaled("per_request", p.per_request.unwrap_or(0.0), 1e12),
            per_1k_instances: scaled("per_1k_instances", p.per_1k_instances.unwrap_or(0.0), 1e12),
            per_compute_second: scaled("per_compute_second", p.per_compute_second.unwrap_or(0.0), 1e12),
        };
        prices.insert(name, price);
    }
    prices
}

/// `[state]`; `env` locates the user's cache directory for the compiled plugins, and the longest
/// request (`timeouts.total` of the slowest upstream) bounds Redis's hold TTL from below.
fn state(errs: &mut Errors, raw: &RawState, base_dir: &Path, env: &dyn Env, longest_request: Duration) -> State {
    let kv_max_bytes = match raw.kv_max_bytes {
        None => 64 * 1024 * 1024,
        Some(n) if n > 0 => n as u64,
        Some(n) => {
            errs.push("state.kv_max_bytes", format!("must be positive, got {n}"));
            0
        }
    };
    let plugin_cache = match raw.plugin_cache.as_deref() {
        Some(dir) => base_dir.join(dir),
        // Where the platform has no cache directory for this user, next to the config as before.
        None => {
            user_cache_dir(env).map_or_else(|| base_dir.join(".weir-cache"), |dir| dir.join("weir").join("plugins"))
        }
    };
    let backend = backend(errs, raw, base_dir, longest_request);
    let responses_max_bytes = match raw.responses_max_bytes.as_deref().map(parse_bytes) {
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
    let ledger_fsync = match raw.ledger_fsync.as_deref() {
        Some("always") => LedgerFsync::Always,
        other => LedgerFsync::Every(errs.duration("state.ledger_fsync", other, Duration::from_secs(1))),
    };
    State {
        backend,
        ledger: base_dir.join(raw.ledger.as_deref().unwrap_or("weir-ledger.jsonl")),
        ledger_fsync,
        // wasmtime's cache takes only an absolute directory (it turns itself off otherwise), and a
        // relative one would move with the working directory of whoever starts Weir.
        plugin_cache: std::path::absolute(&plugin_cache).unwrap_or(plugin_cache),
        kv_max_bytes,
        plugin_metrics_grace: errs.duration(
            "state.plugin_metrics_grace",
            raw.plugin_metrics_grace.as_deref(),
            Duration::from_secs(120),
        ),
        responses: base_dir.join(raw.responses.as_deref().unwrap_or("weir-responses.jsonl")),
        responses_max_bytes,
        responses_ttl: errs.duration(
            "state.responses_ttl",
            raw.responses_ttl.as_deref(),
            Duration::from_secs(30 * 24 * 3600),
        ),
    }
}

/// The platform's directory for per-user caches, read through `env`: `%LOCALAPPDATA%` on Windows,
/// `~/Library/Caches` on macOS, else `$XDG_CACHE_HOME` (only when absolute, as the XDG spec asks) or
/// `~/.cache`. `None` where the environment names no home, e.g. a bare service account.
fn user_cache_dir(env: &dyn Env) -> Option<PathBuf> {
    let absolute = |name: &str| env.get(name).map(PathBuf::from).filter(|p| p.is_absolute());
    if cfg!(windows) {
        absolute("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        absolute("HOME").map(|home| home.join("Library").join("Caches"))
    } else {
        absolute("XDG_CACHE_HOME").or_else(|| absolute("HOME").map(|home| home.join(".cache")))
    }
}

/// `[admin]`: the keys it names must exist.
fn admin(errs: &mut Errors, raw: &RawAdmin, keys: &[ApiKey]) {
    for (i, name) in raw.keys.iter().enumerate() {
        if !keys.iter().any(|k| &k.name == name) {
            errs.push(format!("admin.keys[{i}]"), format!("unknown key {name:?}"));
        }
    }
}
