//! A Weir process under test: its config, start-up, readiness and memory as `/proc` reports it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The model names Weir's generated config serves, mapped onto the mock's.
pub const MODEL: &str = "bench-model";
pub const STREAM_MODEL: &str = "bench-stream";
/// The public model of the prediction workload, served by the bench's `weir worker`.
pub const PREDICT_MODEL: &str = "bench-predict";

/// How long `weir serve` may take to answer `GET /readyz` with 200. Plugins are compiled before it
/// does (a few seconds in a release build, less once wasmtime's cache has them), so this is generous.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the sampler reads `/proc/<pid>/status`.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// The default chain of the third target.
#[derive(Debug, Clone)]
pub enum Chain {
    /// `len` copies of one plugin component (a file, or `builtin:<name>`), named `p1`..`pN`,
    /// each with `config` (a TOML inline table) when given.
    Copies { plugin: PathBuf, len: usize, config: Option<String> },
    /// The built-in policies in the order and with the settings of [`BUILTIN_CHAIN`], with their
    /// state in process or, given a URL, in that Redis.
    Builtins { redis: Option<String> },
    /// No default chain; one model `hostile-<name>` per hostile fixture, each with that plugin
    /// alone (`on_error = "open"`, this `deadline`, quarantine off so that every request pays).
    Hostile { deadline: Duration },
}

/// The hostile fixtures of [`Chain::Hostile`], by the model name suffix: a busy loop, a memory
/// bomb, a trap and a host-import hammer.
pub const HOSTILE: &[(&str, &str)] = &[
    ("loop", weir_test_plugins::LOOP),
    ("bomb", weir_test_plugins::MEMORY_BOMB),
    ("trap", weir_test_plugins::TRAP),
    ("hammer", weir_test_plugins::IMPORT_HAMMER),
];

/// The built-in policies as the embedded default configuration runs them: every request goes
/// through each one's hooks; the limits and budget are set high enough never to refuse.
pub const BUILTIN_CHAIN: &[(&str, &str)] = &[
    (
        "ratelimit",
        r#"{ limits = [{ per = ["key"], requests_per_minute = 100000000, tokens_per_minute = 100000000000, concurrent = 100000 }] }"#,
    ),
    ("cost", r#"{ budgets = [{ per = "key", usd = 1000000.0, period = "day" }] }"#),
    ("cache", r#"{ ttl_seconds = 3600 }"#),
    ("router", r#"{ default_strategy = "least-latency" }"#),
    ("canary", r#"{ splits = [] }"#),
];

/// A running `weir serve`, killed (and its temporary config removed) on drop.
#[derive(Debug)]
pub struct Weir {
    child: Child,
    addr: SocketAddr,
    sampler: Sampler,
    // Dropped after the process is killed: the config outlives the process that reads it.
    _config: ConfigDir,
}

/// Resident memory of the process, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct ProcMemory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Weir {
    /// Writes a config pointing at `upstream` (with `chain` as its default plugin chain, if any),
    /// spawns `<bin> serve --config <file>`, and waits until `/readyz` answers 200.
    pub async fn start(bin: &Path, upstream: &str, chain: Option<&Chain>) -> Result<Self> {
        Self::start_with(bin, upstream, chain, None).await
    }

    /// [`Weir::start`], with [`PREDICT_MODEL`] routed to the `weir worker` at `worker`.
    pub async fn start_with(
        bin: &Path,
        upstream: &str,
        chain: Option<&Chain>,
        worker: Option<(SocketAddr, &str)>,
    ) -> Result<Self> {
        let addr = free_loopback_addr()?;
        let dir = ConfigDir::create()?;
        let config = dir.0.join("weir.toml");
        std::fs::write(&config, config_toml(addr, upstream, chain, worker)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            // Weir's output goes to our stderr so that stdout carries only the report.
            .stdout(std::io::stderr())
            .stderr(std::io::stderr())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id();
        let sampler = Sampler::start(move || Ok(proc_memory(pid)?.rss_kib));
        let mut weir = Self { child, addr, sampler, _config: dir };
        weir.wait_ready().await?;
        Ok(weir)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many plugin hook calls this Weir has made so far, from its `/metrics`.
    pub async fn plugin_calls(&self) -> Result<u64> {
        let (status, body) = get(self.addr, "/metrics", Duration::from_secs(5)).await?;
        if !status.is_success() {
            bail!("GET /metrics answered {status}");
        }
        Ok(sum_plugin_calls(&String::from_utf8_lossy(&body)))
    }

    pub fn memory(&self) -> Result<ProcMemory> {
        proc_memory(self.child.id())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("weir exited before it was ready ({status}); its log is above");
            }
            if readyz(self.addr).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("weir did not answer GET /readyz with 200 on {} within {READY_TIMEOUT:?}", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl super::Proxy for Weir {
    fn cpu(&self) -> Option<Duration> {
        proc_cpu(self.child.id()).ok()
    }

    fn reset_peak_rss(&self) {
        self.sampler.reset();
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        self.sampler.peak()
    }

    fn rss_kib(&self) -> Result<u64> {
        Ok(self.memory()?.rss_kib)
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        self.sampler.stop();
        // Errors here mean the process is already gone, which is the goal.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `weir worker` serving one model, killed on drop: the direct target of the prediction
/// workload, and the upstream of the Weirs' [`PREDICT_MODEL`].
#[derive(Debug)]
pub struct Worker {
    child: Child,
    addr: SocketAddr,
    /// The model's name as the worker serves it (its directory's name).
    pub model: String,
}

impl Worker {
    /// Spawns `<bin> worker --model <dir> --device cpu` on a free loopback port and waits for
    /// `/health`.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Self> {
        let addr = free_loopback_addr()?;
        let child = Command::new(bin)
            .arg("worker")
            .arg("--model")
            .arg(dir)
            .args(["--device", "cpu", "--listen"])
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .stderr(std::io::stderr())
            .spawn()
            .with_context(|| format!("spawning {} worker", bin.display()))?;
        let model = dir.file_name().and_then(|n| n.to_str()).unwrap_or("model").to_owned();
        let mut worker = Self { child, addr, model };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = worker.child.try_wait()? {
                bail!("weir worker exited before it was ready ({status}); its log is above");
            }
            if matches!(get(addr, "/health", Duration::from_secs(1)).await, Ok((s, _)) if s.is_success()) {
                return Ok(worker);
            }
            if Instant::now() >= deadline {
                bail!("weir worker did not answer GET /health on {addr} within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory for the generated config, removed on drop.
#[derive(Debug)]
pub(super) struct ConfigDir(PathBuf);

impl ConfigDir {
    pub(super) fn create() -> Result<Self> {
        // Unique per process and per start, so parallel tests do not share a config.
        static STARTS: AtomicU64 = AtomicU64::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("weir-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        // Leaving a small file in the temp dir is not worth failing a run over.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The weir config: one OpenAI-kind upstream (the mock, no keys) and the two bench models; with a
/// `chain`, also `chain.len` plugins `p1`..`pN` loading the same component, all in the default chain.
/// The compile cache stays at its default, in the temporary config directory.
pub fn config_toml(
    listen: SocketAddr,
    upstream: &str,
    chain: Option<&Chain>,
    worker: Option<(SocketAddr, &str)>,
) -> Result<String> {
    let (mut top, mut tables) = (String::new(), String::new());
    if let Some((addr, model)) = worker {
        tables.push_str(&format!(
            "\n[[upstreams]]\nname = \"worker\"\nkind = \"worker\"\nendpoint = \"http://{addr}/v1\"\n\n[[models]]\nname = \"{PREDICT_MODEL}\"\ntargets = [{{ upstream = \"worker\", model = {} }}]\n",
            serde_json::to_string(model)?
        ));
    }
    match chain {
        Some(Chain::Copies { plugin, len, config }) => {
            let source = plugin.to_str().with_context(|| format!("plugin path {} is not UTF-8", plugin.display()))?;
            // A JSON string is a valid TOML basic string: the same quotes and escapes.
            let source = serde_json::to_string(source)?;
            let names: Vec<String> = (1..=*len).map(|i| format!("\"p{i}\"")).collect();
            // Top-level keys must come before the first [table].
            top = format!("chain = [{}]\n\n", names.join(", "));
            for name in &names {
                tables.push_str(&format!(
                    "\n[[plugins]]\nname = {name}\nsource = {source}\non_error = \"open\"\ndeadline = \"50ms\"\n"
                ));
                if let Some(config) = config {
                    tables.push_str(&format!("config = {config}\n"));
                }
            }
        }
        Some(Chain::Builtins { redis }) => {
            let names: Vec<String> = BUILTIN_CHAIN.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            top = format!("chain = [{}]\n\n", names.join(", "));
            for (name, config) in BUILTIN_CHAIN {
                tables.push_str(&format!(
                    "\n[[plugins]]\nname = \"{name}\"\nsource = \"builtin:{name}\"\non_error = \"open\"\ndeadline = \"50ms\"\nconfig = {config}\n"
                ));
            }
            // The ledger the cost plugin appends to, beside the temporary config.
            top.push_str("[state]\nledger = \"bench-ledger.jsonl\"\n");
            if let Some(url) = redis {
                // A prefix per run, so a rerun starts from empty buckets.
                let prefix = format!("weir-bench-{}-{}:", std::process::id(), listen.port());
                top.push_str(&format!(
                    "backend = \"redis\"\n\n[state.redis]\nurl = {}\nkey_prefix = \"{prefix}\"\n",
                    serde_json::to_string(url)?
                ));
            }
            top.push('\n');
        }
        Some(Chain::Hostile { deadline }) => {
            top = "chain = []\n\n".to_owned();
            for (name, source) in HOSTILE {
                let source = serde_json::to_string(source)?;
                tables.push_str(&format!(
                    "\n[[models]]\nname = \"hostile-{name}\"\ntargets = [{{ upstream = \"mock\", model = \"{model}\" }}]\nplugins = [\"h-{name}\"]\n\n[[plugins]]\nname = \"h-{name}\"\nsource = {source}\non_error = \"open\"\ndeadline = \"{}ms\"\nmemory = \"8MiB\"\nquarantine = {{ faults = 0 }}\n",
                    deadline.as_millis(),
                    model = super::DIRECT_MODEL,
                ));
            }
        }
        None => {}
    }
    Ok(format!(
        r#"{top}[server]
listen = "{listen}"

[log]
level = "warn"

[[upstreams]]
name = "mock"
kind = "openai"
endpoint = "{upstream}"

[[models]]
name = "{MODEL}"
targets = [{{ upstream = "mock", model = "{model}" }}]

[[models]]
name = "{STREAM_MODEL}"
targets = [{{ upstream = "mock", model = "{stream_model}" }}]
{tables}"#,
        model = super::DIRECT_MODEL,
        stream_model = super::DIRECT_STREAM_MODEL,
    ))
}

/// A loopback address with a port nobody listens on right now. Weir binds it a moment later;
/// another process could take it in between, which on a bench machine is unlikely enough.
pub(super) fn free_loopback_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?)
}

async fn readyz(addr: SocketAddr) -> bool {
    matches!(get(addr, "/readyz", Duration::from_secs(1)).await, Ok((status, _)) if status.is_success())
}

/// One `GET` on a connection of its own; the status and the whole body.
async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(StatusCode, Bytes)> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        let req = Request::get(path).header("host", addr.to_string()).body(Empty::<Bytes>::new())?;
        let response = sender.send_request(req).await?;
        let status = response.status();
        anyhow::Ok((status, response.into_body().collect().await?.to_bytes()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("GET {path}: no answer within {timeout:?}"))?
}

/// The sum of the `weir_plugin_call_seconds_count` series in Prometheus text: all hook calls.
fn sum_plugin_calls(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("weir_plugin_call_seconds_count"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The CPU time (user and system, all threads, living and exited) a process has used so far,
/// from `/proc/<pid>/stat`, at the kernel's 10 ms tick (`USER_HZ` is 100 on every Linux
/// architecture this runs on); over a run of seconds that is well under a percent.
pub(super) fn proc_cpu(pid: u32) -> Result<Duration> {
    const USER_HZ: u64 = 100;
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // After the command name's closing parenthesis: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |n: usize| -> Result<u64> {
        fields.get(n - 3).and_then(|f| f.parse().ok()).with_context(|| format!("no field {n} in {path}"))
    };
    let ticks = ticks(14)? + ticks(15)?;
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

pub(super) fn proc_memory(pid: u32) -> Result<ProcMemory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_suffix("kB")?.trim().parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(ProcMemory { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")? })
}

/// Samples a resident set (`VmRSS` of one process, or a sum over several) on a thread of its own,
/// keeping the maximum since the last reset.
#[derive(Debug)]
pub(super) struct Sampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub(super) fn start(rss_kib: impl Fn() -> Result<u64> + Send + 'static) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak_kib, stop) = (Arc::clone(&peak_kib), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    // Fails once the process is gone or where there is no /proc: nothing to sample.
                    let Ok(kib) = rss_kib() else { return };
                    peak_kib.fetch_max(kib, Ordering::Relaxed);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            }
        });
        Self { peak_kib, stop, thread: Some(thread) }
    }

    /// Starts a new window for [`Sampler::peak`].
    pub(super) fn reset(&self) {
        self.peak_kib.store(0, Ordering::Relaxed);
    }

    /// The highest resident set sampled since the last reset, if any sample was taken.
    pub(super) fn peak(&self) -> Option<u64> {
        Some(self.peak_kib.load(Ordering::Relaxed)).filter(|&kib| kib > 0)
    }

    pub(super) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use weir_config::{MapEnv, OnError, PluginSource};

    use super::*;

    fn load(chain: Option<&Chain>) -> weir_config::Config {
        let listen = SocketAddr::from(([127, 0, 0, 1], 4000));
        let text = config_toml(listen, "http://127.0.0.1:9/v1", chain, None).unwrap_or_else(|e| panic!("{e:#}"));
        weir_config::load_str(&text, &MapEnv::default(), Path::new("/tmp"))
            .unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
    }

    #[test]
    fn plain_config_has_no_plugins() {
        let config = load(None);
        assert!(config.plugins.is_empty() && config.chain.is_empty());
        assert_eq!(config.models.len(), 2);
    }

    #[test]
    fn chain_config_loads_n_copies_of_the_plugin_in_order() {
        // Quotes and backslashes in the path must survive the TOML string.
        let plugin = PathBuf::from("/some dir/with \"quotes\" and \\ back/noop.wasm");
        let config = load(Some(&Chain::Copies { plugin: plugin.clone(), len: 5, config: None }));
        let names: Vec<&str> = config.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["p1", "p2", "p3", "p4", "p5"]);
        assert_eq!(config.chain, [0, 1, 2, 3, 4]);
        for p in &config.plugins {
            assert_eq!(p.source, PluginSource::File(plugin.clone()));
            assert_eq!((p.on_error, p.deadline), (OnError::Open, Duration::from_millis(50)));
        }
        assert_eq!(config.models.len(), 2);
    }

    #[test]
    fn builtin_chain_config_loads_every_builtin_in_order() {
        let config = load(Some(&Chain::Builtins { redis: None }));
        let names: Vec<&str> = config.plugins.iter().map(|p| p.name.as_str()).collect();
        let expected: Vec<&str> = BUILTIN_CHAIN.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, expected);
        assert!(config.plugins.iter().all(|p| matches!(&p.source, PluginSource::Builtin(b) if *b == p.name)));
        assert_eq!(config.chain.len(), BUILTIN_CHAIN.len());
        assert_eq!(config.state.backend, weir_config::Backend::Embedded);

        let config = load(Some(&Chain::Builtins { redis: Some("redis://127.0.0.1:6390".into()) }));
        let weir_config::Backend::Redis(redis) = &config.state.backend else { panic!("not on Redis") };
        assert_eq!(redis.topology, weir_config::RedisTopology::Standalone { url: "redis://127.0.0.1:6390".into() });
        assert!(redis.key_prefix.starts_with("weir-bench-"), "{}", redis.key_prefix);
        assert_eq!(config.plugins.len(), BUILTIN_CHAIN.len());
    }

    #[test]
    fn cpu_time_of_this_process_grows_as_it_works() {
        let pid = std::process::id();
        let before = proc_cpu(pid).unwrap_or_else(|e| panic!("{e:#}"));
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let used = proc_cpu(pid).unwrap_or_else(|e| panic!("{e:#}")).saturating_sub(before);
        // 200 ms of spinning; a starved machine may give less, never none at 10 ms a tick.
        assert!(used >= Duration::from_millis(20) && used <= Duration::from_secs(5), "{used:?}");
    }

    #[test]
    fn plugin_calls_are_summed_over_plugins_and_hooks() {
        let metrics = "# HELP weir_plugin_call_seconds Time per hook call\n\
            weir_plugin_call_seconds_sum{plugin=\"p1\",hook=\"on_request\"} 0.01\n\
            weir_plugin_call_seconds_count{plugin=\"p1\",hook=\"on_request\"} 7\n\
            weir_plugin_call_seconds_count{plugin=\"p2\",hook=\"on_complete\"} 5\n\
            weir_plugin_call_seconds_bucket{plugin=\"p1\",hook=\"on_request\",le=\"0.001\"} 7\n\
            weir_requests_total 12\n";
        assert_eq!(sum_plugin_calls(metrics), 12);
        assert_eq!(sum_plugin_calls(""), 0);
    }
}
