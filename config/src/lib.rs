//! Weir's configuration: TOML text → `${ENV}` interpolation → raw serde structs → [`Config`], a typed
//! value the rest of the gateway can trust without re-checking.
//!
//! Loading is three steps, each in its own module: [`interpolate`] replaces `${NAME}` in string values
//! through an injected [`Env`] (so tests never touch the process environment), `raw` mirrors the file
//! with `deny_unknown_fields`, and `validate` turns it into [`Config`], collecting every problem with
//! the field path that has it (`models[2].targets[0].upstream`) and what would fix it.

mod interpolate;
mod prices;
mod raw;
mod typed;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use interpolate::{Env, MapEnv, ProcessEnv};
pub use prices::default_price;
pub use typed::{
    Anthropic, ApiKey, Aws, AwsCredentials, Azure, AzureAuth, Backend, Capture, Config, Failover, InstanceMode,
    LedgerFsync, LocalWorker, LogFormat, Logging, MidStream, Model, OnError, OnUnavailable, PluginConfig, PluginSource,
    Prefill, Price, Provider, Quarantine, Redis, RedisTopology, Retry, Secret, Server, State, Target, Timeouts, Tls,
    Upstream, UpstreamKind, Vertex, WILDCARD_MODEL,
};
pub use validate::MAX_PLUGIN_MEMORY;

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The text is not valid TOML.
    #[error("not valid TOML: {0}")]
    Syntax(String),
    /// The TOML is valid but the configuration is not; every problem found is listed.
    #[error("{}", FieldErrors(.0))]
    Invalid(Vec<FieldError>),
}

/// One problem, at one place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where: `models[2].targets[0].upstream`, or empty for the whole file.
    pub path: String,
    /// What is wrong and, where it is not obvious, what would fix it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

struct FieldErrors<'a>(&'a [FieldError]);

impl fmt::Display for FieldErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{} in the configuration:", if n == 1 { "" } else { "s" })?;
        for e in self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// Parses and validates configuration text. Relative paths in it (TLS files, plugins, state) resolve
/// against `base_dir`; `env` answers `${NAME}` and locates the user's cache directory.
pub fn load_str(text: &str, env: &dyn Env, base_dir: &Path) -> Result<Config, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
    interpolate::interpolate_table(&mut table, env).map_err(ConfigError::Invalid)?;
    load_table(table, env, base_dir)
}

/// Validates a configuration already in TOML's data model: one built in code rather than parsed
/// from text (`weir::embed::Builder`). Its strings are taken as written, with no `${NAME}`
/// interpolation; otherwise it is checked exactly as [`load_str`] checks a file, every problem
/// reported with the path it would have there.
pub fn load_table(table: toml::Table, env: &dyn Env, base_dir: &Path) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Invalid(vec![FieldError {
            path: if path == "." { String::new() } else { path },
            // toml appends where it was (`in \`upstreams\``) on further lines; the path says that already.
            message: e.into_inner().to_string().lines().next().unwrap_or_default().to_owned(),
        }])
    })?;
    validate::validate(raw, base_dir, env).map_err(ConfigError::Invalid)
}

/// Deserializes the file's raw form (after interpolation, before validation) from `deserializer`
/// and drops it. Not an API: `config/tests/full_example.rs` drives it with a deserializer that
/// records every field the raw structs ask for, to check that `examples/full.toml` sets each one,
/// without the raw structs becoming public.
#[doc(hidden)]
pub fn deserialize_raw<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    <raw::RawConfig as serde::Deserialize>::deserialize(deserializer).map(drop)
}

/// Reads, parses and validates a configuration file.
pub fn load_file(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut config = load_str(&text, env, base_dir)?;
    config.source = Some(path.to_owned());
    Ok(config)
}
