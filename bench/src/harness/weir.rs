//! The Weir process under test: its config, start-up, readiness and memory as `/proc` reports it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The model names Weir's generated config serves, mapped onto the mock's.
pub const MODEL: &str = "bench-model";
pub const STREAM_MODEL: &str = "bench-stream";

/// How long `weir serve` may take to answer `GET /readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the sampler reads `/proc/<pid>/status`.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

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
    /// Writes a config pointing at `upstream`, spawns `<bin> serve --config <file>`, and waits
    /// until `/readyz` answers 200.
    pub async fn start(bin: &Path, upstream: &str) -> Result<Self> {
        let addr = free_loopback_addr()?;
        let dir = ConfigDir::create()?;
        let config = dir.0.join("weir.toml");
        std::fs::write(&config, config_toml(addr, upstream))
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
        let sampler = Sampler::start(child.id());
        let mut weir = Self { child, addr, sampler, _config: dir };
        weir.wait_ready().await?;
        Ok(weir)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn memory(&self) -> Result<ProcMemory> {
        proc_memory(self.child.id())
    }

    /// Starts a new window for [`Weir::peak_rss_kib`].
    pub fn reset_peak_rss(&self) {
        self.sampler.peak_kib.store(0, Ordering::Relaxed);
    }

    /// The highest `VmRSS` sampled since the last reset, if any sample was taken.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        Some(self.sampler.peak_kib.load(Ordering::Relaxed)).filter(|&kib| kib > 0)
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

impl Drop for Weir {
    fn drop(&mut self) {
        self.sampler.stop();
        // Errors here mean the process is already gone, which is the goal.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory for the generated config, removed on drop.
#[derive(Debug)]
struct ConfigDir(PathBuf);

impl ConfigDir {
    fn create() -> Result<Self> {
        // Unique per process and per start, so parallel tests do not share a config.
        static STARTS: AtomicU64 = AtomicU64::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("weir-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        // Leaving a small file in the temp dir is not worth failing a run over.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The weir config: one OpenAI-kind upstream (the mock, no keys) and the two bench models.
pub fn config_toml(listen: SocketAddr, upstream: &str) -> String {
    format!(
        r#"[server]
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
"#,
        model = super::DIRECT_MODEL,
        stream_model = super::DIRECT_STREAM_MODEL,
    )
}

/// A loopback address with a port nobody listens on right now. Weir binds it a moment later;
/// another process could take it in between, which on a bench machine is unlikely enough.
fn free_loopback_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?)
}

async fn readyz(addr: SocketAddr) -> bool {
    let probe = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        let req = Request::get("/readyz").header("host", addr.to_string()).body(Empty::<Bytes>::new())?;
        anyhow::Ok(sender.send_request(req).await?.status().is_success())
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), probe).await, Ok(Ok(true)))
}

fn proc_memory(pid: u32) -> Result<ProcMemory> {
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

/// Samples `VmRSS` on a thread of its own, keeping the maximum since the last reset.
#[derive(Debug)]
struct Sampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak_kib, stop) = (Arc::clone(&peak_kib), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    // Fails once the process is gone or where there is no /proc: nothing to sample.
                    let Ok(memory) = proc_memory(pid) else { return };
                    peak_kib.fetch_max(memory.rss_kib, Ordering::Relaxed);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            }
        });
        Self { peak_kib, stop, thread: Some(thread) }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
