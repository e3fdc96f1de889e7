//! [`Builder`]: a gateway configured in code for the common cases: upstreams, models with their
//! failover targets, API keys, the built-in policies (rate limits, budgets and costs, the
//! exact-match cache, canary splits), prices and the ledger.
//!
//! It writes the configuration a `weir.toml` would hold, as TOML's data model, and loads it through
//! the file's own validation (`weir_config::load_table`): one set of rules and defaults, and a
//! mistake is reported with the path it would have in the file (`upstreams[1].endpoint`).
//! [`Builder::to_toml`] prints that file. What the builder does not cover (Bedrock, Vertex, Redis,
//! TLS, …) is written as a file and started with [`Weir::from_toml`] or [`Weir::from_file`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};
use weir_config::{Config, ConfigError, FieldError, ProcessEnv};

use super::Weir;
use crate::LoadError;

/// A gateway configured in code: [`Weir::builder`], then [`Builder::start`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use weir::embed::{Budget, Period, RateLimit, Upstream, Weir};
///
/// let weir = Weir::builder()
///     .upstream(Upstream::openai("primary", "http://127.0.0.1:9/v1").api_key("sk-primary"))
///     .upstream(Upstream::openai("backup", "http://127.0.0.1:9/v1"))
///     // Targets in order: the backup answers when the primary fails.
///     .model("gpt-4o-mini", [("primary", "gpt-4o-mini"), ("backup", "gpt-4o-mini")])
///     .key("app", "web", "app-key-0123456789abcdef")
///     .rate_limit(RateLimit::per_key().requests_per_minute(600).tokens_per_minute(200_000))
///     .budget(Budget::team("web", 50.0, Period::Month))
///     .cache(Duration::from_secs(600))
///     .ledger(std::env::temp_dir().join("weir-builder-doc-ledger.jsonl"))
///     .start()
///     .await?;
///
/// let models = http::Request::get("/v1/models")
///     .header("authorization", "Bearer app-key-0123456789abcdef")
///     .body(http_body_util::Empty::<bytes::Bytes>::new())?;
/// assert_eq!(weir.handle(models).await.status(), 200);
/// weir.shutdown().await;
/// # Ok(())
/// # }
/// ```
///
/// A mistake is the file's error, with the file's path:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use weir::embed::{Upstream, Weir};
///
/// let error = Weir::builder()
///     .upstream(Upstream::openai("a", "http://127.0.0.1:9/v1"))
///     .model("m", ["nowhere"])
///     .start()
///     .await
///     .unwrap_err();
/// assert!(error.to_string().contains("models[0].targets[0].upstream"), "{error}");
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `start`"]
pub struct Builder {
    upstreams: Vec<Table>,
    models: Vec<Table>,
    keys: Vec<Table>,
    limits: Vec<Table>,
    costs: bool,
    budgets: Vec<Table>,
    cache: Option<Table>,
    splits: Vec<Table>,
    plugins: Vec<Table>,
    prices: Table,
    retry: Table,
    state: Table,
    base_dir: Option<PathBuf>,
    /// Plugin configs that cannot be configuration at all (not a JSON object), by the plugin's
    /// place among `plugins`: reported by `config` with the path the file gives them.
    problems: Vec<(usize, String)>,
}

impl Weir {
    /// A [`Builder`] for a gateway configured in code.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl Builder {
    /// Adds an upstream: where requests can go, and how to reach it.
    pub fn upstream(mut self, upstream: Upstream) -> Self {
        self.upstreams.push(upstream.0);
        self
    }

    /// Adds a public model, the name clients ask for, answered by `targets` in order: the first
    /// that answers wins, and a failing one (an error, a timeout, a 429 or 5xx) hands over to the
    /// next as `[retry]` allows. A target is an upstream's name (the model name is passed on as
    /// asked), `(upstream, model)`, or a [`Target`]. The name `*` answers every model not named.
    pub fn model<T: Into<Target>>(mut self, name: &str, targets: impl IntoIterator<Item = T>) -> Self {
        let targets = targets.into_iter().map(|t| Value::Table(t.into().0)).collect();
        self.models.push(table([("name", name.into()), ("targets", Value::Array(targets))]));
        self
    }

    /// Adds an API key: a client sending `Authorization: Bearer KEY` is the key `name` of `team`
    /// (what limits, budgets, caches and the ledger count by). Without any key every request is
    /// anonymous and the gateway must listen on loopback only, as for a file.
    pub fn key(mut self, name: &str, team: &str, key: &str) -> Self {
        self.keys.push(table([("name", name.into()), ("team", team.into()), ("key", key.into())]));
        self
    }

    /// [`Builder::key`] with the key's SHA-256 (hex) instead of the key itself, so that the key is
    /// never held by the application.
    pub fn key_sha256(mut self, name: &str, team: &str, sha256_hex: &str) -> Self {
        self.keys.push(table([("name", name.into()), ("team", team.into()), ("key_sha256", sha256_hex.into())]));
        self
    }

    /// Adds a rate limit (the built-in `ratelimit` policy, first in the chain, so that cached
    /// answers count too). A request must fit every limit that applies to it; one that does not
    /// is refused with a 429 and `Retry-After`.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.limits.push(limit.0);
        self
    }

    /// Prices every answer onto the ledger (the built-in `cost` policy), as `weir spend` and the
    /// Python package's `spend()` report it. [`Builder::budget`] turns it on too.
    pub fn costs(mut self) -> Self {
        self.costs = true;
        self
    }

    /// Adds a spending budget (the built-in `cost` policy): a request that the budget has no room
    /// for, counting what requests in flight may still spend, is refused with a 429.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.costs = true;
        self.budgets.push(budget.0);
        self
    }

    /// Caches answers exactly (the built-in `cache` policy) for `ttl`, whole seconds: chat
    /// completions that set `temperature` to 0, and embeddings; each key's own.
    pub fn cache(mut self, ttl: Duration) -> Self {
        let seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        self.cache = Some(table([("ttl_seconds", seconds.into())]));
        self
    }

    /// Sends `weight_percent` (0 to 100) of the users of the public model `model` to `canary`
    /// and the rest to `baseline` (the built-in `canary` policy), sticky per user: each is a
    /// public model name or a target written `upstream/model`.
    pub fn canary(mut self, model: &str, baseline: &str, canary: &str, weight_percent: f64) -> Self {
        self.splits.push(table([
            ("model", model.into()),
            ("baseline", baseline.into()),
            ("canary", canary.into()),
            ("weight", weight_percent.into()),
        ]));
        self
    }

    /// Adds a plugin of your own, after the built-in policies in the chain: `source` is a path to
    /// a `.wasm` component (relative to [`Builder::base_dir`]) or `builtin:NAME`, and `config` its
    /// config table: a `serde_json::json!({...})` object, or any value that serializes as a map.
    pub fn plugin(mut self, name: &str, source: &str, config: impl serde::Serialize) -> Self {
        let mut plugin = table([("name", name.into()), ("source", source.into())]);
        match Value::try_from(config) {
            Ok(config @ Value::Table(_)) => {
                plugin.insert("config".into(), config);
            }
            Ok(other) => self.problems.push((self.plugins.len(), format!("a JSON object, not {}", other.type_str()))),
            Err(error) => self.problems.push((self.plugins.len(), format!("not a config table: {error}"))),
        }
        self.plugins.push(plugin);
        self
    }

    /// The price of the public model or target `model`, in US dollars per million prompt and
    /// completion tokens, replacing the built-in price list's.
    pub fn price(mut self, model: &str, input_per_million: f64, output_per_million: f64) -> Self {
        let price = table([("input", input_per_million.into()), ("output", output_per_million.into())]);
        self.prices.insert(model.into(), Value::Table(price));
        self
    }

    /// How many attempts a request gets in all, across its targets (`[retry] max_attempts`).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.retry.insert("max_attempts".into(), i64::from(attempts).into());
        self
    }

    /// The ledger file (JSON lines) every answered request is recorded in; relative to
    /// [`Builder::base_dir`]. Default: `weir-ledger.jsonl`.
    pub fn ledger(mut self, path: impl AsRef<Path>) -> Self {
        self.state.insert("ledger".into(), path.as_ref().to_string_lossy().into_owned().into());
        self
    }

    /// The folder relative paths (the ledger, plugin files) are resolved against. Default: the
    /// current directory.
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }

    /// The configuration file that configures the same gateway (`weir serve --config` takes it).
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.table()).unwrap_or_else(|e| format!("# not representable as TOML: {e}\n"))
    }

    /// The validated configuration, without starting anything.
    pub fn config(&self) -> Result<Config, LoadError> {
        if !self.problems.is_empty() {
            // The application's plugins come after the built-in policies in the file.
            let builtins = self.builtins().len();
            let problems = self.problems.iter().map(|(at, message)| FieldError {
                path: format!("plugins[{}].config", builtins + at),
                message: message.clone(),
            });
            return Err(LoadError::Config(ConfigError::Invalid(problems.collect())));
        }
        let base_dir = self.base_dir.as_deref().unwrap_or(Path::new("."));
        Ok(weir_config::load_table(self.table(), &ProcessEnv, base_dir)?)
    }

    /// Starts the gateway ([`Weir::from_config`]). It has no file to reload from: change it with
    /// [`Weir::reload_config`] and another builder's [`Builder::config`].
    pub async fn start(self) -> Result<Weir, LoadError> {
        Weir::from_config(self.config()?).await
    }

    fn table(&self) -> Table {
        let mut file = Table::new();
        let mut put = |name: &str, items: &[Table]| {
            if !items.is_empty() {
                file.insert(name.into(), Value::Array(items.iter().cloned().map(Value::Table).collect()));
            }
        };
        put("upstreams", &self.upstreams);
        put("models", &self.models);
        put("keys", &self.keys);
        let mut plugins = self.builtins();
        plugins.extend(self.plugins.iter().cloned());
        put("plugins", &plugins);
        for (name, section) in [("prices", &self.prices), ("retry", &self.retry), ("state", &self.state)] {
            if !section.is_empty() {
                file.insert(name.into(), Value::Table(section.clone()));
            }
        }
        file
    }

    /// The built-in policies asked for, in the default configuration's order (limits before the
    /// cache, so that cached answers count; costs before the cache, so that a budget refuses
    /// before a hit is served); the application's own plugins come after them.
    fn builtins(&self) -> Vec<Table> {
        let mut plugins = Vec::new();
        if !self.limits.is_empty() {
            plugins.push(builtin("ratelimit", [("limits", tables(&self.limits))]));
        }
        if self.costs {
            plugins.push(builtin("cost", [("budgets", tables(&self.budgets))]));
        }
        if let Some(cache) = &self.cache {
            plugins.push(builtin_with("cache", cache.clone()));
        }
        if !self.splits.is_empty() {
            plugins.push(builtin("canary", [("splits", tables(&self.splits))]));
        }
        plugins
    }
}

/// An upstream for [`Builder::upstream`].
#[derive(Debug, Clone)]
pub struct Upstream(Table);

impl Upstream {
    /// Any server that speaks OpenAI's API (OpenAI itself, vLLM, Ollama, LM Studio, a remote
    /// `weir worker` …), at `endpoint`, its base URL (`https://api.openai.com/v1`).
    pub fn openai(name: &str, endpoint: &str) -> Self {
        Self(table([("name", name.into()), ("kind", "openai".into()), ("endpoint", endpoint.into())]))
    }

    /// Anthropic's Messages API (`https://api.anthropic.com` unless [`Upstream::endpoint`] says
    /// otherwise); give it [`Upstream::api_key`].
    pub fn anthropic(name: &str) -> Self {
        Self(table([("name", name.into()), ("kind", "anthropic".into())]))
    }

    /// A model served by a local worker inside this process: a model directory, `python:PKG/DIR`
    /// (a model shipped in a Python package) or `builtin:weir-tiny-chat`; on the CPU unless a GPU
    /// is found ([`Upstream::device`]).
    pub fn local_worker(name: &str, model: &str) -> Self {
        Self(table([("name", name.into()), ("kind", "worker".into()), ("model", model.into())]))
    }

    /// The API key sent to the upstream.
    pub fn api_key(mut self, key: &str) -> Self {
        self.0.insert("api_key".into(), key.into());
        self
    }

    /// The base URL, for an upstream kind with a default one.
    pub fn endpoint(mut self, endpoint: &str) -> Self {
        self.0.insert("endpoint".into(), endpoint.into());
        self
    }

    /// A header sent with every request to this upstream.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let headers = self.0.entry("headers").or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(headers) = headers {
            headers.insert(name.into(), value.into());
        }
        self
    }

    /// A local worker's device: `auto` (the default), `cpu` or `cuda:N`.
    pub fn device(mut self, device: &str) -> Self {
        self.0.insert("device".into(), device.into());
        self
    }
}

/// One target of a model for [`Builder::model`]: an upstream, and the model name sent to it.
#[derive(Debug, Clone)]
pub struct Target(Table);

impl Target {
    /// The upstream named `upstream`, passing the model name on as the client asked it.
    pub fn new(upstream: &str) -> Self {
        Self(table([("upstream", upstream.into())]))
    }

    /// The model name sent to the upstream instead.
    pub fn model(mut self, model: &str) -> Self {
        self.0.insert("model".into(), model.into());
        self
    }

    /// The tokens the model takes in one request, prompt and completion: a request that cannot
    /// fit skips this target.
    pub fn context_window(mut self, tokens: u32) -> Self {
        self.0.insert("context_window".into(), i64::from(tokens).into());
        self
    }
}

impl From<&str> for Target {
    fn from(upstream: &str) -> Self {
        Self::new(upstream)
    }
}

impl From<(&str, &str)> for Target {
    fn from((upstream, model): (&str, &str)) -> Self {
        Self::new(upstream).model(model)
    }
}

/// A rate limit for [`Builder::rate_limit`]: counted per key, per team, per end user or for
/// everyone, over a sliding minute, with any of the limits set.
#[derive(Debug, Clone)]
pub struct RateLimit(Table);

impl RateLimit {
    /// Each API key has its own limits.
    pub fn per_key() -> Self {
        Self::per(&["key"])
    }

    /// Each team (all its keys together) has its own limits.
    pub fn per_team() -> Self {
        Self::per(&["team"])
    }

    /// Each end user (OpenAI's `user` field) has its own limits.
    pub fn per_user() -> Self {
        Self::per(&["user"])
    }

    /// One set of limits shared by every request.
    pub fn global() -> Self {
        Self::per(&[])
    }

    fn per(dimensions: &[&str]) -> Self {
        Self(table([("per", dimensions.iter().map(|&d| Value::from(d)).collect::<Vec<_>>().into())]))
    }

    /// Counted for each public model apart (per key and model, say).
    pub fn each_model(mut self) -> Self {
        if let Some(Value::Array(per)) = self.0.get_mut("per") {
            per.push("model".into());
        }
        self
    }

    /// Only for requests for these public models.
    pub fn models<'a>(mut self, models: impl IntoIterator<Item = &'a str>) -> Self {
        self.0.insert("models".into(), models.into_iter().map(Value::from).collect::<Vec<_>>().into());
        self
    }

    /// Requests per minute.
    pub fn requests_per_minute(self, n: u64) -> Self {
        self.set("requests_per_minute", n)
    }

    /// Tokens per minute, prompt and completion (a request reserves its worst case, its
    /// `max_tokens`, and is charged what it used).
    pub fn tokens_per_minute(self, n: u64) -> Self {
        self.set("tokens_per_minute", n)
    }

    /// Requests in flight at once.
    pub fn concurrent(self, n: u32) -> Self {
        self.set("concurrent", u64::from(n))
    }

    fn set(mut self, field: &str, n: u64) -> Self {
        self.0.insert(field.into(), i64::try_from(n).unwrap_or(i64::MAX).into());
        self
    }
}

/// A budget's period: the UTC day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// The UTC day.
    Day,
    /// The UTC calendar month.
    Month,
}

impl Period {
    fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// A spending budget for [`Builder::budget`], in US dollars per period.
#[derive(Debug, Clone)]
pub struct Budget(Table);

impl Budget {
    /// One team's budget (all its keys together).
    pub fn team(team: &str, usd: f64, period: Period) -> Self {
        Self::of("team", team.into(), usd, period)
    }

    /// One API key's budget, by the key's name.
    pub fn key(name: &str, usd: f64, period: Period) -> Self {
        Self::of("key", name.into(), usd, period)
    }

    /// The same budget for every team, each its own.
    pub fn per_team(usd: f64, period: Period) -> Self {
        Self::of("per", "team".into(), usd, period)
    }

    /// The same budget for every API key, each its own.
    pub fn per_key(usd: f64, period: Period) -> Self {
        Self::of("per", "key".into(), usd, period)
    }

    fn of(field: &str, value: Value, usd: f64, period: Period) -> Self {
        Self(table([(field, value), ("usd", usd.into()), ("period", period.as_str().into())]))
    }
}

fn table<const N: usize>(entries: [(&str, Value); N]) -> Table {
    entries.into_iter().map(|(name, value)| (name.to_owned(), value)).collect()
}

fn tables(items: &[Table]) -> Value {
    Value::Array(items.iter().cloned().map(Value::Table).collect())
}

fn builtin<const N: usize>(name: &str, config: [(&str, Value); N]) -> Table {
    builtin_with(name, table(config))
}

fn builtin_with(name: &str, config: Table) -> Table {
    table([("name", name.into()), ("source", format!("builtin:{name}").into()), ("config", Value::Table(config))])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builder writes the file a user would: checked against the same configuration written
    /// by hand, loaded through `load_str`.
    #[test]
    fn writes_the_file_a_user_would() {
        let built = Weir::builder()
            .upstream(Upstream::openai("openai", "https://api.openai.com/v1").api_key("sk-1").header("x-org", "o"))
            .upstream(Upstream::local_worker("local", "builtin:weir-tiny-chat").device("cpu"))
            .model("gpt-4o-mini", [Target::new("openai").model("gpt-4o-mini").context_window(128_000)])
            .model("*", ["openai"])
            .key("app", "web", "app-key-0123456789abcdef")
            .rate_limit(RateLimit::per_team().each_model().models(["gpt-4o-mini"]).concurrent(4))
            .budget(Budget::per_key(2.5, Period::Day))
            .cache(Duration::from_secs(60))
            .canary("gpt-4o-mini", "openai/gpt-4o-mini", "openai/gpt-4.1-mini", 10.0)
            .plugin("router", "builtin:router", serde_json::json!({ "default_strategy": "priority" }))
            .price("gpt-4o-mini", 0.15, 0.6)
            .max_attempts(3)
            .ledger("spend.jsonl");
        let by_hand = r#"
            [[upstreams]]
            name = "openai"
            kind = "openai"
            endpoint = "https://api.openai.com/v1"
            api_key = "sk-1"
            headers = { x-org = "o" }

            [[upstreams]]
            name = "local"
            kind = "worker"
            model = "builtin:weir-tiny-chat"
            device = "cpu"

            [[models]]
            name = "gpt-4o-mini"
            targets = [{ upstream = "openai", model = "gpt-4o-mini", context_window = 128000 }]

            [[models]]
            name = "*"
            targets = [{ upstream = "openai" }]

            [[keys]]
            name = "app"
            team = "web"
            key = "app-key-0123456789abcdef"

            [[plugins]]
            name = "ratelimit"
            source = "builtin:ratelimit"
            config = { limits = [{ per = ["team", "model"], models = ["gpt-4o-mini"], concurrent = 4 }] }

            [[plugins]]
            name = "cost"
            source = "builtin:cost"
            config = { budgets = [{ per = "key", usd = 2.5, period = "day" }] }

            [[plugins]]
            name = "cache"
            source = "builtin:cache"
            config = { ttl_seconds = 60 }

            [[plugins]]
            name = "canary"
            source = "builtin:canary"
            config = { splits = [{ model = "gpt-4o-mini", baseline = "openai/gpt-4o-mini", canary = "openai/gpt-4.1-mini", weight = 10.0 }] }

            [[plugins]]
            name = "router"
            source = "builtin:router"
            config = { default_strategy = "priority" }

            [prices]
            gpt-4o-mini = { input = 0.15, output = 0.6 }

            [retry]
            max_attempts = 3

            [state]
            ledger = "spend.jsonl"
        "#;
        let expected = weir_config::load_str(by_hand, &ProcessEnv, Path::new(".")).expect("the hand-written file");
        let config = built.config().expect("the built configuration");
        // `Config` holds secrets that do not print; its debug form hides them alike on both sides.
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
        // And the TOML it prints is that file.
        let printed = weir_config::load_str(&built.to_toml(), &ProcessEnv, Path::new(".")).expect("printed file");
        assert_eq!(format!("{printed:?}"), format!("{expected:?}"));
    }

    #[test]
    fn a_plugin_config_that_is_no_table_is_reported_with_its_path() {
        let error = Weir::builder().plugin("mine", "mine.wasm", serde_json::json!([1, 2])).config().unwrap_err();
        assert!(error.to_string().contains("plugins[0].config: a JSON object, not array"), "{error}");
        // After the built-in policies, as in the file it writes.
        let error = Weir::builder()
            .cache(Duration::from_secs(1))
            .plugin("mine", "mine.wasm", serde_json::json!("x"))
            .config()
            .unwrap_err();
        assert!(error.to_string().contains("plugins[1].config"), "{error}");
        let error = Weir::builder().plugin("mine", "mine.wasm", serde_json::json!({"a": null})).config().unwrap_err();
        assert!(error.to_string().contains("plugins[0].config"), "{error}");
    }

    #[test]
    fn validation_reports_every_problem_with_the_files_paths() {
        let error = Weir::builder()
            .upstream(Upstream::openai("a", "ftp://nowhere"))
            .model("m", [("b", "x")])
            .config()
            .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("upstreams[0].endpoint"), "{text}");
        assert!(text.contains("models[0].targets[0].upstream"), "{text}");
    }
}
