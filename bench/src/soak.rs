//! The soak behind `weir-soak`: a `weir serve` process in front of mock upstreams that fail the way
//! real providers fail, driven for a bounded time with a mix of whole chats, streams, embeddings
//! and clients that walk away, while its configuration is reloaded every few seconds. Every model
//! has a healthy fallback, so every request can succeed: the report counts those that did not
//! (wrong status, a stream without `[DONE]` or with an error event, a wrong answer), and samples
//! the process's resident memory and open file descriptors over time (Linux `/proc`).
//!
//! Everything is bounded: the run by `--duration` (at most ten minutes), each request by a timeout,
//! requests in flight by a semaphore; all traffic stays on loopback.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::mock::MockUpstream;

/// The longest soak `weir-soak` runs.
const MAX_DURATION: Duration = Duration::from_secs(600);
/// No request may take longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Command-line options of `weir-soak`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "weir-soak",
    about = "Soaks a weir binary in front of faulty mock upstreams (each with a healthy fallback) with \
             mixed traffic and config reloads, and reports failed requests, memory and open files over time."
)]
pub struct Options {
    /// The weir binary, e.g. target/release/weir.
    #[arg(long)]
    pub weir: PathBuf,
    /// How long to run (at most 10m).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Requests started per second, all kinds together.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub rate: u32,
    /// Requests in flight at most; past it the next start waits.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// How often the configuration is rewritten and reloaded (`POST /admin/reload`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub reload_every: Duration,
    /// How often memory and open files are sampled.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The kinds of request the soak sends, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A whole chat on a model whose primary answers one request in four with a 503.
    Chat503,
    /// A whole chat on a model whose primary answers one in five with a 429 and `Retry-After`.
    Chat429,
    /// A whole chat on a model whose primary resets one connection in four before answering.
    ChatReset,
    /// A stream whose primary breaks one stream in three after four events (continued).
    StreamBreak,
    /// A stream whose primary stalls one stream in four after four events (continued).
    StreamStall,
    /// A stream whose primary sends its first token after 2 s, one stream in four (first token 300ms).
    StreamSlow,
    /// Embeddings on the model whose primary resets connections.
    Embed,
    /// A stream read to its first chunk, then dropped.
    Abort,
}

const KINDS: [Kind; 8] = [
    Kind::Chat503,
    Kind::StreamBreak,
    Kind::Chat429,
    Kind::StreamStall,
    Kind::ChatReset,
    Kind::StreamSlow,
    Kind::Embed,
    Kind::Abort,
];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Chat503 => "chat, primary 503s 1 in 4",
            Kind::Chat429 => "chat, primary 429s (Retry-After 50ms) 1 in 5",
            Kind::ChatReset => "chat, primary resets 1 in 4",
            Kind::StreamBreak => "stream, primary breaks mid-answer 1 in 3",
            Kind::StreamStall => "stream, primary stalls mid-answer 1 in 4",
            Kind::StreamSlow => "stream, primary's first token 2 s late 1 in 4",
            Kind::Embed => "embeddings, primary resets 1 in 4",
            Kind::Abort => "stream, client leaves after the first chunk",
        }
    }

    fn model(self) -> &'static str {
        match self {
            Kind::Chat503 => "chat-503",
            Kind::Chat429 => "chat-429",
            Kind::ChatReset | Kind::Embed => "chat-reset",
            Kind::StreamBreak | Kind::Abort => "stream-break",
            Kind::StreamStall => "stream-stall",
            Kind::StreamSlow => "stream-slow",
        }
    }

    fn streams(self) -> bool {
        matches!(self, Kind::StreamBreak | Kind::StreamStall | Kind::StreamSlow | Kind::Abort)
    }
}

/// Counts per kind of request.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// One sample of the process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
    pub done: u64,
    pub failed: u64,
    pub reloads: u64,
}

/// What a soak found.
#[derive(Debug)]
pub struct Report {
    pub options: Options,
    pub cpus: usize,
    pub load_before: String,
    pub load_after: String,
    kinds: Vec<(Kind, u64, u64, u64)>,
    pub samples: Vec<Sample>,
    pub reloads: u64,
    pub reload_failures: u64,
    /// The first few failures, described.
    pub failures: Vec<String>,
    pub elapsed: Duration,
    /// What the gateway's `/metrics` say it rescued: (what, count).
    pub rescued: Vec<(String, f64)>,
}

/// The mocks, with the faults the models' primaries have.
struct Upstreams {
    healthy: MockUpstream,
    flaky: MockUpstream,
    throttled: MockUpstream,
    resets: MockUpstream,
    breaks: MockUpstream,
    stalls: MockUpstream,
    slow: MockUpstream,
}

impl Upstreams {
    async fn start() -> Self {
        let mock = || MockUpstream::builder().record_requests(false).chunk_interval(Duration::from_millis(5));
        Self {
            healthy: mock().start().await,
            flaky: mock().fail_one_in(4, 503).start().await,
            throttled: mock().fail_one_in(5, 429).retry_after("0.05").start().await,
            resets: mock().reset_one_in(4).start().await,
            breaks: mock().break_stream_after(4).faulty_one_in(3).start().await,
            stalls: mock().stall_stream_after(4).faulty_one_in(4).start().await,
            slow: mock().first_token_delay(Duration::from_secs(2)).faulty_one_in(4).start().await,
        }
    }
}

/// The weir config; `variant` changes with every reload (a retry setting), so each reload builds
/// a new app and its plugin chain.
fn config_toml(listen: SocketAddr, up: &Upstreams, variant: u64) -> String {
    let backoff_max = 50 + variant % 2 * 50;
    format!(
        r#"chain = ["router"]

[server]
listen = "{listen}"

[log]
level = "error"

[retry]
backoff_base = "5ms"
backoff_max = "{backoff_max}ms"

[failover]
mid_stream = "continue"

[[plugins]]
name = "router"
source = "builtin:router"
on_error = "open"
deadline = "50ms"
config = {{ default_strategy = "priority" }}

[[upstreams]]
name = "healthy"
endpoint = "{}"
prefill = "continue-final-message"
[[upstreams]]
name = "flaky"
endpoint = "{}"
[[upstreams]]
name = "throttled"
endpoint = "{}"
[[upstreams]]
name = "resets"
endpoint = "{}"
[[upstreams]]
name = "breaks"
endpoint = "{}"
[[upstreams]]
name = "stalls"
endpoint = "{}"
timeouts = {{ idle = "300ms" }}
[[upstreams]]
name = "slow"
endpoint = "{}"

[[models]]
name = "chat-503"
targets = [{{ upstream = "flaky", model = "mock-model" }}, {{ upstream = "healthy", model = "mock-model" }}]
[[models]]
name = "chat-429"
targets = [{{ upstream = "throttled", model = "mock-model" }}, {{ upstream = "healthy", model = "mock-model" }}]
[[models]]
name = "chat-reset"
targets = [{{ upstream = "resets", model = "mock-model" }}, {{ upstream = "healthy", model = "mock-model" }}]
[[models]]
name = "stream-break"
targets = [{{ upstream = "breaks", model = "mock-model" }}, {{ upstream = "healthy", model = "mock-model" }}]
[[models]]
name = "stream-stall"
targets = [{{ upstream = "stalls", model = "mock-model" }}, {{ upstream = "healthy", model = "mock-model" }}]
[[models]]
name = "stream-slow"
targets = [{{ upstream = "slow", model = "mock-model" }}, {{ upstream = "healthy", model = "mock-model" }}]
timeouts = {{ first_token = "300ms" }}
"#,
        up.healthy.base_url(),
        up.flaky.base_url(),
        up.throttled.base_url(),
        up.resets.base_url(),
        up.breaks.base_url(),
        up.stalls.base_url(),
        up.slow.base_url(),
    )
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What the gateway should answer `i`'s request with.
fn prompt(i: u64) -> String {
    format!("soak request {i} says hello")
}

fn request(addr: SocketAddr, kind: Kind, i: u64) -> Result<Request<Full<Bytes>>> {
    let (path, body) = if kind == Kind::Embed {
        ("/v1/embeddings", json!({"model": kind.model(), "input": prompt(i)}))
    } else {
        let mut body = json!({"model": kind.model(), "messages": [{"role": "user", "content": prompt(i)}]});
        if kind.streams() {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        ("/v1/chat/completions", body)
    };
    Ok(Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?)
}

/// Sends request `i` of `kind`; `Err` says why it failed.
async fn exchange(client: &HttpClient, addr: SocketAddr, kind: Kind, i: u64) -> Result<()> {
    let response = client.request(request(addr, kind, i)?).await.context("no response")?;
    let status = response.status();
    let mut body = response.into_body();
    if kind == Kind::Abort {
        ensure!(status == StatusCode::OK, "status {status}");
        let first = body.frame().await.context("no first chunk")?.context("body failed")?;
        ensure!(first.is_data(), "no data");
        // Dropping the body is the client walking away.
        return Ok(());
    }
    let bytes = body.collect().await.context("body failed")?.to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    ensure!(status == StatusCode::OK, "status {status}: {}", text.chars().take(300).collect::<String>());
    let want = format!("echo: {}", prompt(i));
    if kind == Kind::Embed {
        let answer: Value = serde_json::from_slice(&bytes).context("not JSON")?;
        ensure!(answer["data"][0]["embedding"].as_array().is_some_and(|v| !v.is_empty()), "no embedding");
        return Ok(());
    }
    if !kind.streams() {
        let answer: Value = serde_json::from_slice(&bytes).context("not JSON")?;
        let got = answer.pointer("/choices/0/message/content").and_then(Value::as_str);
        ensure!(got == Some(want.as_str()), "answer {got:?}");
        return Ok(());
    }
    let data: Vec<&str> = text.split("\n\n").filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: "))).collect();
    ensure!(data.last() == Some(&"[DONE]"), "no [DONE]: {}", data.last().unwrap_or(&""));
    let mut got = String::new();
    let mut usage = 0;
    for event in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(event).context("an event is not JSON")?;
        ensure!(chunk.get("error").is_none(), "error event: {chunk}");
        got.push_str(chunk.pointer("/choices/0/delta/content").and_then(Value::as_str).unwrap_or_default());
        usage += u32::from(chunk["usage"].is_object());
    }
    ensure!(got == want, "streamed {got:?}");
    ensure!(usage == 1, "{usage} usage chunks");
    Ok(())
}

/// `/proc/<pid>`: resident memory (KiB) and open file descriptors.
fn sample_process(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A running `weir serve`, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(client: &HttpClient, addr: SocketAddr, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("weir exited before it was ready ({status})");
        }
        let req = Request::get(format!("http://{addr}/readyz")).body(Full::new(Bytes::new()))?;
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), client.request(req)).await
            && r.status().is_success()
        {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "weir did not become ready on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the soak. The mocks run on `mock_runtime`'s threads, the clients here.
pub async fn run(options: Options, dir: &Path) -> Result<Report> {
    ensure!(options.duration <= MAX_DURATION, "--duration is at most 10m");
    ensure!(!options.duration.is_zero() && !options.reload_every.is_zero() && !options.sample_every.is_zero());
    let load_before = load_average();
    let up = Upstreams::start().await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = dir.join("weir-soak.toml");
    std::fs::write(&config, config_toml(addr, &up, 0))?;
    let mut child = Command::new(&options.weir)
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(std::io::stderr())
        .spawn()
        .with_context(|| format!("spawning {}", options.weir.display()))?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(512).build_http();
    wait_ready(&client, addr, &mut child).await?;
    let pid = child.id();
    let _process = Process(child);

    let tallies: Arc<Vec<Tally>> = Arc::new(KINDS.iter().map(|_| Tally::default()).collect());
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let gate = Arc::new(Semaphore::new(options.max_in_flight));
    let started = Instant::now();
    let end = started + options.duration;
    let interval = Duration::from_secs_f64(1.0 / f64::from(options.rate));
    let mut next_reload = started + options.reload_every;
    let mut next_sample = started;
    let (mut reloads, mut reload_failures) = (0, 0);
    let mut samples = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    let failed_total = |tallies: &[Tally]| tallies.iter().map(|t| t.failed.load(Ordering::Relaxed)).sum::<u64>();
    let done_total = |tallies: &[Tally]| {
        tallies.iter().map(|t| t.ok.load(Ordering::Relaxed) + t.failed.load(Ordering::Relaxed)).sum::<u64>()
    };
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            if let Some((rss_kib, fds)) = sample_process(pid) {
                samples.push(Sample {
                    at: now - started,
                    rss_kib,
                    fds,
                    done: done_total(&tallies),
                    failed: failed_total(&tallies),
                    reloads,
                });
            }
            next_sample += options.sample_every;
        }
        if now >= next_reload {
            reloads += 1;
            std::fs::write(&config, config_toml(addr, &up, reloads))?;
            let req = Request::post(format!("http://{addr}/admin/reload")).body(Full::new(Bytes::new()))?;
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(30), client.request(req)).await,
                Ok(Ok(r)) if r.status().is_success()
            );
            reload_failures += u64::from(!ok);
            next_reload += options.reload_every;
        }
        let kind = KINDS[(i % KINDS.len() as u64) as usize];
        let permit = gate.clone().acquire_owned().await?;
        let (client, tallies, failures) = (client.clone(), tallies.clone(), failures.clone());
        let slot = (i % KINDS.len() as u64) as usize;
        tasks.spawn(async move {
            let _permit = permit;
            tallies[slot].sent.fetch_add(1, Ordering::Relaxed);
            let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange(&client, addr, kind, i)).await;
            match result {
                Ok(Ok(())) => {
                    tallies[slot].ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    tallies[slot].failed.fetch_add(1, Ordering::Relaxed);
                    let mut f = failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if f.len() < 20 {
                        f.push(format!("{} #{i}: {e:#}", kind.model()));
                    }
                }
                Err(_) => {
                    tallies[slot].failed.fetch_add(1, Ordering::Relaxed);
                    let mut f = failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if f.len() < 20 {
                        f.push(format!("{} #{i}: no answer within {REQUEST_TIMEOUT:?}", kind.model()));
                    }
                }
            }
        });
        while tasks.try_join_next().is_some() {}
        i += 1;
        let at = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
    }
    while tasks.join_next().await.is_some() {}
    // Let the gateway settle (aborted streams, pooled connections) before the last sample.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some((rss_kib, fds)) = sample_process(pid) {
        samples.push(Sample {
            at: started.elapsed(),
            rss_kib,
            fds,
            done: done_total(&tallies),
            failed: failed_total(&tallies),
            reloads,
        });
    }
    let rescued = match scrape(&client, addr).await {
        Ok(metrics) => rescued(&metrics),
        Err(e) => vec![(format!("/metrics could not be read: {e:#}"), 0.0)],
    };
    let kinds = KINDS
        .iter()
        .zip(tallies.iter())
        .map(|(k, t)| {
            (*k, t.sent.load(Ordering::Relaxed), t.ok.load(Ordering::Relaxed), t.failed.load(Ordering::Relaxed))
        })
        .collect();
    let failures = failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    Ok(Report {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        load_before,
        load_after: load_average(),
        kinds,
        samples,
        reloads,
        reload_failures,
        failures,
        elapsed: started.elapsed(),
        rescued,
        options,
    })
}

async fn scrape(client: &HttpClient, addr: SocketAddr) -> Result<String> {
    let req = Request::get(format!("http://{addr}/metrics")).body(Full::new(Bytes::new()))?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await??;
    Ok(String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).into_owned())
}

/// The faults the gateway met and got past, from its metrics: failed attempts by class, retries,
/// continuations, client aborts.
fn rescued(metrics: &str) -> Vec<(String, f64)> {
    let sum = |name: &str, label: Option<(&str, &str)>| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| label.is_none_or(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut out: Vec<(String, f64)> = ["status_5xx", "status_429", "reset", "timeout", "stream", "protocol"]
        .iter()
        .map(|class| {
            (format!("failed upstream attempts, {class}"), sum("weir_upstream_errors_total", Some(("class", class))))
        })
        .collect();
    out.push(("attempts beyond the first".into(), sum("weir_upstream_retries_total", None)));
    for how in ["prefill", "restart"] {
        out.push((format!("streams continued ({how})"), sum("weir_stream_continuations_total", Some(("how", how)))));
    }
    out.push((
        "requests accounted as client aborts".into(),
        sum("weir_requests_total", Some(("outcome", "client_abort"))),
    ));
    out.push(("requests accounted as errors".into(), sum("weir_requests_total", Some(("outcome", "error")))));
    out
}

impl Report {
    /// Requests that failed although a healthy fallback could have answered them.
    pub fn failed(&self) -> u64 {
        self.kinds.iter().map(|k| k.3).sum()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "{} CPUs, load average {} before and {} after; {:?} at {} req/s (at most {} in flight), a reload every {:?}; weir: `{}`.\n",
            self.cpus,
            self.load_before,
            self.load_after,
            self.elapsed,
            o.rate,
            o.max_in_flight,
            o.reload_every,
            o.weir.display()
        )?;
        writeln!(f, "| requests | sent | ok | failed |\n|---|---:|---:|---:|")?;
        let mut totals = (0, 0, 0);
        for (kind, sent, ok, failed) in &self.kinds {
            writeln!(f, "| {} | {sent} | {ok} | {failed} |", kind.label())?;
            totals = (totals.0 + sent, totals.1 + ok, totals.2 + failed);
        }
        writeln!(f, "| **all** | {} | {} | {} |\n", totals.0, totals.1, totals.2)?;
        writeln!(f, "Reloads: {} ({} failed).\n", self.reloads, self.reload_failures)?;
        writeln!(f, "| what the gateway met and got past (its `/metrics`) | count |\n|---|---:|")?;
        for (what, n) in &self.rescued {
            writeln!(f, "| {what} | {} |", n.round() as u64)?;
        }
        writeln!(f)?;
        writeln!(f, "| time | RSS | open fds | requests done | failed | reloads |\n|---:|---:|---:|---:|---:|---:|")?;
        for s in &self.samples {
            writeln!(
                f,
                "| {:.0} s | {:.1} MiB | {} | {} | {} | {} |",
                s.at.as_secs_f64(),
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.done,
                s.failed,
                s.reloads
            )?;
        }
        if !self.failures.is_empty() {
            let mut list = String::new();
            for failure in &self.failures {
                let _ = writeln!(list, "- {failure}");
            }
            writeln!(f, "\nFirst failures:\n{list}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_config_variant_loads_and_serves_every_model_the_soak_asks_for() {
        let up = Upstreams::start().await;
        let listen = SocketAddr::from(([127, 0, 0, 1], 4000));
        for variant in 0..2 {
            let text = config_toml(listen, &up, variant);
            let config = weir_config::load_str(&text, &weir_config::MapEnv::default(), Path::new("/tmp"))
                .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
            for kind in KINDS {
                let model = config.models.iter().find(|m| m.name == kind.model()).expect("served");
                assert_eq!(model.targets.len(), 2, "{}: a faulty primary and a healthy fallback", kind.model());
            }
            assert_eq!(config.retry.backoff_max, Duration::from_millis(50 + variant * 50), "reloads change it");
        }
    }

    #[test]
    fn what_was_rescued_is_read_from_the_metrics() {
        let metrics = "weir_upstream_errors_total{target=\"a/x\",class=\"reset\"} 3\n\
            weir_upstream_errors_total{target=\"b/x\",class=\"reset\"} 2\n\
            weir_upstream_errors_total{target=\"a/x\",class=\"status_5xx\"} 1\n\
            weir_stream_continuations_total{model=\"m\",target=\"b/x\",how=\"prefill\"} 4\n";
        let got = rescued(metrics);
        let find = |what: &str| got.iter().find(|(w, _)| w == what).map(|(_, n)| *n);
        assert_eq!(find("failed upstream attempts, reset"), Some(5.0));
        assert_eq!(find("failed upstream attempts, status_5xx"), Some(1.0));
        assert_eq!(find("streams continued (prefill)"), Some(4.0));
    }
}
