//! The file as written: serde structs that mirror the TOML, reject unknown fields, and are checked by
//! `validate` before anything else sees them. Durations stay strings here so that a bad one is reported
//! with its path and a hint rather than as a serde type error.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<String>,
    pub tls: Option<RawTls>,
    pub max_body_bytes: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub total: Option<String>,
    pub idle: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub max_attempts: Option<i64>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub name: String,
    #[serde(default = "default_kind")]
    pub kind: String,
    pub endpoint: String,
    pub api_key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
}

fn default_kind() -> String {
    "openai".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    pub name: String,
    pub targets: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    pub upstream: String,
    pub model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    pub name: String,
    pub team: String,
    pub key: Option<String>,
    pub key_sha256: Option<String>,
}
