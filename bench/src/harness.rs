//! The load harness behind `weir-bench`: the same workloads, direct to a mock upstream and through Weir.
//!
//! One run starts the mock on its own runtime, spawns `weir serve` pointed at it, and a second
//! `weir serve` with a chain of N no-op plugins, and drives all three with a load generator on a
//! second runtime, one target after the other for each workload: open loops at fixed rates, a
//! closed loop for maximum throughput, and streamed chats. Each Weir's memory is sampled from
//! `/proc` throughout.

pub mod isolation;
mod load;
mod nginx;
mod report;
mod weir;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

pub use load::{Latency, Run};

use crate::mock::MockUpstream;
use load::{Target, Workload};
use nginx::Nginx;
use weir::{Chain, Weir, Worker};

/// Command-line options of `weir-bench`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "weir-bench",
    about = "Runs the same workloads direct to a mock upstream, through Weir, and through Weir with a \
             chain of no-op plugins, and compares them."
)]
pub struct Options {
    /// The weir binary to measure, e.g. target/release/weir.
    #[arg(long, required_unless_present = "direct_only")]
    pub weir: Option<PathBuf>,
    /// Measure the mock upstream only (to try the harness without a weir binary).
    #[arg(long)]
    pub direct_only: bool,
    /// The nginx binary of the `nginx` target, a plain reverse proxy in front of the same mock;
    /// when it is not installed, that target is left out with a note.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// Leave the `nginx` target out.
    #[arg(long)]
    pub no_nginx: bool,
    /// Length of each measured run; every workload runs once per target.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// A short, rough run: --duration 3s --rates 500 --stream-rate 10 (none of which may be given).
    #[arg(long, conflicts_with_all = ["duration", "rates", "stream_rate"])]
    pub quick: bool,
    /// Length of the plugin chain of the third target (a second `weir serve`); 0 leaves it out.
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=64))]
    pub plugins: usize,
    /// The plugin component every link of that chain loads; by default the `noop` test fixture,
    /// which implements all three hooks and does nothing.
    #[arg(long, default_value = weir_test_plugins::NOOP)]
    pub plugin: PathBuf,
    /// The config of each link of that chain, a TOML inline table
    /// (`--plugin builtin:guard --plugin-config '{ rules = [{ detect = ["card"], action = "redact" }] }'`).
    #[arg(long)]
    pub plugin_config: Option<String>,
    /// Give the third target the built-in policies instead (ratelimit, router, cost, … as the
    /// default configuration chains them); `--plugins` and `--plugin` are then ignored.
    #[arg(long)]
    pub builtins: bool,
    /// With `--builtins`: the third target keeps its state in this Redis (`[state] backend =
    /// "redis"`, under a key prefix of its own) instead of in process.
    #[arg(long, requires = "builtins")]
    pub redis: Option<String>,
    /// Open-loop request rates, in requests per second.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500,1000",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub rates: Vec<u32>,
    /// Keep-alive connections per target; also the closed loop's number of workers.
    #[arg(long, default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub connections: usize,
    /// Request rate of the streaming workload, in requests per second.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub stream_rate: u32,
    /// The model of the prediction workload: a `weir worker` serves it on its own (the direct
    /// target) and the Weirs route `bench-predict` to that worker. By default the fraud-score MLP
    /// of the gateway's tests.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/tests/fixtures/worker/fraud-mlp"))]
    pub predict_model: PathBuf,
    /// Request rate of the prediction workload, in requests per second; 0 leaves it out.
    #[arg(long, default_value_t = 500)]
    pub predict_rate: u32,
    /// Measure isolation instead: a model with no plugin, alone, beside a one-core CPU hog, and
    /// while other models' hostile plugins are hammered (see `harness/isolation.rs`); the first of
    /// `--rates` is the healthy model's rate.
    #[arg(long)]
    pub isolation: bool,
    /// With `--isolation`: requests per second to each hostile model.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub attack_rate: u32,
    /// With `--isolation`: which hostile models the attack sends to (of loop, bomb, trap, hammer),
    /// to tell what each kind of hostile plugin costs on its own.
    #[arg(long, value_delimiter = ',', default_value = "loop,bomb,trap,hammer")]
    pub hostile: Vec<String>,
    /// With `--isolation`: the hostile plugins' deadline.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub hostile_deadline: Duration,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = default_threads())]
    pub client_threads: usize,
    /// Worker threads of the mock upstream.
    #[arg(long, default_value_t = default_threads())]
    pub mock_threads: usize,
}

/// Everything one run measured, rendered as markdown by its `Display`.
#[derive(Debug)]
pub struct Report {
    pub options: Options,
    pub cpus: usize,
    pub open_loops: Vec<Comparison>,
    pub closed_loop: Comparison,
    pub streaming: Comparison,
    /// Streamed chats back to back: the most streams per second, and each proxy's CPU per stream
    /// at saturation.
    pub closed_streams: Comparison,
    /// Predictions direct to a `weir worker` and through the Weirs to it (absent with
    /// `--direct-only` or `--predict-rate 0`).
    pub predictions: Option<Comparison>,
    /// Weir's memory, absent with `--direct-only`.
    pub memory: Option<Memory>,
    /// The memory of the Weir with the plugin chain, absent with `--direct-only` or `--plugins 0`.
    pub plugins_memory: Option<Memory>,
    /// nginx's resident set (master and workers) at rest, after start, in KiB.
    pub nginx_idle_kib: Option<u64>,
    /// Why the nginx target was not measured, when it was not.
    pub nginx_skipped: Option<String>,
    /// Hook calls per request that the Weir with the plugin chain made during the measured runs
    /// (from its `/metrics`), to show the chain really ran: 3 × `--plugins` when every request
    /// went through every hook.
    pub hook_calls_per_request: Option<f64>,
}

/// One workload, measured direct to the mock, through nginx, through Weir, and through Weir with
/// the plugin chain.
#[derive(Debug)]
pub struct Comparison {
    pub workload: String,
    pub direct: Run,
    pub nginx: Option<Through>,
    pub weir: Option<Through>,
    pub plugins: Option<Through>,
}

/// One workload's run through one proxy (nginx or a Weir).
#[derive(Debug)]
pub struct Through {
    pub run: Run,
    /// The proxy's peak resident set while this workload ran through it, in KiB.
    pub peak_rss_kib: Option<u64>,
    /// The CPU time the proxy's processes used during the run (user and system).
    pub cpu: Option<Duration>,
}

impl Through {
    /// The proxy's CPU time per successful request (or stream) of the run.
    pub fn cpu_per_response(&self) -> Option<Duration> {
        let ok = u32::try_from(self.run.ok).ok().filter(|&ok| ok > 0)?;
        Some(self.cpu? / ok)
    }
}

/// A proxy process (or group of processes) under test, as `/proc` sees it.
pub trait Proxy {
    /// The CPU time it has used so far, if `/proc` could tell.
    fn cpu(&self) -> Option<Duration>;
    /// Starts a new window for [`Proxy::peak_rss_kib`].
    fn reset_peak_rss(&self);
    /// The highest resident set sampled since the last reset, in KiB.
    fn peak_rss_kib(&self) -> Option<u64>;
    /// The resident set now, in KiB.
    fn rss_kib(&self) -> Result<u64>;
}

/// Weir's resident set (`VmRSS`) at rest and its high-water mark (`VmHWM`), in KiB.
#[derive(Debug)]
pub struct Memory {
    pub idle_kib: u64,
    pub after_load_kib: u64,
    pub high_water_kib: u64,
}

impl Report {
    /// Every workload's comparison, in the order they ran.
    pub fn comparisons(&self) -> impl Iterator<Item = &Comparison> {
        self.open_loops
            .iter()
            .chain([&self.closed_loop, &self.streaming, &self.closed_streams])
            .chain(&self.predictions)
    }

    /// Whether the third target, Weir with the plugin chain, was measured.
    pub fn has_plugins(&self) -> bool {
        self.plugins_memory.is_some() || self.comparisons().any(|c| c.plugins.is_some())
    }
}

impl Options {
    /// These options with `--quick` spelled out.
    pub fn resolved(&self) -> Self {
        let mut options = self.clone();
        if options.quick {
            options.duration = Duration::from_secs(3);
            options.rates = vec![500];
            options.stream_rate = 10;
        }
        options
    }
}

/// What the mock is asked for directly; Weir's config maps its own names onto these.
const DIRECT_MODEL: &str = "mock-model";
const DIRECT_STREAM_MODEL: &str = "fixture:text_a";
/// Unmeasured load before the measured runs, so every target starts with warm connections (and
/// the plugin chain with warm instances).
const WARM_UP: Duration = Duration::from_secs(1);
/// A pause between runs, so the previous run's clean-up (closing, freeing) does not land in the next.
const SETTLE: Duration = Duration::from_millis(300);

/// Runs every workload against the mock, and through both Weirs unless `--direct-only`.
pub fn run(options: &Options) -> Result<Report> {
    let options = &options.resolved();
    ensure!(!options.duration.is_zero(), "--duration must be positive");
    ensure!(!options.rates.is_empty(), "--rates needs at least one rate");
    let bin = options.weir.as_deref().filter(|_| !options.direct_only);
    let chain = match bin {
        None => None,
        Some(_) if options.builtins => Some(Chain::Builtins { redis: options.redis.clone() }),
        Some(_) if options.plugins > 0 => Some(Chain::Copies {
            plugin: options.plugin.clone(),
            len: options.plugins,
            config: options.plugin_config.clone(),
        }),
        Some(_) => None,
    };
    if let Some(Chain::Copies { plugin, .. }) = &chain {
        let builtin = plugin.to_str().is_some_and(|p| p.starts_with("builtin:"));
        ensure!(builtin || plugin.is_file(), "plugin component {} not found (--plugin)", plugin.display());
    }
    // Separate runtimes keep the mock's work off the load generator's threads, so a busy mock
    // does not delay the timestamps the generator takes.
    let mock_runtime = runtime("weir-bench-mock", options.mock_threads)?;
    let client_runtime = runtime("weir-bench-client", options.client_threads)?;
    let mock = mock_runtime
        .block_on(MockUpstream::builder().record_requests(false).try_start())
        .context("starting the mock upstream")?;

    let worker = match bin.filter(|_| options.predict_rate > 0) {
        Some(bin) => {
            eprintln!("starting {} worker --model {}", bin.display(), options.predict_model.display());
            let started = client_runtime.block_on(Worker::start(bin, &options.predict_model));
            Some(started.context("starting the prediction workload's worker")?)
        }
        None => None,
    };
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let nginx = if options.no_nginx || options.direct_only {
        None
    } else {
        eprintln!("starting {} in front of the mock", options.nginx.display());
        let started = client_runtime.block_on(Nginx::start(&options.nginx, mock.addr(), cpus));
        Some(started.context("starting nginx")?)
    };
    if let Some(Err(nginx::Skipped(note))) = &nginx {
        eprintln!("{note}");
    }
    let serves = worker.as_ref().map(|w| (w.addr(), w.model.as_str()));
    let weir = match bin {
        Some(bin) => {
            eprintln!("starting {} against the mock at {}", bin.display(), mock.base_url());
            Some(client_runtime.block_on(Weir::start_with(bin, &mock.base_url(), None, serves))?)
        }
        None => None,
    };
    let with_plugins = match bin.zip(chain.as_ref()) {
        Some((bin, chain)) => {
            match chain {
                Chain::Copies { plugin, len, .. } => eprintln!(
                    "starting {} with a chain of {len} × {} (compiling it first)",
                    bin.display(),
                    plugin.display()
                ),
                Chain::Builtins { redis: None } => {
                    eprintln!("starting {} with the built-in policy chain", bin.display())
                }
                Chain::Builtins { redis: Some(url) } => {
                    eprintln!("starting {} with the built-in policy chain, state in Redis at {url}", bin.display())
                }
                Chain::Hostile { .. } => eprintln!("starting {} with the hostile fixtures", bin.display()),
            }
            let started = client_runtime.block_on(Weir::start_with(bin, &mock.base_url(), Some(chain), serves));
            Some(started.context("starting the weir with the plugin chain")?)
        }
        None => None,
    };
    let proxies = Proxies {
        nginx: nginx.as_ref().and_then(|n| n.as_ref().ok()),
        weir: weir.as_ref(),
        with_plugins: with_plugins.as_ref(),
    };
    let report = client_runtime.block_on(measure(options, &mock, proxies, worker.as_ref())).map(|mut report| {
        report.nginx_skipped = nginx.as_ref().and_then(|n| n.as_ref().err()).map(|s| s.0.clone());
        report
    });
    // Stop the proxies before the mock so they do not log a burst of upstream errors on the way out.
    drop(with_plugins);
    drop(weir);
    drop(nginx);
    drop(worker);
    drop(mock);
    report
}

/// The proxies of a run: those that started.
#[derive(Debug, Clone, Copy)]
struct Proxies<'p> {
    nginx: Option<&'p Nginx>,
    weir: Option<&'p Weir>,
    with_plugins: Option<&'p Weir>,
}

async fn measure(
    options: &Options,
    mock: &MockUpstream,
    proxies: Proxies<'_>,
    worker: Option<&Worker>,
) -> Result<Report> {
    let Proxies { nginx, weir, with_plugins } = proxies;
    let connections = options.connections;
    let direct = Target::new("direct", mock.addr(), DIRECT_MODEL, DIRECT_STREAM_MODEL, connections);
    // nginx passes requests on unchanged, so it is asked for the mock's own model names.
    let nginx_target = nginx.map(|n| Target::new("nginx", n.addr(), DIRECT_MODEL, DIRECT_STREAM_MODEL, connections));
    let through = |name, w: &Weir| {
        let target = Target::new(name, w.addr(), weir::MODEL, weir::STREAM_MODEL, connections);
        if worker.is_some() { target.predicting(weir::PREDICT_MODEL).expect("a valid path") } else { target }
    };
    let direct_worker = worker.map(|w| Target::predict_only("direct", w.addr(), &w.model, connections)).transpose()?;
    let weir_target = weir.map(|w| through("weir", w));
    let plugins_target = with_plugins.map(|w| through("weir+plugins", w));
    let through_nginx = nginx_target.as_ref().zip(nginx.map(|n| n as &dyn Proxy));
    let through_weir = weir_target.as_ref().zip(weir.map(|w| w as &dyn Proxy));
    let through_plugins = plugins_target.as_ref().zip(with_plugins.map(|w| w as &dyn Proxy));
    let idle_kib = weir.map(Weir::memory).transpose()?.map(|m| m.rss_kib);
    let plugins_idle_kib = with_plugins.map(Weir::memory).transpose()?.map(|m| m.rss_kib);
    let nginx_idle_kib = nginx.map(Proxy::rss_kib).transpose()?;

    for target in std::iter::once(&direct).chain(&nginx_target).chain(&weir_target).chain(&plugins_target) {
        target.preflight().await?;
        load::closed_loop(target, Workload::Chat, connections, WARM_UP).await;
    }
    for target in direct_worker.iter().chain(weir_target.iter().chain(&plugins_target).filter(|t| t.predicts())) {
        target.preflight().await?;
        load::closed_loop(target, Workload::Predict, connections, WARM_UP).await;
    }
    let targets = Targets { direct: &direct, nginx: through_nginx, weir: through_weir, plugins: through_plugins };
    let calls_before = match with_plugins {
        Some(w) => Some(w.plugin_calls().await.context("reading the plugin weir's /metrics")?),
        None => None,
    };

    let mut open_loops = Vec::new();
    for &rate in &options.rates {
        let name = format!("open loop, {rate} req/s");
        open_loops.push(compare(&name, &targets, |t| load::open_loop(t, Workload::Chat, rate, options.duration)).await);
    }
    let closed_loop = compare(&format!("closed loop, {connections} connections"), &targets, |t| {
        load::closed_loop(t, Workload::Chat, connections, options.duration)
    })
    .await;
    let streaming = compare(&format!("streaming text_a, {} req/s", options.stream_rate), &targets, |t| {
        load::open_loop(t, Workload::Stream, options.stream_rate, options.duration)
    })
    .await;
    let closed_streams = compare(&format!("streams back to back, {connections} connections"), &targets, |t| {
        load::closed_loop(t, Workload::Stream, connections, options.duration)
    })
    .await;

    let predictions = match &direct_worker {
        Some(direct) => {
            // nginx is left out: the worker's HTTP surface is Weir's own, not the mock's.
            let targets = Targets { direct, nginx: None, weir: through_weir, plugins: through_plugins };
            let name = format!("predictions, {} req/s", options.predict_rate);
            Some(
                compare(&name, &targets, |t| {
                    load::open_loop(t, Workload::Predict, options.predict_rate, options.duration)
                })
                .await,
            )
        }
        None => None,
    };

    tokio::time::sleep(SETTLE).await;
    let hook_calls_per_request = match (with_plugins, calls_before) {
        (Some(w), Some(before)) => {
            let calls = w.plugin_calls().await.context("reading the plugin weir's /metrics")?.saturating_sub(before);
            let sent: usize = open_loops
                .iter()
                .chain([&closed_loop, &streaming, &closed_streams])
                .chain(&predictions)
                .filter_map(|c| c.plugins.as_ref())
                .map(|t| t.run.sent)
                .sum();
            (sent > 0).then(|| calls as f64 / sent as f64)
        }
        _ => None,
    };
    let memory = |weir: Option<&Weir>, idle_kib: Option<u64>| -> Result<Option<Memory>> {
        let (Some(weir), Some(idle_kib)) = (weir, idle_kib) else { return Ok(None) };
        let now = weir.memory()?;
        Ok(Some(Memory { idle_kib, after_load_kib: now.rss_kib, high_water_kib: now.hwm_kib }))
    };
    Ok(Report {
        options: options.clone(),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        open_loops,
        closed_loop,
        streaming,
        closed_streams,
        predictions,
        memory: memory(weir, idle_kib)?,
        plugins_memory: memory(with_plugins, plugins_idle_kib)?,
        nginx_idle_kib,
        nginx_skipped: None,
        hook_calls_per_request,
    })
}

/// The targets every workload runs against, in this order; the Weirs with their processes.
struct Targets<'t> {
    direct: &'t Target,
    nginx: Option<(&'t Target, &'t dyn Proxy)>,
    weir: Option<(&'t Target, &'t dyn Proxy)>,
    plugins: Option<(&'t Target, &'t dyn Proxy)>,
}

/// Runs one workload against the mock, then through nginx, then through Weir, then through Weir
/// with the plugin chain, tracking each proxy's peak memory and CPU time while it is measured.
async fn compare<'t, F>(workload: &str, targets: &Targets<'t>, run: impl Fn(&'t Target) -> F) -> Comparison
where
    F: Future<Output = Run>,
{
    eprintln!("{workload}: direct");
    let direct = run(targets.direct).await;
    tokio::time::sleep(SETTLE).await;
    let through = async |target: Option<(&'t Target, &'t dyn Proxy)>| {
        let (target, proxy) = target?;
        eprintln!("{workload}: through {}", target.name);
        proxy.reset_peak_rss();
        let cpu_before = proxy.cpu();
        let measured = run(target).await;
        let cpu = proxy.cpu().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
        let peak_rss_kib = proxy.peak_rss_kib();
        tokio::time::sleep(SETTLE).await;
        Some(Through { run: measured, peak_rss_kib, cpu })
    };
    let nginx = through(targets.nginx).await;
    let weir = through(targets.weir).await;
    let plugins = through(targets.plugins).await;
    Comparison { workload: workload.to_owned(), direct, nginx, weir, plugins }
}

fn runtime(name: &str, threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} runtime"))
}

/// A quarter of the cores each for the load generator and the mock, leaving half to Weir.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).max(1))
}
