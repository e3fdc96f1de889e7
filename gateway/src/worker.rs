//! `weir worker`: serves a local Hugging Face-format model (BERT embeddings, GPT-2 generation, MLP
//! prediction) through the same OpenAI-compatible API, on CUDA (cudarc) when a GPU is present and on
//! the CPU otherwise. The gateway also starts workers in-process for `kind = "worker"` upstreams that
//! name a `model` rather than an `endpoint`.
//!
//! `load.rs` reads the model; `backend.rs` is the device interface with `cpu.rs` and `cuda.rs` behind
//! it; `bert.rs`, `gpt2.rs` and `mlp.rs` are the architectures; `text.rs` the tokenizer and chat
//! template; `sample.rs` token choice; `engine.rs` the model thread (batching, fair interleaving);
//! `http.rs` the HTTP surface.

pub mod backend;
pub mod bert;
pub mod cpu;
pub mod cuda;
pub mod engine;
pub mod gpt2;
pub mod http;
pub mod load;
pub mod mlp;
pub mod sample;
pub mod text;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use self::backend::Backend;
use self::bert::Bert;
use self::engine::{Job, Model, Stats};
use self::gpt2::Gpt2;
pub use self::load::Architecture;
use self::load::ModelFiles;
use self::text::Text;

/// Where a worker runs its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// CUDA device 0 when a driver and a GPU are present, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}; use auto, cpu or cuda:N")),
        }
    }
}

/// A running model: the HTTP layer's handle on the model thread. Cheap to share.
#[derive(Debug)]
pub struct Worker {
    /// The model's public name (the directory's name unless given).
    pub name: String,
    pub architecture: Architecture,
    /// "cpu", or the CUDA device and its name.
    pub device: String,
    /// The tokenizer (BERT and GPT-2).
    pub text: Option<Arc<Text>>,
    /// The longest input (embeddings) or context window (generation), in tokens.
    pub max_tokens: usize,
    /// Embedding width, or the MLP's outputs.
    pub width: usize,
    /// How prediction instances become inputs (MLP only).
    pub inputs: Option<mlp::Inputs>,
    pub stats: Arc<Stats>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl Worker {
    /// Loads the model at `source` (a directory, or `python:PACKAGE/SUBDIR`) on `device` and starts
    /// its model thread.
    pub fn load(source: &str, device: Device, name: Option<&str>) -> Result<Arc<Self>, String> {
        let dir = load::resolve(source)?;
        if !dir.join("config.json").is_file() {
            return Err(format!("{} is not a model directory (no config.json)", dir.display()));
        }
        let name = name.map(str::to_owned).unwrap_or_else(|| default_name(&dir));
        let files = ModelFiles::read(&dir)?;
        match device {
            Device::Cpu => Self::start(cpu::Cpu, &files, name),
            Device::Cuda(n) => Self::start(cuda::Cuda::new(n)?, &files, name),
            Device::Auto => match cuda::Cuda::new(0) {
                Ok(gpu) => Self::start(gpu, &files, name),
                Err(why) => {
                    tracing::info!(reason = %why, "no usable CUDA device; the worker runs on the CPU");
                    Self::start(cpu::Cpu, &files, name)
                }
            },
        }
    }

    fn start<B: Backend>(backend: B, files: &ModelFiles, name: String) -> Result<Arc<Self>, String> {
        let architecture = Architecture::detect(&files.config)?;
        let device = backend.describe();
        let text = match architecture {
            Architecture::Mlp => None,
            _ => Some(Arc::new(Text::load(&files.dir, &files.config)?)),
        };
        let mut inputs = None;
        let (model, max_tokens, width) = match architecture {
            Architecture::Bert => {
                let m = Bert::load(files, &backend)?;
                let (max, width) = (m.max_len, m.hidden);
                (Model::Bert(m), max, width)
            }
            Architecture::Gpt2 => {
                let m = Gpt2::load(files, &backend)?;
                if let Some(text) = &text
                    && text.vocab_size() > m.vocab
                {
                    return Err(format!(
                        "the tokenizer has {} tokens but the model only {}",
                        text.vocab_size(),
                        m.vocab
                    ));
                }
                let (max, width) = (m.context, m.vocab);
                (Model::Gpt2(m), max, width)
            }
            Architecture::Mlp => {
                let m = mlp::Mlp::load(files, &backend)?;
                inputs = Some(m.input.clone());
                let width = m.outputs();
                (Model::Mlp(m), 0, width)
            }
        };
        let stats = Arc::new(Stats::default());
        let (jobs, rx) = mpsc::unbounded_channel();
        let thread_stats = stats.clone();
        let thread_text = text.clone();
        std::thread::Builder::new()
            .name(format!("weir-model-{name}"))
            .spawn(move || engine::run(backend, model, thread_text, rx, thread_stats))
            .map_err(|e| format!("cannot start the model thread: {e}"))?;
        tracing::info!(model = %name, ?architecture, %device, "model loaded");
        Ok(Arc::new(Self { name, architecture, device, text, max_tokens, width, inputs, stats, jobs }))
    }

    /// Queues a job for the model thread.
    fn submit(&self, job: Job) -> Result<(), String> {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.jobs.send(job).map_err(|_| {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            "the model thread has stopped".to_owned()
        })
    }

    /// Sentence embeddings for token-id sequences, batched with whatever else is queued.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.submit(Job::Embed { inputs, reply })?;
        rx.await.map_err(|_| "the model thread dropped the request".to_owned())?
    }

    /// MLP outputs for instances already read by [`Worker::read_instance`].
    pub async fn predict(&self, rows: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.submit(Job::Predict { rows, reply })?;
        rx.await.map_err(|_| "the model thread dropped the request".to_owned())?
    }

    pub fn read_instance(&self, instance: &serde_json::Value, index: usize) -> Result<Vec<f32>, String> {
        match &self.inputs {
            Some(inputs) => inputs.read_instance(instance, index),
            None => Err("this model does not take prediction instances".into()),
        }
    }

    /// Starts a generation; its events arrive on the returned receiver.
    pub fn generate(&self, g: engine::Generation) -> Result<(), String> {
        self.submit(Job::Generate(g))
    }
}

/// Starts a worker inside this process for a `kind = "worker"` upstream that names a model, on a
/// loopback port, and returns its base URL. A model that fails to load still gets a port: it answers
/// every request with a 503 that says why, and the gateway keeps serving its other models.
pub async fn start_local(model: &str, device: &str) -> Result<String, String> {
    let device: Device = device.parse()?;
    let source = model.to_owned();
    let slot = match tokio::task::spawn_blocking(move || Worker::load(&source, device, None)).await {
        Ok(Ok(worker)) => http::Slot::Ready(worker),
        Ok(Err(why)) => {
            tracing::warn!(model, reason = %why, "a local model could not be loaded; requests for it get a 503 saying why");
            http::Slot::Failed(why.into())
        }
        Err(e) => http::Slot::Failed(format!("loading panicked: {e}").into()),
    };
    let listener =
        tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = http::serve(listener, slot, std::future::pending()).await {
            tracing::warn!(error = %e, "a local worker stopped");
        }
    });
    Ok(format!("http://{addr}/v1"))
}

fn default_name(dir: &Path) -> String {
    // A package's model directory is often just "model"; its parent names it better.
    let mut parts = dir.components().rev().filter_map(|c| c.as_os_str().to_str());
    let last = parts.next().unwrap_or("model");
    if last == "model" { parts.next().unwrap_or(last).replace('_', "-") } else { last.to_owned() }
}
