//! Starting a gateway for a test, and the clients that talk to it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use async_openai::config::OpenAIConfig;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weir::Gateway;
use weir_config::MapEnv;

/// Where relative paths of test configs (the ledger, the compile cache) resolve: the build folder,
/// never the sources.
pub fn state_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-state")
}

/// A gateway serving on an ephemeral loopback port.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// Starts a gateway with this configuration text (its `server.listen` is replaced by port 0).
    pub async fn start(config: &str) -> Self {
        let config = weir_config::load_str(config, &MapEnv::default(), &state_dir())
            .unwrap_or_else(|e| panic!("test config: {e}"));
        Self::start_with(config).await
    }

    /// Starts a gateway with an already loaded configuration (one read from a file can reload).
    pub async fn start_with(config: weir_config::Config) -> Self {
        let gateway =
            Gateway::new(config, Box::new(MapEnv::default())).await.unwrap_or_else(|e| panic!("gateway: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(weir::server::serve(listener, gateway.clone(), async move {
            let _ = rx.await;
        }));
        Self { addr, gateway, shutdown: Some(tx), task: Some(task) }
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// An async-openai client for this gateway.
    pub fn openai(&self, key: &str) -> async_openai::Client<OpenAIConfig> {
        async_openai::Client::with_config(OpenAIConfig::new().with_api_base(self.base_url()).with_api_key(key))
    }

    /// Signals shutdown and returns the server task, which ends once draining is over.
    pub fn begin_shutdown(&mut self) -> JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("shut down once")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics")).await.expect("metrics").text().await.expect("metrics text")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A configuration with one mock upstream `mock`, a public model `gpt-test` → `mock-model`, and a
/// wildcard that passes any other name through; `extra` is appended (more tables, keys, …).
pub fn config(mock_url: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

[retry]
backoff_base = "5ms"
backoff_max = "20ms"

[[upstreams]]
name = "mock"
endpoint = "{mock_url}"

[[models]]
name = "gpt-test"
targets = [{{ upstream = "mock", model = "mock-model" }}]

[[models]]
name = "*"
targets = [{{ upstream = "mock" }}]
{extra}
"#
    )
}

/// [`config`] without the wildcard entry: unknown model names are the gateway's 404.
pub fn strict_config(mock_url: &str, extra: &str) -> String {
    config(mock_url, extra).replace("[[models]]\nname = \"*\"\ntargets = [{ upstream = \"mock\" }]", "")
}

/// Posts JSON (or any text) and returns the status, headers and parsed body (`Null` if not JSON).
pub async fn post(url: &str, body: &str, key: Option<&str>) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new().post(url).header("content-type", "application/json").body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Posts a streaming request and returns the status and the raw body bytes.
pub async fn post_raw(url: &str, body: &str) -> (u16, Vec<u8>) {
    post_raw_as(url, body, None).await
}

/// [`post_raw`] with an API key.
pub async fn post_raw_as(url: &str, body: &str, key: Option<&str>) -> (u16, Vec<u8>) {
    let mut request = reqwest::Client::new().post(url).header("content-type", "application/json").body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body").to_vec())
}

/// Asserts an OpenAI-shaped error body and returns its `error` object.
pub fn openai_error(body: &Value) -> &serde_json::Map<String, Value> {
    let error = body.get("error").and_then(Value::as_object).unwrap_or_else(|| panic!("not an OpenAI error: {body}"));
    for field in ["message", "type", "param", "code"] {
        assert!(error.contains_key(field), "error without `{field}`: {body}");
    }
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    error
}

/// The data payloads of an SSE body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_owned))
        .collect()
}

/// The value of a metric line with all of `labels`, or 0 if absent.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The embedded default configuration (`weir::DEFAULT_CONFIG`) read with `env`, its plugins given
/// 2 s deadlines: its built-ins' 10 ms are for a release build with the cores to itself, and a
/// debug build beside other tests can be descheduled for longer. Tests of the chain, not its speed.
pub fn default_config(env: &MapEnv) -> weir_config::Config {
    let mut config = weir_config::load_str(weir::DEFAULT_CONFIG, env, &state_dir()).expect("the default config");
    for plugin in &mut config.plugins {
        plugin.deadline = std::time::Duration::from_secs(2);
    }
    config
}

/// Polls `/metrics` until the metric reaches `expected` (work finished after the response, such as
/// plugins' `on-complete`, lands a moment later), or gives up after five seconds.
pub async fn metric_eventually(gw: &TestGateway, name: &str, labels: &[(&str, &str)], expected: f64) -> f64 {
    let mut value = 0.0;
    for _ in 0..100 {
        value = metric(&gw.metrics().await, name, labels);
        if value >= expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    value
}

/// A configuration with only the server and retry settings of [`config`], and `rest` (upstreams,
/// models) appended: for tests of the cloud providers.
pub fn bare_config(rest: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

[retry]
backoff_base = "5ms"
backoff_max = "20ms"
{rest}
"#
    )
}

/// Posts a JSON body and returns the status, headers and raw body (for streams and errors alike).
pub async fn post_full(url: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let response = reqwest::Client::new().post(url).json(body).send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("body").to_vec())
}

/// The JSON events of an SSE body, and whether it ended with `[DONE]`.
pub fn sse_json(body: &[u8]) -> (Vec<Value>, bool) {
    let data = sse_data(body);
    let done = data.last().is_some_and(|d| d == "[DONE]");
    let events =
        data.iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap_or(Value::Null)).collect();
    (events, done)
}

/// The text a stream's chunks add up to, for choice 0.
pub fn streamed_text(events: &[Value]) -> String {
    events.iter().filter_map(|e| e.pointer("/choices/0/delta/content").and_then(Value::as_str)).collect()
}

/// Runs a Python check script from `gateway/tests/` against the gateway with `key`; it must exit 0
/// and report `N passed, 0 failed`. Returns its output.
pub async fn run_python_script(gw: &TestGateway, name: &str, key: &str) -> String {
    run_python_checks(gw, name, key, &[]).await
}

/// [`run_python_script`] with more environment variables for the script.
pub async fn run_python_checks(gw: &TestGateway, name: &str, key: &str, env: &[(&str, &str)]) -> String {
    let script = format!("{}/tests/{name}", env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let child = tokio::process::Command::new(&python)
        .arg(script)
        .env("PYTHONPATH", python_path())
        .env("WEIR_BASE_URL", gw.base_url())
        .env("WEIR_API_KEY", key)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the script finishes")
        .expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name} failed (`.ci/test` installs the SDKs it needs):\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    stdout
}

/// `PYTHONPATH` for the check scripts: the shared runner `gateway/tests/support/checks.py` first,
/// then whatever the caller had.
fn python_path() -> std::ffi::OsString {
    let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support");
    let inherited = std::env::var_os("PYTHONPATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(support).chain(std::env::split_paths(&inherited)))
        .expect("no path separator in the checkout's path")
}
