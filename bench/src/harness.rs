//! The load harness behind `weir-bench`: the same workloads, direct to a mock upstream and through Weir.
//!
//! One run starts the mock on its own runtime, spawns `weir serve` pointed at it, and drives both
//! with a load generator on a second runtime, one target after the other for each workload:
//! open loops at fixed rates, a closed loop for maximum throughput, and streamed chats. Weir's
//! memory is sampled from `/proc` throughout.

mod load;
mod report;
mod weir;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

pub use load::{Latency, Run};

use crate::mock::MockUpstream;
use load::{Target, Workload};
use weir::Weir;

/// Command-line options of `weir-bench`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "weir-bench",
    about = "Runs the same workloads direct to a mock upstream and through Weir, and compares them."
)]
pub struct Options {
    /// The weir binary to measure, e.g. target/release/weir.
    #[arg(long, required_unless_present = "direct_only")]
    pub weir: Option<PathBuf>,
    /// Measure the mock upstream only (to try the harness without a weir binary).
    #[arg(long)]
    pub direct_only: bool,
    /// Length of each measured run; every workload runs once per target.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
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
    /// Weir's memory, absent with `--direct-only`.
    pub memory: Option<Memory>,
}

/// One workload, measured direct to the mock and through Weir.
#[derive(Debug)]
pub struct Comparison {
    pub workload: String,
    pub direct: Run,
    pub weir: Option<Run>,
    /// Weir's peak resident set while this workload ran through it, in KiB.
    pub weir_peak_rss_kib: Option<u64>,
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
        self.open_loops.iter().chain([&self.closed_loop, &self.streaming])
    }
}

/// What the mock is asked for directly; Weir's config maps its own names onto these.
const DIRECT_MODEL: &str = "mock-model";
const DIRECT_STREAM_MODEL: &str = "fixture:text_a";
/// Unmeasured load before the measured runs, so both targets start with warm connections.
const WARM_UP: Duration = Duration::from_secs(1);
/// A pause between runs, so the previous run's clean-up (closing, freeing) does not land in the next.
const SETTLE: Duration = Duration::from_millis(300);

/// Runs every workload against the mock, and through Weir unless `--direct-only`.
pub fn run(options: &Options) -> Result<Report> {
    ensure!(!options.duration.is_zero(), "--duration must be positive");
    ensure!(!options.rates.is_empty(), "--rates needs at least one rate");
    // Separate runtimes keep the mock's work off the load generator's threads, so a busy mock
    // does not delay the timestamps the generator takes.
    let mock_runtime = runtime("weir-bench-mock", options.mock_threads)?;
    let client_runtime = runtime("weir-bench-client", options.client_threads)?;
    let mock = mock_runtime
        .block_on(MockUpstream::builder().record_requests(false).try_start())
        .context("starting the mock upstream")?;

    let weir = match &options.weir {
        Some(bin) if !options.direct_only => {
            eprintln!("starting {} against the mock at {}", bin.display(), mock.base_url());
            Some(client_runtime.block_on(Weir::start(bin, &mock.base_url()))?)
        }
        _ => None,
    };
    let report = client_runtime.block_on(measure(options, &mock, weir.as_ref()));
    // Stop Weir before the mock so it does not log a burst of upstream errors on the way out.
    drop(weir);
    drop(mock);
    report
}

async fn measure(options: &Options, mock: &MockUpstream, weir: Option<&Weir>) -> Result<Report> {
    let direct = Target::new("direct", mock.addr(), DIRECT_MODEL, DIRECT_STREAM_MODEL, options.connections);
    let weir_target = weir.map(|w| Target::new("weir", w.addr(), weir::MODEL, weir::STREAM_MODEL, options.connections));
    let through_weir = weir_target.as_ref().zip(weir);
    let idle_kib = weir.map(Weir::memory).transpose()?.map(|m| m.rss_kib);

    for target in std::iter::once(&direct).chain(&weir_target) {
        target.preflight().await?;
        load::closed_loop(target, Workload::Chat, options.connections, WARM_UP).await;
    }

    let mut open_loops = Vec::new();
    for &rate in &options.rates {
        let name = format!("open loop, {rate} req/s");
        open_loops.push(
            compare(&name, &direct, through_weir, |t| load::open_loop(t, Workload::Chat, rate, options.duration)).await,
        );
    }
    let closed_loop =
        compare(&format!("closed loop, {} connections", options.connections), &direct, through_weir, |t| {
            load::closed_loop(t, Workload::Chat, options.connections, options.duration)
        })
        .await;
    let streaming = compare(&format!("streaming text_a, {} req/s", options.stream_rate), &direct, through_weir, |t| {
        load::open_loop(t, Workload::Stream, options.stream_rate, options.duration)
    })
    .await;

    let memory = match (weir, idle_kib) {
        (Some(weir), Some(idle_kib)) => {
            tokio::time::sleep(SETTLE).await;
            let now = weir.memory()?;
            Some(Memory { idle_kib, after_load_kib: now.rss_kib, high_water_kib: now.hwm_kib })
        }
        _ => None,
    };
    Ok(Report {
        options: options.clone(),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        open_loops,
        closed_loop,
        streaming,
        memory,
    })
}

/// Runs one workload against the mock and then through Weir, tracking Weir's peak memory.
async fn compare<'t, F>(
    workload: &str,
    direct: &'t Target,
    through_weir: Option<(&'t Target, &Weir)>,
    run: impl Fn(&'t Target) -> F,
) -> Comparison
where
    F: Future<Output = Run>,
{
    eprintln!("{workload}: direct");
    let direct = run(direct).await;
    tokio::time::sleep(SETTLE).await;
    let (weir_run, weir_peak_rss_kib) = match through_weir {
        Some((target, weir)) => {
            eprintln!("{workload}: through weir");
            weir.reset_peak_rss();
            let measured = run(target).await;
            let peak = weir.peak_rss_kib();
            tokio::time::sleep(SETTLE).await;
            (Some(measured), peak)
        }
        None => (None, None),
    };
    Comparison { workload: workload.to_owned(), direct, weir: weir_run, weir_peak_rss_kib }
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
